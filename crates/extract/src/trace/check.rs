//! An export reads its own mark back: the cheapest reading there is, for the exporter to
//! run on every file it writes before the file is delivered.
//!
//! The marked file and its source are decoded side by side for the first seconds; frame
//! `k` of one is frame `k` of the other and the geometry is the identity, so the residual
//! is the marked frame minus the source frame on the working grid, read at tile phase 0.
//! Only the export's own mark id is scored.
//!
//! While the export is made, [`RecordSource`] keeps the source's first seconds on the
//! reading grid and the motion the embedder followed, so [`check_recorded`] decodes only
//! the copy: the source is not decoded (nor tracked) twice. Both readings give the same
//! result bit for bit.

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use tracemark_core::frame::Plane;
use tracemark_core::grid::Grid;
use tracemark_core::layout::Scheme;
use tracemark_core::motion::{displacement_by, MotionTracker, TrackedQueue, Tracking};
use tracemark_core::pipeline::{FrameAt, FrameTransform};
use tracemark_core::video::{VideoInfo, VideoReader};
use tracemark_core::{Frame, MarkId, MasterKey};

use super::open;
use crate::detect::{DetectScratch, Detector, SlotSums};
use crate::image::Downscaler;
use crate::verdict::{decide, Candidate, Decision, Verdict};
use crate::{Error, Result};

/// Frames waiting, decoded, for the reading at most (each decoder works on one more).
const AHEAD: usize = 4;

/// A decoded frame and its picture on the reading grid; `None` at the end.
type Decoded = Result<Option<(Frame, Vec<f32>)>>;

/// Decodes up to `limit` frames of `reader` on a thread of `scope`, each into a frame and
/// buffer of `pool` and through `prepare`, and hands them over in order, then `None`, or
/// the error where it happened. Frames and buffers come back through the returned sender
/// to be decoded into again; hanging up stops the thread.
fn decode_ahead<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    mut reader: VideoReader,
    limit: u64,
    pool: Vec<(Frame, Vec<f32>)>,
    mut prepare: impl FnMut(&Frame, &mut [f32]) + Send + 's,
) -> (mpsc::Receiver<Decoded>, mpsc::Sender<(Frame, Vec<f32>)>) {
    let (ahead, decoded) = mpsc::sync_channel::<Decoded>(AHEAD);
    let (back, returned) = mpsc::channel::<(Frame, Vec<f32>)>();
    for item in pool {
        back.send(item).expect("the receiver is here");
    }
    let decoder = std::thread::Builder::new().name("tracemark-check-decode".into());
    decoder
        .spawn_scoped(scope, move || {
            let mut read = 0;
            while let Ok((mut frame, mut px)) = returned.recv() {
                let next = if read == limit {
                    Ok(false)
                } else {
                    reader.read_frame(&mut frame).map_err(Error::Video)
                };
                let item = next.map(|more| {
                    more.then(|| {
                        prepare(&frame, &mut px);
                        (frame, px)
                    })
                });
                read += 1;
                let last = !matches!(item, Ok(Some(_)));
                if ahead.send(item).is_err() || last {
                    return;
                }
            }
        })
        .expect("spawning a decoder thread");
    (decoded, back)
}

/// What reading an export back found.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportCheck {
    /// The statistics of the reading, with the export as the only candidate.
    pub decision: Decision,
    /// Frame pairs read.
    pub frames: u64,
    /// Whether the export's mark id was identified at the threshold.
    pub identified: bool,
}

