//! `tracemark-extract`: finds tracemark marks in leaked footage.
pub use tracemark_core as core;
