//! The frame transform interface and the bounded parallel frame pipeline.
//!
//! Frames flow decode → transform (on rayon, several frames at once) → encode in order.
//! A fixed pool of frame slots bounds the number of frames in flight, so memory does not
//! grow with the length of the clip, and the slots (with their scratch buffers) are reused:
//! nothing is allocated per frame once the pool is full.

use std::ops::ControlFlow;

use crate::frame::Frame;

/// A per-frame operation that can run on many frames at once.
pub trait FrameTransform: Send + Sync + 'static {
    /// Reusable working memory for one frame in flight.
    type Scratch: Send + 'static;
    /// What [`FrameTransform::apply`] reports when it fails (`std::convert::Infallible`
    /// for a transform that cannot).
    type Error: std::error::Error + Send + Sync + 'static;
    /// Makes one scratch area (called once per pipeline slot, not per frame).
    fn new_scratch(&self) -> Self::Scratch;
    /// Whether [`FrameTransform::apply`] needs [`FrameAt::motion`], measured how. The
    /// pipeline then tracks the picture's global motion on the decoding thread, frame
    /// after frame, with a [`crate::motion::MotionTracker`]; otherwise `motion` is zero.
    fn motion_tracking(&self) -> Option<crate::motion::Tracking> {
        None
    }
    /// Transforms `frame` in place.
    ///
    /// # Errors
    /// The transform's own error; a transcode stops on it with
    /// [`crate::Error::Transform`] and leaves no output.
    fn apply(&self, frame: &mut Frame, at: FrameAt, scratch: &mut Self::Scratch) -> Result<(), Self::Error>;
}

/// Where a frame sits in its clip.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FrameAt {
    /// Frames before this one, in decode order.
    pub index: u64,
    /// Displacement of the picture content since the first frame, in picture pixels
    /// (see [`crate::motion::MotionTracker::track`]); zero unless the transform
    /// [tracks motion](FrameTransform::motion_tracking).
    pub motion: (f64, f64),
}

/// The transform that leaves frames untouched (plain transcode).
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity;

impl FrameTransform for Identity {
    type Scratch = ();
    type Error = std::convert::Infallible;
    fn new_scratch(&self) {}
    fn apply(&self, _: &mut Frame, _: FrameAt, _: &mut ()) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Progress of a long job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Frames finished.
    pub done: u64,
    /// Frames expected in all, when known (container estimates can be off by a few).
    pub total: Option<u64>,
}

/// Progress callback: return `ControlFlow::Break(())` to cancel the job.
pub type ProgressFn<'a> = dyn FnMut(Progress) -> ControlFlow<()> + Send + 'a;

/// A progress callback that never cancels and reports nowhere.
pub fn no_progress(_: Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}