/// Reads `marked` (an export of `source` made with `key` for `mark_id` under `scheme`, frame
/// for frame) for its first `seconds` and scores `mark_id` alone against `threshold` (the
/// false-positive probability a trace needs to name it). Decodes and tracks the source
/// again; an exporter that has just made the copy reads it faster with [`check_recorded`].
///
/// # Errors
/// [`Error::TooSmall`] when the marked picture has a side under [`super::BLIND_MIN_SIDE`]
/// pixels (a blind trace could not read it), [`Error::Video`] when either file cannot be read, [`Error::NoFrames`] when one of them
/// holds no frame, [`Error::InvalidConfig`] for a threshold outside (0, 1) or a
/// non-positive duration.
///
/// ```no_run
/// use tracemark_extract::trace::check_export;
/// use tracemark_core::layout::Scheme;
/// use tracemark_core::{MarkId, MasterKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let key = MasterKey::load("unit.key".as_ref())?;
/// let (source, copy) = ("cam3.avi".as_ref(), "copy-A.mp4".as_ref());
/// let check = check_export(&key, source, copy, MarkId(7), Scheme::default(), 2.0, 1e-6)?;
/// assert!(check.identified, "the export would not be traceable");
/// # Ok(()) }
/// ```
pub fn check_export(
    key: &MasterKey,
    source: &Path,
    marked: &Path,
    mark_id: MarkId,
    scheme: Scheme,
    seconds: f64,
    threshold: f64,
) -> Result<ExportCheck> {
    check_threshold(threshold)?;
    check_seconds(seconds)?;
    let (src, out) = rayon::join(|| open(source), || open(marked));
    let (src, out) = (src?, out?);
    let (si, oi) = (src.info().clone(), out.info().clone());
    let max_frames = frames_in(&si, seconds);
    let grid = Grid::for_frame(si.width, si.height);
    let (w, h) = reading_area(&grid, (oi.width, oi.height))?;
    let mut down_src = (!grid.is_native()).then(|| Downscaler::new(si.width, si.height, w, h));
    let mut down_out = (!grid.is_native()).then(|| Downscaler::new(oi.width, oi.height, w, h));
    let mut reading = Reading::new(key, grid, scheme, (w, h));
    // The embedder's own motion track, from the same source frames; frames wait (their
    // residual and source picture) until the tracker has made their motion final.
    let trackers = scheme.tracking().map(|t| MotionTracker::new(si.width, si.height, t));
    let mut queue: TrackedQueue<(Vec<f32>, Vec<f32>)> = TrackedQueue::new(trackers.into_iter().collect());
    let mut spare: Vec<Vec<f32>> = Vec::new();
    std::thread::scope(|scope| -> Result<()> {
        // Both files are decoded on threads of their own, a few frames ahead, while this one
        // tracks and reads.
        let (sources, src_back) =
            decode_ahead(scope, src, max_frames, pool((si.width, si.height), w * h), move |f, px| {
                onto_grid(&mut down_src, &f.y, w, px)
            });
        let (copies, out_back) =
            decode_ahead(scope, out, max_frames, pool((oi.width, oi.height), w * h), move |f, px| {
                onto_grid(&mut down_out, &f.y, w, px)
            });
        let mut read_all = false;
        while !read_all {
            // A frame of the copy is taken only when the source has one (its decoder may
            // have read a few more): the same frames, ends and errors as reading in turn.
            let pair = match next(&sources)? {
                Some(s) => next(&copies)?.map(|o| (s, o)),
                None => None,
            };
            match pair {
                None => {
                    read_all = true;
                    queue.finish();
                }
                Some(((fs, host), (fo, marked_px))) => {
                    let mut resid = spare.pop().unwrap_or_else(|| vec![0f32; w * h]);
                    residual(&marked_px, &host, &mut resid);
                    queue.push(&fs.y, (resid, host));
                    // The decoders may have stopped already; then they need nothing back.
                    let _ = out_back.send((fo, marked_px));
                    let _ = src_back.send((fs, spare.pop().unwrap_or_else(|| vec![0f32; w * h])));
                }
            }
            while let Some(((resid, host), moved)) = queue.pop() {
                reading.add(&resid, &host, displacement_by(&moved, scheme.tracking()));
                spare.extend([resid, host]);
            }
        }
        // Hanging up stops the decoders wherever they wait.
        drop((sources, copies, src_back, out_back));
        Ok(())
    })?;
    reading.finish(mark_id, threshold)
}

