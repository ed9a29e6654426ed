//! Tracing a leaked video file: informed (with the source) or blind.
//!
//! - [`trace_informed`] registers the leaked clip against the exported source in time and
//!   space, subtracts the source and reads the mark from what is left.
//! - [`trace_blind`] has no source: it finds the mark's tile by its pilot.

use std::ops::ControlFlow;
use std::path::Path;

use tracemark_core::pipeline::{Progress, ProgressFn};
use tracemark_core::video::VideoReader;

use crate::homography::Homography;
use crate::image::Gray;
use crate::register::Geometry;
use crate::verdict::Decision;
use crate::{Error, Result};

mod blind;
mod check;
mod informed;

pub use blind::{
    accumulate_blind, accumulate_blind_tracking, trace_accumulated, trace_blind, BlindAccumulation,
    BLIND_MIN_SIDE,
};
pub use check::{check_export, check_recorded, ExportCheck, RecordSource, SourceRecording};
pub use informed::trace_informed;

/// The ways a picture's motion must be measured to read the candidates' layouts (with no
/// registry, the mark is decoded blind, as new exports lay it out).
fn trackings_for(candidates: &[crate::Candidate]) -> Vec<tracemark_core::motion::Tracking> {
    use tracemark_core::layout::Scheme;
    use tracemark_core::motion::Tracking;
    let mut schemes: Vec<Scheme> = candidates.iter().map(|c| c.scheme).collect();
    if schemes.is_empty() {
        schemes.push(Scheme::default());
    }
    Tracking::ALL.into_iter().filter(|t| schemes.iter().any(|s| s.tracking() == Some(*t))).collect()
}

/// Default [`TraceConfig::memory_budget`]: 768 MiB.
pub const DEFAULT_MEMORY_BUDGET: usize = 768 << 20;

/// Settings of a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// Family-wise false-positive probability at or below which an export is named.
    pub threshold: f64,
    /// Read at most this many leaked frames (0 = all).
    pub max_frames: usize,
    /// Bytes an informed trace may spend keeping decoded frames at reading resolution so
    /// each file is decoded once. Past it, frames are decoded again when read: slower, same
    /// result. Peak memory stays bounded whatever the clips' length.
    pub memory_budget: usize,
    /// A blind trace whose pilot search names nobody then searches for each candidate's
    /// whole mark (pilot and codeword: four times the pilot's energy), when there are at
    /// most this many candidates (0 = never). Each candidate costs about one more pilot
    /// search; the error budget is split between the two stages.
    pub whole_mark_candidates: usize,
}

/// Candidates a blind trace searches for by their whole marks, by default: a registry's
/// exports of one clip, not a unit's whole history (each costs about a pilot search).
pub const DEFAULT_WHOLE_MARK_CANDIDATES: usize = 16;

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            threshold: 1e-6,
            max_frames: 0,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            whole_mark_candidates: DEFAULT_WHOLE_MARK_CANDIDATES,
        }
    }
}

impl TraceConfig {
    /// Defaults: threshold 1e-6, all frames, [`DEFAULT_MEMORY_BUDGET`],
    /// [`DEFAULT_WHOLE_MARK_CANDIDATES`].
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the threshold.
    pub fn with_threshold(mut self, t: f64) -> Self {
        self.threshold = t;
        self
    }
    /// Sets the frame limit.
    pub fn with_max_frames(mut self, n: usize) -> Self {
        self.max_frames = n;
        self
    }
    /// Sets the memory budget of an informed trace (bytes; 0 = decode twice, keep nothing).
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes;
        self
    }
    /// Sets how many candidates a blind trace may search for by their whole marks.
    pub fn with_whole_mark_candidates(mut self, n: usize) -> Self {
        self.whole_mark_candidates = n;
        self
    }
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(Error::InvalidConfig {
                setting: "threshold",
                reason: format!("{} must be in (0, 1)", self.threshold),
            });
        }
        Ok(())
    }
}

/// Which way the geometry was found.
#[derive(Clone, Debug, PartialEq)]
pub enum Registration {
    /// Against the source: where the source sits in the leaked picture and in time.
    Informed {
        /// The axis-aligned summary of the mapping (scale and offset per axis), in
        /// full-resolution pixels.
        geometry: Geometry,
        /// Source → leaked mapping in full-resolution pixels (continuous coordinates, see
        /// [`crate::homography`]): mirrors, rotations and keystones included.
        homography: Homography,
        /// Whether the leaked picture is a mirror image of the source.
        mirrored: bool,
        /// Rotation of the source's horizontal axis in the leaked picture, degrees
        /// (positive: clockwise on screen).
        rotation_deg: f64,
        /// Leaked time + offset = source time, seconds.
        time_offset_s: f64,
        /// NCC of the registered pair of frames.
        ncc: f64,
    },
    /// Blind: the scale and cyclic shift of the mark's tile found by the pilot search.
    Blind {
        /// Analysis pixels per mark working-grid pixel.
        scale: f64,
        /// Leaked pixels per analysis pixel.
        analysis_factor: f64,
        /// Tile shift found (mark working-grid pixels).
        shift: (f64, f64),
        /// Number of (scale, mirror, shift) hypotheses searched.
        hypotheses: f64,
        /// The leaked picture is flipped (left-right, upside down) relative to the mark;
        /// both at once is a half turn. With `transposed`, the flips come first.
        mirrored: (bool, bool),
        /// The leaked picture's rows are the mark's columns: after the flips, the picture
        /// was transposed. With a flip upside down that is a quarter turn clockwise, with a
        /// flip left-right counter-clockwise ([`Registration::orientation`]).
        transposed: bool,
        /// Rotation of the mark's axes in the leaked picture (degrees, from the lattice
        /// of the mark itself; 0 when the plain search won).
        rotation_deg: f64,
        /// Horizontal-to-vertical stretch of the mark in the leaked picture (1 = none).
        stretch: f64,
        /// The part of the leaked picture the mark was read from, when it was found in a
        /// window (a picture-in-picture): x, y, width, height in leaked pixels.
        window: Option<[f64; 4]>,
    },
}

