//! The error type of the core crate.

use std::path::PathBuf;

/// Everything that can go wrong in `tracemark-core`. Variants are grouped by what a caller
/// can do about them: fix the input, fix the output location, fix the key, or give up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input file does not exist.
    #[error("input file not found: {0}")]
    InputNotFound(PathBuf),
    /// The input exists but is empty.
    #[error("input file is empty: {0}")]
    EmptyInput(PathBuf),
    /// FFmpeg could not open or parse the input as a media file.
    #[error("cannot read {path} as video: {reason}")]
    NotAVideo {
        /// The input path.
        path: PathBuf,
        /// What FFmpeg said.
        reason: String,
    },
    /// The path is not a regular file (a directory, FIFO, device or socket): only regular
    /// files are opened, so a pipe or `/dev/zero` can neither hang a job nor fill memory.
    #[error("{path} is not a regular file ({kind}); pass a file")]
    NotARegularFile {
        /// The path.
        path: PathBuf,
        /// What it is instead (`directory`, `FIFO`, `character device`, …).
        kind: &'static str,
    },
    /// FFmpeg opens files by UTF-8 name only; this path is not valid UTF-8.
    #[error("{0}: the file name is not valid UTF-8, which FFmpeg cannot open; rename the file")]
    NonUtf8Path(PathBuf),
    /// The input ends before its container says it should (a cut or partly copied file).
    #[error(
        "{path} ends early: {decoded} frames decoded, but the container declares {declared}; the file looks \
         truncated (copy it again, or allow a truncated input explicitly)"
    )]
    Truncated {
        /// The input path.
        path: PathBuf,
        /// Frames decoded.
        decoded: u64,
        /// Frames the container declares (from its frame count or duration).
        declared: u64,
    },
    /// The container holds no video stream.
    #[error("{0} has no video stream")]
    NoVideoStream(PathBuf),
    /// The input uses a pixel format or geometry that is refused (with the reason).
    #[error("unsupported input: {0}")]
    Unsupported(String),
    /// Decoding failed part-way (truncated or corrupt stream).
    #[error("decoding {path} failed after {frames} frames: {reason}")]
    Decode {
        /// The input path.
        path: PathBuf,
        /// Frames decoded before the failure.
        frames: u64,
        /// What FFmpeg said.
        reason: String,
    },
    /// The encoder or muxer failed.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// An encoder this build needs is missing from the FFmpeg libraries.
    #[error("the FFmpeg libraries have no {0} encoder; install libavcodec with {0} support")]
    EncoderUnavailable(&'static str),
    /// The output path is the input (or resolves to it).
    #[error("output {0} is the input file; choose another output path")]
    OutputIsInput(PathBuf),
    /// The output file exists already and overwriting was not allowed.
    #[error("output {0} exists already; remove it or choose another path")]
    OutputExists(PathBuf),
    /// The output's directory does not exist.
    #[error("output directory does not exist: {0}")]
    OutputDirMissing(PathBuf),
    /// Filesystem error on a given path (the cause is the error's source, not repeated
    /// in its message).
    #[error("I/O error on {path}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid {setting}: {reason}")]
    InvalidConfig {
        /// The setting (`crf`, `preset`, `threads`, `target_psnr_db`, `mask`, `output`, …).
        setting: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The key file is missing, corrupt or of an unknown version.
    #[error("key file {path}: {reason}")]
    BadKey {
        /// The key file path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A frame transform reported an error (its error is the source).
    #[error("frame transform failed on frame {frame}")]
    Transform {
        /// Index of the frame.
        frame: u64,
        /// The transform's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The caller's commit hook refused the finished output (nothing was published).
    #[error("{0}")]
    Commit(String),
    /// The caller cancelled the job through the progress callback.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

/// Result alias for the core crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_sources_and_not_repeated() {
        let e = Error::io("/x/out.mp4", std::io::Error::other("disk on fire"));
        assert_eq!(e.to_string(), "I/O error on /x/out.mp4");
        let source = std::error::Error::source(&e).expect("the cause is the source");
        assert_eq!(source.to_string(), "disk on fire");
        let e = Error::InvalidConfig { setting: "crf", reason: "crf 60 is out of range 0..=51".into() };
        assert!(matches!(e, Error::InvalidConfig { setting: "crf", .. }));
    }
}