/// [`check_export`] with the source side recorded while the export was made: only `marked`
/// is decoded. `recording` must come from the [`RecordSource`] that wrapped the embedder
/// of `mark_id` under `scheme`; the result is then [`check_export`]'s, bit for bit, over
/// the recording's frames.
///
/// # Errors
/// As [`check_export`]; [`Error::NoFrames`] too when nothing was recorded (the export
/// never ran), and [`Error::InvalidConfig`] (setting `recording`) when the copy is smaller
/// than the source's working grid (not an export of it).
///
/// ```no_run
/// use std::sync::Arc;
/// use tracemark_core::pipeline::no_progress;
/// use tracemark_core::video::{transcode, TranscodeConfig};
/// use tracemark_core::{EmbedConfig, Embedder, MarkId, MasterKey};
/// use tracemark_extract::trace::{check_recorded, RecordSource, SourceRecording};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let key = MasterKey::load("unit.key".as_ref())?;
/// let (source, copy) = ("cam3.avi".as_ref(), "copy-A.mp4".as_ref());
/// let config = EmbedConfig::new();
/// let embedder = Embedder::new(&key, MarkId(7), config)?;
/// let recording = Arc::new(SourceRecording::open(source, 2.0)?);
/// let marking = Arc::new(RecordSource::new(embedder, Arc::clone(&recording)));
/// transcode(source, copy, &TranscodeConfig::new(), marking, &mut no_progress)?;
/// let check = check_recorded(&key, &recording, copy, MarkId(7), config.scheme, 1e-6)?;
/// assert!(check.identified, "the export would not be traceable");
/// # Ok(()) }
/// ```
pub fn check_recorded(
    key: &MasterKey,
    recording: &SourceRecording,
    marked: &Path,
    mark_id: MarkId,
    scheme: Scheme,
    threshold: f64,
) -> Result<ExportCheck> {
    check_threshold(threshold)?;
    let out = open(marked)?;
    let oi = out.info().clone();
    let grid = recording.grid;
    let (w, h) = reading_area(&grid, (oi.width, oi.height))?;
    if !grid.is_native() && (w, h) != (grid.work_w, grid.work_h) {
        return Err(Error::InvalidConfig {
            setting: "recording",
            reason: format!(
                "the copy ({}x{}) is smaller than the source's working grid ({}x{}): not an export of it",
                oi.width, oi.height, grid.work_w, grid.work_h
            ),
        });
    }
    let recorded = recording.frames();
    let mut down_out = (!grid.is_native()).then(|| Downscaler::new(oi.width, oi.height, w, h));
    let mut reading = Reading::new(key, grid, scheme, (w, h));
    let (mut host, mut resid) = (vec![0f32; w * h], vec![0f32; w * h]);
    std::thread::scope(|scope| -> Result<()> {
        let (copies, out_back) =
            decode_ahead(scope, out, recorded, pool((oi.width, oi.height), w * h), move |f, px| {
                onto_grid(&mut down_out, &f.y, w, px)
            });
        for k in 0..recorded {
            let Some((fo, marked_px)) = next(&copies)? else { break };
            let motion = recording.picture(k, w, &mut host);
            residual(&marked_px, &host, &mut resid);
            reading.add(&resid, &host, motion);
            // The decoder may have stopped already; then it needs nothing back.
            let _ = out_back.send((fo, marked_px));
        }
        drop((copies, out_back));
        Ok(())
    })?;
    reading.finish(mark_id, threshold)
}

fn check_threshold(threshold: f64) -> Result<()> {
    if threshold > 0.0 && threshold < 1.0 {
        Ok(())
    } else {
        Err(Error::InvalidConfig { setting: "threshold", reason: format!("{threshold} must be in (0, 1)") })
    }
}

fn check_seconds(seconds: f64) -> Result<()> {
    if seconds > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            setting: "seconds",
            reason: format!("{seconds} s of video cannot be read"),
        })
    }
}

/// Frames in the first `seconds` of a clip (at least one; 25 fps when the rate is unknown).
fn frames_in(info: &VideoInfo, seconds: f64) -> u64 {
    let fps =
        info.frame_rate.filter(|&(n, d)| n > 0 && d > 0).map_or(25.0, |(n, d)| f64::from(n) / f64::from(d));
    ((seconds * fps).ceil() as u64).max(1)
}

