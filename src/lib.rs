//! `tracemark`: forensic video watermarking.
//!
//! This facade re-exports the library crates so that another Rust tool needs one
//! dependency: [`core`] embeds marks, [`extract`] finds them.
pub use tracemark_core as core;
pub use tracemark_extract as extract;

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
