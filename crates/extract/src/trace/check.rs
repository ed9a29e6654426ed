//! An export reads its own mark back: the cheapest reading there is, for the exporter to
//! run on every file it writes before the file is delivered.
//!
//! The marked file and its source are decoded side by side for the first seconds; frame
//! `k` of one is frame `k` of the other and the geometry is the identity, so the residual
//! is the marked frame minus the source frame on the working grid, read at tile phase 0.
//! Only the export's own mark id is scored.

use std::path::Path;
use std::sync::mpsc;

use tracemark_core::grid::Grid;
use tracemark_core::layout::Scheme;
use tracemark_core::motion::{displacement_by, MotionTracker, TrackedQueue};
use tracemark_core::video::VideoReader;
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
/// false-positive probability a trace needs to name it).
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
    if !(threshold > 0.0 && threshold < 1.0) {
        return Err(Error::InvalidConfig {
            setting: "threshold",
            reason: format!("{threshold} must be in (0, 1)"),
        });
    }
    if seconds.is_nan() || seconds <= 0.0 {
        return Err(Error::InvalidConfig {
            setting: "seconds",
            reason: format!("{seconds} s of video cannot be read"),
        });
    }
    let detector = Detector::new(key);
    let (src, out) = rayon::join(|| open(source), || open(marked));
    let (src, out) = (src?, out?);
    let (si, oi) = (src.info().clone(), out.info().clone());
    if oi.width.min(oi.height) < super::BLIND_MIN_SIDE {
        return Err(Error::TooSmall {
            width: oi.width,
            height: oi.height,
            min: super::BLIND_MIN_SIDE,
            what: "carry a traceable mark",
        });
    }
    let fps =
        si.frame_rate.filter(|&(n, d)| n > 0 && d > 0).map_or(25.0, |(n, d)| f64::from(n) / f64::from(d));
    let max_frames = ((seconds * fps).ceil() as u64).max(1);
    let grid = Grid::for_frame(si.width, si.height);
    // Native grid: the mark sits on the source's pixels, and the copy keeps them (an odd
    // last row or column may be cropped): compare the common top-left area. Otherwise
    // both pictures go onto the source's working grid.
    let (w, h) = if grid.is_native() {
        (si.width.min(oi.width), si.height.min(oi.height))
    } else {
        (grid.work_w.min(oi.width), grid.work_h.min(oi.height))
    };
    let mut down_src = (!grid.is_native()).then(|| Downscaler::new(si.width, si.height, w, h));
    let mut down_out = (!grid.is_native()).then(|| Downscaler::new(oi.width, oi.height, w, h));
    // On the working grid (downscaled), or the common top-left area (native).
    let onto_grid = |down: &mut Option<Downscaler>, f: &Frame, px: &mut [f32]| match down {
        Some(d) => d.run(&f.y, px),
        None => {
            for (y, out) in px.chunks_exact_mut(w).enumerate() {
                for (o, &v) in out.iter_mut().zip(&f.y.row(y)[..w]) {
                    *o = f32::from(v);
                }
            }
        }
    };
    let mut sums = SlotSums::default();
    let mut scratch = DetectScratch::default();
    // The embedder's own motion track, from the same source frames; frames wait (their
    // residual and source picture) until the tracker has made their motion final.
    let trackers = scheme.tracking().map(|t| MotionTracker::new(si.width, si.height, t));
    let mut queue: TrackedQueue<(Vec<f32>, Vec<f32>)> = TrackedQueue::new(trackers.into_iter().collect());
    let mut spare: Vec<Vec<f32>> = Vec::new();
    let mut frames = 0u64;
    std::thread::scope(|scope| -> Result<()> {
        // Both files are decoded on threads of their own, a few frames ahead, while this one
        // tracks and reads.
        let pool = |(fw, fh): (usize, usize)| -> Vec<(Frame, Vec<f32>)> {
            (0..AHEAD + 2).map(|_| (Frame::new(fw, fh), vec![0f32; w * h])).collect()
        };
        let (sources, src_back) =
            decode_ahead(scope, src, max_frames, pool((si.width, si.height)), move |f, px| {
                onto_grid(&mut down_src, f, px)
            });
        let (copies, out_back) =
            decode_ahead(scope, out, max_frames, pool((oi.width, oi.height)), move |f, px| {
                onto_grid(&mut down_out, f, px)
            });
        let next = |from: &mpsc::Receiver<Decoded>| from.recv().unwrap_or(Ok(None));
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
                    frames += 1;
                    let mut resid = spare.pop().unwrap_or_else(|| vec![0f32; w * h]);
                    for ((r, m), s) in resid.iter_mut().zip(&marked_px).zip(&host) {
                        *r = m - s;
                    }
                    queue.push(&fs.y, (resid, host));
                    // The decoders may have stopped already; then they need nothing back.
                    let _ = out_back.send((fo, marked_px));
                    let _ = src_back.send((fs, spare.pop().unwrap_or_else(|| vec![0f32; w * h])));
                }
            }
            while let Some(((resid, host), moved)) = queue.pop() {
                let offset = scheme.tile_offset(&grid, displacement_by(&moved, scheme.tracking()));
                detector.accumulate_moved(&resid, &host, w, h, offset, &mut sums, &mut scratch);
                detector.end_frame(&mut sums);
                spare.extend([resid, host]);
            }
        }
        // Hanging up stops the decoders wherever they wait.
        drop((sources, copies, src_back, out_back));
        Ok(())
    })?;
    if frames == 0 {
        return Err(Error::NoFrames);
    }
    let candidate = [Candidate { mark_id, recipient: String::new(), scheme }];
    let decision = decide(&detector, &sums, &candidate, 1.0, threshold);
    let identified =
        decision.verdict == Verdict::Identified && decision.suspects.iter().any(|s| s.mark_id == mark_id);
    Ok(ExportCheck { decision, frames, identified })
}