/// The area both pictures are compared on, for a source on `grid` and a copy of `copy`
/// size. Native grid: the mark sits on the source's pixels, and the copy keeps them (an odd
/// last row or column may be cropped): the common top-left area. Otherwise the source's
/// working grid.
fn reading_area(grid: &Grid, (cw, ch): (usize, usize)) -> Result<(usize, usize)> {
    if cw.min(ch) < super::BLIND_MIN_SIDE {
        return Err(Error::TooSmall {
            width: cw,
            height: ch,
            min: super::BLIND_MIN_SIDE,
            what: "carry a traceable mark",
        });
    }
    Ok(if grid.is_native() {
        (grid.frame_w.min(cw), grid.frame_h.min(ch))
    } else {
        (grid.work_w.min(cw), grid.work_h.min(ch))
    })
}

/// A luma plane onto the reading area, `w` wide: downscaled to the working grid, or its
/// top-left part (native).
fn onto_grid(down: &mut Option<Downscaler>, y: &Plane, w: usize, px: &mut [f32]) {
    match down {
        Some(d) => d.run(y, px),
        None => {
            for (row, out) in px.chunks_exact_mut(w).enumerate() {
                for (o, &v) in out.iter_mut().zip(&y.row(row)[..w]) {
                    *o = f32::from(v);
                }
            }
        }
    }
}

/// Frames and reading-area buffers for a decoder of `size` pictures.
fn pool((fw, fh): (usize, usize), area: usize) -> Vec<(Frame, Vec<f32>)> {
    (0..AHEAD + 2).map(|_| (Frame::new(fw, fh), vec![0f32; area])).collect()
}

/// The next decoded frame; `None` at the end (or when the decoder has gone).
fn next(from: &mpsc::Receiver<Decoded>) -> Result<Option<(Frame, Vec<f32>)>> {
    from.recv().unwrap_or(Ok(None))
}

fn residual(marked: &[f32], host: &[f32], out: &mut [f32]) {
    for ((r, m), s) in out.iter_mut().zip(marked).zip(host) {
        *r = m - s;
    }
}

/// One export's mark scored over frame pairs, in order.
struct Reading {
    detector: Detector,
    grid: Grid,
    scheme: Scheme,
    area: (usize, usize),
    sums: SlotSums,
    scratch: DetectScratch,
    frames: u64,
}

impl Reading {
    fn new(key: &MasterKey, grid: Grid, scheme: Scheme, area: (usize, usize)) -> Self {
        let (sums, scratch) = (SlotSums::default(), DetectScratch::default());
        Self { detector: Detector::new(key), grid, scheme, area, sums, scratch, frames: 0 }
    }

    /// Adds a frame: its residual and source picture, the source's motion since frame 0.
    fn add(&mut self, resid: &[f32], host: &[f32], motion: (f64, f64)) {
        let offset = self.scheme.tile_offset(&self.grid, motion);
        let (w, h) = self.area;
        self.detector.accumulate_moved(resid, host, w, h, offset, &mut self.sums, &mut self.scratch);
        self.detector.end_frame(&mut self.sums);
        self.frames += 1;
    }

    fn finish(self, mark_id: MarkId, threshold: f64) -> Result<ExportCheck> {
        if self.frames == 0 {
            return Err(Error::NoFrames);
        }
        let candidate = [Candidate { mark_id, recipient: String::new(), scheme: self.scheme }];
        let decision = decide(&self.detector, &self.sums, &candidate, 1.0, threshold);
        let identified =
            decision.verdict == Verdict::Identified && decision.suspects.iter().any(|s| s.mark_id == mark_id);
        Ok(ExportCheck { decision, frames: self.frames, identified })
    }
}

/// A source picture as recorded: the luma plane itself on a native grid (exact, a quarter
/// of the memory), else on the working grid.
enum Picture {
    Native(Plane),
    Work(Vec<f32>),
}

/// A recorded frame: its picture and the picture's motion since frame 0.
type Recorded = (Picture, (f64, f64));