/// How a leaked picture is turned or flipped relative to the mark (the eight symmetries of
/// a rectangle's grid), as a blind trace finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Orientation {
    /// As the mark was made.
    AsMarked,
    /// Mirrored left-right.
    MirroredLeftRight,
    /// Flipped upside down.
    UpsideDown,
    /// Turned half a turn.
    HalfTurn,
    /// Turned a quarter clockwise (ffmpeg's `transpose=clock`).
    QuarterTurnClockwise,
    /// Turned a quarter counter-clockwise (ffmpeg's `transpose=cclock`).
    QuarterTurnCounterClockwise,
    /// Rows and columns swapped (mirrored about the main diagonal).
    Transposed,
    /// Mirrored about the other diagonal.
    AntiTransposed,
}

impl Orientation {
    /// A short name for reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Orientation::AsMarked => "as_marked",
            Orientation::MirroredLeftRight => "mirrored_left_right",
            Orientation::UpsideDown => "upside_down",
            Orientation::HalfTurn => "half_turn",
            Orientation::QuarterTurnClockwise => "quarter_turn_clockwise",
            Orientation::QuarterTurnCounterClockwise => "quarter_turn_counter_clockwise",
            Orientation::Transposed => "transposed",
            Orientation::AntiTransposed => "anti_transposed",
        }
    }
}

impl Registration {
    /// The leaked picture's orientation relative to the mark, for a blind registration.
    pub fn orientation(&self) -> Option<Orientation> {
        let Registration::Blind { mirrored, transposed, .. } = *self else { return None };
        // The picture is the mark flipped by `mirrored`, then transposed.
        Some(match (transposed, mirrored) {
            (false, (false, false)) => Orientation::AsMarked,
            (false, (true, false)) => Orientation::MirroredLeftRight,
            (false, (false, true)) => Orientation::UpsideDown,
            (false, (true, true)) => Orientation::HalfTurn,
            (true, (false, false)) => Orientation::Transposed,
            (true, (false, true)) => Orientation::QuarterTurnClockwise,
            (true, (true, false)) => Orientation::QuarterTurnCounterClockwise,
            (true, (true, true)) => Orientation::AntiTransposed,
        })
    }
}

/// Detection strength in one second of the leaked clip.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SecondStrength {
    /// Start of the second (leaked time).
    pub t: f64,
    /// Pilot statistic from that second alone.
    pub pilot_z: f64,
}

/// Everything a trace found.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceResult {
    /// Statistics, verdict and candidates.
    pub decision: Decision,
    /// `true` when the source was used.
    pub informed: bool,
    /// Leaked frames that contributed.
    pub frames_used: u64,
    /// How the geometry was found.
    pub registration: Registration,
    /// Threshold used.
    pub threshold: f64,
    /// Per-second strength (informed mode).
    pub per_second: Vec<SecondStrength>,
    /// A registered pair of frames (leaked frame warped onto the source grid, source frame),
    /// for the report (informed mode).
    pub example_frames: Option<(Gray, Gray)>,
}

/// Opens a clip for tracing: the mark lives in luma, so chroma is never copied out.
fn open(path: &Path) -> Result<VideoReader> {
    let mut r = VideoReader::open(path).map_err(Error::Video)?;
    r.set_luma_only(true);
    Ok(r)
}

fn seconds(pts: Option<i64>, tb: (i32, i32)) -> f64 {
    pts.unwrap_or(0) as f64 * f64::from(tb.0) / f64::from(tb.1)
}

fn tick(progress: &mut ProgressFn<'_>, done: u64, total: Option<u64>) -> Result<()> {
    match progress(Progress { done, total }) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(Error::Cancelled),
    }
}

/// Size of a thumbnail of a `w` x `h` picture at `factor` pictures pixels per thumbnail pixel.
fn thumb_size(w: usize, h: usize, factor: f64) -> (usize, usize) {
    (((w as f64 / factor).round() as usize).clamp(2, w), ((h as f64 / factor).round() as usize).clamp(2, h))
}
