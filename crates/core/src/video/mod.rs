//! Video file I/O on the system FFmpeg libraries (feature `video`).
//!
//! Decisions a user should know about:
//! - Every input is converted once, at the decoder, to planar 8-bit 4:2:0 (swscale, no RGB
//!   round trip; JPEG-range sources keep their range and are tagged as such). 10-bit and
//!   4:4:4 inputs are therefore *converted*, not refused: the output is 8-bit H.264 High
//!   profile, the format a broadcaster's chain and every player accepts.
//! - Odd picture sizes: libx264 needs even sizes for 4:2:0. The default policy
//!   ([`OddDimensions::Crop`]) drops the last row/column, exactly as the plain `ffmpeg`
//!   reference transcode does; [`OddDimensions::Pad`] repeats it instead. Either way the
//!   [`TranscodeReport`] says what was done.
//! - Timestamps are those of the source stream; a missing or repeated timestamp is replaced
//!   by the next valid one so the encoder sees a strictly increasing sequence.

mod reader;
mod transcode;
mod writer;

pub use reader::{ReadEvent, VideoInfo, VideoReader};
pub use transcode::{
    is_truncated, transcode, transcode_with_commit, CommitHook, TranscodeConfig, TranscodeReport,
};
pub use writer::{output_size, EncodeSettings, OddDimensions, VideoWriter, X264_PRESETS};

/// Re-export of the FFmpeg bindings this crate was built with.
pub use ffmpeg_next;