/// The source side of a self-check, recorded by [`RecordSource`] while an export is made:
/// the first seconds' pictures on the reading grid and the motion the embedder followed.
/// Memory: those seconds' pictures (a 1080p source at 25 fps: 50 pictures of 640x360, 46
/// MB), whatever the clip's length.
pub struct SourceRecording {
    grid: Grid,
    frames: Vec<Mutex<Option<Recorded>>>,
    /// Working-grid downscalers not in use (one per transform thread at most).
    downscalers: Mutex<Vec<Downscaler>>,
}

impl SourceRecording {
    /// A recording of the first `seconds` of `source` (its size and frame rate are read here).
    ///
    /// # Errors
    /// [`Error::Video`] when `source` cannot be opened, [`Error::InvalidConfig`] for a
    /// non-positive duration.
    pub fn open(source: &Path, seconds: f64) -> Result<Self> {
        check_seconds(seconds)?;
        let info = open(source)?.info().clone();
        let frames = (0..frames_in(&info, seconds)).map(|_| Mutex::new(None)).collect();
        let grid = Grid::for_frame(info.width, info.height);
        Ok(Self { grid, frames, downscalers: Mutex::new(Vec::new()) })
    }

    /// Frames recorded from the first on, without a gap.
    pub fn frames(&self) -> u64 {
        self.frames.iter().take_while(|f| locked(f).is_some()).count() as u64
    }

    /// Keeps `frame` if it is among the first seconds (called before it is marked).
    fn record(&self, frame: &Frame, at: FrameAt) {
        let Some(slot) = usize::try_from(at.index).ok().and_then(|i| self.frames.get(i)) else { return };
        let g = self.grid;
        if (frame.y.width(), frame.y.height()) != (g.frame_w, g.frame_h) {
            return; // not this source's frame: nothing to compare with
        }
        let picture = if g.is_native() {
            Picture::Native(frame.y.clone())
        } else {
            let mut down = locked(&self.downscalers)
                .pop()
                .unwrap_or_else(|| Downscaler::new(g.frame_w, g.frame_h, g.work_w, g.work_h));
            let mut px = vec![0f32; g.work_w * g.work_h];
            down.run(&frame.y, &mut px);
            locked(&self.downscalers).push(down);
            Picture::Work(px)
        };
        *locked(slot) = Some((picture, at.motion));
    }

    /// Writes recorded frame `k` onto a reading area `w` wide (`out`, as [`onto_grid`] does
    /// for a decoded frame) and returns its motion.
    fn picture(&self, k: u64, w: usize, out: &mut [f32]) -> (f64, f64) {
        let slot = locked(&self.frames[k as usize]);
        let (picture, motion) = slot.as_ref().expect("only recorded frames are read");
        match picture {
            Picture::Work(px) => out.copy_from_slice(px),
            Picture::Native(luma) => onto_grid(&mut None, luma, w, out),
        }
        *motion
    }
}

/// A lock that a panicked holder did not poison for good: the data are whole pictures,
/// written in one assignment.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A frame transform that records the source for [`check_recorded`] and then runs `inner`
/// (the embedder): same frames, same motion, same output.
pub struct RecordSource<T> {
    inner: T,
    recording: Arc<SourceRecording>,
}

impl<T> RecordSource<T> {
    /// Wraps `inner`, recording into `recording`.
    pub fn new(inner: T, recording: Arc<SourceRecording>) -> Self {
        Self { inner, recording }
    }
}

impl<T: FrameTransform> FrameTransform for RecordSource<T> {
    type Scratch = T::Scratch;
    type Error = T::Error;
    fn new_scratch(&self) -> T::Scratch {
        self.inner.new_scratch()
    }
    fn motion_tracking(&self) -> Option<Tracking> {
        self.inner.motion_tracking()
    }
    fn apply(
        &self,
        frame: &mut Frame,
        at: FrameAt,
        scratch: &mut T::Scratch,
    ) -> std::result::Result<(), T::Error> {
        self.recording.record(frame, at);
        self.inner.apply(frame, at, scratch)
    }
}
