//! `tracemark-extract`: finds tracemark marks in leaked footage.
//!
//! - [`detect`]: residual images → per-slot sums → pilot statistic, soft bits, scores.
//! - [`verdict`]: family-wise false-positive probabilities and the verdict.
//! - [`register`], [`register_projective`], [`homography`]: spatial registration against the
//!   source (informed mode): axis-aligned fast path, mirrors, rotations and keystones.
//! - [`trace`] (feature `video`): whole files, informed or blind.

pub mod detect;
pub use tracemark_core::fft2d;
pub mod homography;
pub mod image;
pub mod register;
pub mod register_projective;
#[cfg(feature = "video")]
pub mod trace;
pub mod verdict;

#[cfg(all(test, feature = "video"))]
mod test_support;

pub use detect::{Detector, SlotSums};
pub use tracemark_core as core;
pub use verdict::{Candidate, Decision, Scored, Verdict};

/// Errors of the extract crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading a video failed (missing, not a video, truncated, …).
    #[error(transparent)]
    Video(#[from] tracemark_core::Error),
    /// The clip holds no frames.
    #[error("the clip holds no decodable frames")]
    NoFrames,
    /// The leaked clip could not be registered against the source.
    #[error("registration failed: {0}")]
    Registration(String),
    /// The picture is too small for the reading asked for.
    #[error("the clip is {width}x{height}: too small to {what} (each side needs at least {min} pixels)")]
    TooSmall {
        /// Picture width.
        width: usize,
        /// Picture height.
        height: usize,
        /// Smallest side that can be read.
        min: usize,
        /// What could not be done (`trace blind`, …).
        what: &'static str,
    },
    /// The caller cancelled through the progress callback.
    #[error("cancelled")]
    Cancelled,
    /// A configuration value is out of range.
    #[error("invalid {setting}: {reason}")]
    InvalidConfig {
        /// The setting (`threshold`, `seconds`, …).
        setting: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

/// Result alias for the extract crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
