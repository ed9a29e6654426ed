//! `tracemark-core`: the embedding side of tracemark.
//!
//! - [`frame`]: stride-aware 8-bit planar frames, the currency of every other module.
//! - [`pipeline`]: the [`FrameTransform`](pipeline::FrameTransform) trait and progress types.
//! - [`output`]: writing files without losing anything (temporary file, sync, no clobber).
//! - [`video`] (feature `video`): FFmpeg decoding/encoding and the bounded parallel
//!   transcode pipeline.

pub mod dct;
pub mod embed;
pub mod error;
pub mod fft2d;
pub mod frame;
pub mod grid;
pub mod input;
pub mod key;
pub mod layout;
pub mod mask;
pub mod motion;
pub mod output;
pub mod payload;
pub mod pipeline;
#[cfg(feature = "video")]
pub mod video;

pub use embed::{EmbedConfig, Embedder};
pub use error::{Error, Result};
pub use frame::{Frame, Plane};
pub use key::MasterKey;
pub use payload::MarkId;
pub use pipeline::{FrameTransform, Identity, Progress};
