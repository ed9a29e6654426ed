//! Blind trace: no source. The mark's pilot is found by its own periodic structure.
//!
//! The leaked frames are whitened and summed on a few analysis grids ([`frames`]); the
//! pilot is searched for over scales, the shapes the mark's own lattice suggests
//! ([`lattice`]), mirrors and cyclic shifts ([`pilot`], on folds made by [`sampling`]), in
//! the whole picture and in windows where a picture-in-picture may sit ([`views`]); the
//! mark is read where the pilot is.

mod frames;
mod lattice;
mod pilot;
mod sampling;
#[cfg(test)]
mod tests;
mod views;

use std::path::Path;
use std::sync::{mpsc, OnceLock};

use rayon::prelude::*;
use tracemark_core::layout::Scheme;
use tracemark_core::layout::TILE_PX;
use tracemark_core::motion::{Displacements, MotionTracker, TrackedQueue, Tracking};
use tracemark_core::pipeline::ProgressFn;
use tracemark_core::{Frame, MasterKey};

use self::frames::{resize_into, shift_into, whiten_into, FrameScratch};
use self::lattice::lattice_shapes;
use self::pilot::{
    FoldCache, Mirror, Pilot, PilotSearch, ScaleSearch, Shape, ViewSet, PICTURE_IN_PICTURE, WHOLE_MARK,
    WHOLE_PICTURE,
};
use self::sampling::{resample, Linear};
use self::views::{
    analyses, best_hypothesis, distinct_peaks, pip_windows, ranked_hypotheses, ranked_hypotheses_each,
    search_windows, Analysis, Hyp,
};
use super::{open, tick, Registration, TraceConfig, TraceResult};
use crate::detect::{DetectScratch, Detector, SlotSums};
use crate::image::Gray;
use crate::verdict::{add_whole_mark_readings, decide_readings, Candidate, Family};
use crate::{Error, Result};

/// A reading whose suspect is this many times below the threshold settles a blind trace.
const DECISIVE: f64 = 1e-6;

/// Smallest picture side a blind trace can read: half a tile at the largest scale searched.
pub const BLIND_MIN_SIDE: usize = TILE_PX / 4;

/// Blind trace: no source. Averages the whitened leaked frames, searches the scale, mirror
/// and cyclic shift of the pilot, and reads the mark there.
///
/// # Errors
/// [`Error::Video`] when the clip cannot be read, [`Error::NoFrames`],
/// [`Error::TooSmall`] for a picture with a side under [`BLIND_MIN_SIDE`] pixels,
/// [`Error::InvalidConfig`], [`Error::Cancelled`] when `progress` breaks.
///
/// ```no_run
/// use tracemark_core::pipeline::no_progress;
/// use tracemark_core::layout::Scheme;
/// use tracemark_core::{MarkId, MasterKey};
/// use tracemark_extract::trace::{trace_blind, TraceConfig};
/// use tracemark_extract::{Candidate, Verdict};
/// let key = MasterKey::load("unit.key".as_ref())?;
/// let exports = [Candidate { mark_id: MarkId(0x9f3a), recipient: "channel-A".into(), scheme: Scheme::default() }];
/// let r = trace_blind(&key, "aired.mp4".as_ref(), &exports, &TraceConfig::new(), &mut no_progress)?;
/// if r.decision.verdict == Verdict::Identified {
///     println!("leaked by {}", r.decision.suspects[0].recipient);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn trace_blind(
    key: &MasterKey,
    leaked: &Path,
    candidates: &[Candidate],
    config: &TraceConfig,
    progress: &mut ProgressFn<'_>,
) -> Result<TraceResult> {
    // Only the motion measures the candidates' layouts need.
    let acc = accumulate_blind_tracking(leaked, &super::trackings_for(candidates), config, progress)?;
    trace_accumulated(key, &acc, candidates, config)
}

/// What a blind trace gathers from a leaked clip before it looks for any key: the whitened
/// frames summed on each analysis grid. Gathering does not depend on the key, so one
/// accumulation can be searched for several unit keys.
pub struct BlindAccumulation {
    views: Vec<Analysis>,
    /// The same sums with every frame moved back by the picture's motion since the first
    /// frame (where a mark that follows the motion stands still), per way of measuring
    /// that motion ([`Tracking::index`]: old exports' marks follow the older measure);
    /// `None` when the picture never moved, so they are the same.
    moved: [Option<Vec<Analysis>>; Tracking::ALL.len()],
    frames: u64,
    /// Picture size of the leaked clip.
    size: (usize, usize),
    /// The searches' key-independent folds, once [`BlindAccumulation::keep_folds`] asked.
    folds: Option<FoldCache>,
}

impl BlindAccumulation {
    /// Frames summed.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Keeps what every key's search computes alike (the spectrum of the accumulation
    /// folded under each coarse scale, shape and window, and the lattice's shapes) for the
    /// next [`trace_accumulated`] of this accumulation, which then folds only the
    /// hypotheses around its own best ones. For searching one leaked clip with many keys;
    /// the kept spectra take 128 KiB each: at most about 670 MiB (a moving picture of up
    /// to 800 lines, both analysis grids, every lattice shape), a few hundred MiB usually.
    /// Results are the same bit for bit.
    pub fn keep_folds(&mut self) {
        self.folds.get_or_insert_with(FoldCache::default);
    }

    /// Hypotheses whose fold [`BlindAccumulation::keep_folds`] has kept so far (those too
    /// small to fold included, kept as such).
    pub fn kept_folds(&self) -> usize {
        self.folds.as_ref().map_or(0, FoldCache::len)
    }
}

/// Decodes `leaked` and sums its whitened frames (the key-independent half of
/// [`trace_blind`]), moved back by the copy's motion as every layout measures it.
pub fn accumulate_blind(
    leaked: &Path,
    config: &TraceConfig,
    progress: &mut ProgressFn<'_>,
) -> Result<BlindAccumulation> {
    accumulate_blind_tracking(leaked, &Tracking::COPY, config, progress)
}

/// [`accumulate_blind`] with the copy's motion measured only the ways in `trackings`, each
/// as [`Tracking::copy_measure`] says (marks of other layouts that follow motion are then
/// read from the unmoved sums only).
pub fn accumulate_blind_tracking(
    leaked: &Path,
    trackings: &[Tracking],
    config: &TraceConfig,
    progress: &mut ProgressFn<'_>,
) -> Result<BlindAccumulation> {
    config.validate()?;
    let trackings: Vec<Tracking> =
        Tracking::COPY.into_iter().filter(|t| trackings.iter().any(|u| u.copy_measure() == *t)).collect();
    let trackings = trackings.as_slice();
    let mut r = open(leaked)?;
    let info = r.info().clone();
    let total = info.frames_estimate;
    let sar = match info.sample_aspect_ratio {
        (n, d) if n > 0 && d > 0 => f64::from(n) / f64::from(d),
        _ => 1.0,
    };
    let mut views = analyses(info.width, info.height, sar);
    // Until the picture first moves, the moved-back sums are the plain ones: they start as
    // a copy of them then.
    let mut moved: [Option<Vec<Analysis>>; Tracking::ALL.len()] = Default::default();
    let frame_size = (info.width, info.height);
    // One thread decodes while the others whiten the previous batch in parallel; frames
    // go round between them, so the loop allocates nothing once they are made.
    let batch_len = 2 * rayon::current_num_threads().max(1);
    // One set of buffers per batch slot and grid, reused for every frame.
    let mut scratch: Vec<Vec<FrameScratch>> =
        (0..batch_len).map(|_| views.iter().map(|_| FrameScratch::default()).collect()).collect();
    let sizes: Vec<(usize, usize)> = views.iter().map(|v| (v.acc.w, v.acc.h)).collect();
    let limit = (config.max_frames > 0).then_some(config.max_frames as u64);
    let mut frames = 0u64;
    std::thread::scope(|scope| -> Result<()> {
        let (decoded_tx, decoded) = mpsc::sync_channel::<(Frame, Displacements)>(batch_len);
        let (free, free_rx) = mpsc::channel::<Frame>();
        // Frames in the consumer's batch, in the channels, and held by the trackers until
        // their motion is final.
        for _ in 0..3 * batch_len + TrackedQueue::<Frame>::MAX_HELD {
            free.send(Frame::new(info.width, info.height)).expect("the receiver is here");
        }
        // One thread decodes; another measures the motion (a running sum over frames in
        // order) and hands frames on once it is final.
        let (read_tx, read_rx) = mpsc::sync_channel::<Frame>(batch_len);
        let decoder = std::thread::Builder::new()
            .name("tracemark-decode".into())
            .spawn_scoped(scope, move || -> Result<()> {
                let mut read = 0u64;
                // Stops at the end, at the frame limit, or when the consumer hangs up.
                while let Ok(mut f) = free_rx.recv() {
                    if limit.is_some_and(|l| read >= l) || !r.read_frame(&mut f).map_err(Error::Video)? {
                        break;
                    }
                    read += 1;
                    if read_tx.send(f).is_err() {
                        break;
                    }
                }
                Ok(())
            })
            .expect("spawning the decoder thread");
        std::thread::Builder::new()
            .name("tracemark-track".into())
            .spawn_scoped(scope, move || {
                let trackers =
                    trackings.iter().map(|&t| MotionTracker::for_copy(frame_size.0, frame_size.1, t));
                TrackedQueue::new(trackers.collect()).run(
                    read_rx,
                    |f: &Frame| &f.y,
                    |f, motion| decoded_tx.send((f, motion)).is_ok(),
                );
            })
            .expect("spawning the tracking thread");
        let mut batch: Vec<(Frame, Displacements)> = Vec::with_capacity(batch_len);
        let consumed = (|| -> Result<()> {
            loop {
                while batch.len() < batch_len {
                    match decoded.recv() {
                        Ok(f) => batch.push(f),
                        Err(_) => break,
                    }
                }
                if batch.is_empty() {
                    return Ok(());
                }
                let n = batch.len();
                batch.par_iter().zip(scratch[..n].par_iter_mut()).for_each(|((f, motion), per_view)| {
                    for (&(w, h), s) in sizes.iter().zip(per_view.iter_mut()) {
                        resize_into(&f.y, w, h, s);
                        let mut white = std::mem::take(&mut s.white);
                        let picture = std::mem::take(&mut s.picture);
                        whiten_into(&picture, s, &mut white);
                        (s.white, s.picture) = (white, picture);
                        for (t, motion) in motion.iter().enumerate() {
                            s.moved[t] = *motion != (0.0, 0.0);
                            if s.moved[t] {
                                // In grid pixels: the grid is the picture resampled to w x h.
                                let d = (
                                    motion.0 * w as f64 / f.y.width() as f64,
                                    motion.1 * h as f64 / f.y.height() as f64,
                                );
                                shift_into(&s.white, d, &mut s.moved_white[t]);
                                shift_into(&s.picture, d, &mut s.moved_picture[t]);
                            }
                        }
                    }
                });
                // Summed in frame order, so the result does not depend on the thread count.
                let add = |to: &mut Gray, from: &Gray| {
                    to.data.iter_mut().zip(&from.data).for_each(|(o, x)| *o += x)
                };
                for per_view in &scratch[..n] {
                    // Every grid of a frame sees the same motion.
                    for (t, moved) in moved.iter_mut().enumerate() {
                        if moved.is_none() && per_view.iter().any(|s| s.moved[t]) {
                            *moved = Some(views.clone());
                        }
                    }
                    for (vi, (v, s)) in views.iter_mut().zip(per_view).enumerate() {
                        add(&mut v.acc, &s.white);
                        add(&mut v.host, &s.picture);
                        for (t, moved) in moved.iter_mut().enumerate() {
                            let Some(m) = moved.as_mut().map(|m| &mut m[vi]) else { continue };
                            let (white, picture) = if s.moved[t] {
                                (&s.moved_white[t], &s.moved_picture[t])
                            } else {
                                (&s.white, &s.picture)
                            };
                            add(&mut m.acc, white);
                            add(&mut m.host, picture);
                        }
                    }
                }
                frames += n as u64;
                for (f, _) in batch.drain(..) {
                    // The decoder may have finished already; then the frame is not needed.
                    let _ = free.send(f);
                }
                tick(progress, frames, total)?;
                if n < batch_len {
                    return Ok(());
                }
            }
        })();
        // Hanging up stops the decoder wherever it waits; its error, if any, comes first.
        drop((decoded, free));
        let decoded = decoder.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        decoded.and(consumed)
    })?;
    if frames == 0 {
        return Err(Error::NoFrames);
    }
    // The pilot search's weighted sums, each view on its own (key-independent).
    views
        .par_iter_mut()
        .chain(moved.par_iter_mut().flatten().flat_map(|m| m.par_iter_mut()))
        .for_each(Analysis::finish);
    Ok(BlindAccumulation { views, moved, frames, size: (info.width, info.height), folds: None })
}

/// Searches an accumulation for the pilot of `key` and reads the mark where it is (the
/// key-dependent half of [`trace_blind`]).
pub fn trace_accumulated(
    key: &MasterKey,
    acc: &BlindAccumulation,
    candidates: &[Candidate],
    config: &TraceConfig,
) -> Result<TraceResult> {
    config.validate()?;
    let detector = Detector::new(key);
    let pilot = Pilot::new(key);
    // Candidates of marks fixed on the screen are read from the plain sums. Marks that
    // move with the picture are read from the sums that follow the copy's motion, and,
    // when the picture moved, from the plain sums too: the embedder follows a pan, not a
    // hand-held shake, and the copy's motion is measured through whatever a channel laid
    // over it. Each search is a reading with its own candidates.
    // Last, windows of the finest view: a small picture-in-picture whose mark the rest of
    // the picture would drown. Windows are searched as they are (a tracker following the
    // whole picture follows the studio, not the inset).
    let whole = acc.views[0].unequalised();
    let windows = pip_windows(&whole);
    // Every whole-picture set again with rows and columns swapped, searched last: a copy
    // turned a quarter (a clip turned on its side, or filmed on a phone held upright).
    let transpose = |views: &[Analysis]| views.iter().map(Analysis::transposed).collect::<Vec<_>>();
    let transposed_plain = transpose(&acc.views);
    let transposed_moved = acc.moved.each_ref().map(|m| m.as_deref().map(transpose));
    let planned = |views, set, scales, candidates| Planned {
        views,
        set,
        scales,
        candidates,
        shapes: OnceLock::new(),
        transposes: None,
    };
    let mut plan: Vec<Planned> = Vec::new();
    // Newest layout first. With no registry the mark is decoded blind, as new exports lay it out.
    for tracking in Tracking::COPY.into_iter().rev() {
        let Some(moved) = &acc.moved[tracking.index()] else { continue };
        let follows = |s: Scheme| s.tracking().map(Tracking::copy_measure) == Some(tracking);
        let moving: Vec<Candidate> = candidates.iter().filter(|c| follows(c.scheme)).cloned().collect();
        if !moving.is_empty() || (candidates.is_empty() && follows(Scheme::default())) {
            plan.push(planned(moved, ViewSet::Moved(tracking.index()), WHOLE_PICTURE, moving));
        }
    }
    plan.push(planned(&acc.views, ViewSet::Plain, WHOLE_PICTURE, candidates.to_vec()));
    let turned: Vec<Planned> = plan
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (set, views) = match p.set {
                ViewSet::Moved(t) => (ViewSet::Transposed(Some(t)), transposed_moved[t].as_deref()),
                _ => (ViewSet::Transposed(None), Some(transposed_plain.as_slice())),
            };
            let views = views.expect("a moved set has its transposed sums");
            Planned { transposes: Some(i), ..planned(views, set, WHOLE_PICTURE, p.candidates.clone()) }
        })
        .collect();
    if !windows.is_empty() {
        plan.push(planned(&windows, ViewSet::Windows, PICTURE_IN_PICTURE, candidates.to_vec()));
    }
    plan.extend(turned);
    let mut found: Vec<(f64, Vec<(SlotSums, Registration)>)> = Vec::with_capacity(plan.len());
    // When the pilot names nobody, each candidate's whole mark is searched for, if there
    // are few enough: each stage then has half the error budget.
    let whole_marks = !candidates.is_empty() && candidates.len() <= config.whole_mark_candidates;
    let stages = if whole_marks { 2 } else { 1 };
    // Every peak a search reads scores its candidates.
    let candidates_family = stages * plan.iter().map(|p| p.scales.peaks * p.candidates.len()).sum::<usize>();
    // The pilot's family: the searches made, and for a search skipped the most it could
    // have tried.
    let family_after = |found: &[(f64, Vec<(SlotSums, Registration)>)]| Family {
        candidates: candidates_family,
        sync_hypotheses: plan
            .iter()
            .enumerate()
            .map(|(i, p)| found.get(i).map_or_else(|| p.scales.most_hypotheses(p.views.len()), |f| f.0))
            .sum(),
    };
    for (i, p) in plan.iter().enumerate() {
        let parent = p.scales.windows.then_some(&whole);
        let cache = acc.folds.as_ref().map(|c| (c, p.set));
        let shapes = plan_shapes(&plan, i, acc.folds.as_ref());
        let mut searched = search_and_read(
            &detector, &pilot, p.views, shapes, cache, parent, &p.scales, acc.frames, acc.size,
        )?;
        p.mark_orientation(&mut searched.1);
        found.push(searched);
        // Only readings that have scored every candidate can settle the trace.
        if i + 1 == plan.len() || !plan[..=i].iter().any(|p| p.candidates.len() == candidates.len()) {
            continue;
        }
        // Readings that already name someone far beyond the threshold (with every planned
        // search in their family) make the next ones pointless; those still count.
        let so_far = family_after(&found);
        let readings = readings_of(&found, &plan);
        let decided = decide_readings(&detector, &readings, so_far, config.threshold);
        let decisive = decided
            .suspects
            .first()
            .is_some_and(|s| s.false_positive_probability <= DECISIVE * config.threshold);
        if decisive {
            break;
        }
    }
    let family = family_after(&found);
    let readings = readings_of(&found, &plan);
    let mut decision = decide_readings(&detector, &readings, family, config.threshold);
    let mut whole: Vec<(SlotSums, Registration)> = Vec::new();
    if whole_marks && decision.suspects.is_empty() {
        let (hypotheses, read) = search_whole_marks(&detector, key, acc, &plan)?;
        let readings: Vec<(&SlotSums, &Candidate)> = read.iter().map(|(r, c)| (&r.0, *c)).collect();
        let family = stages as f64 * hypotheses;
        add_whole_mark_readings(&detector, &mut decision, &readings, family, config.threshold);
        whole = read.into_iter().map(|(r, _)| r).collect();
    }
    let all: Vec<&(SlotSums, Registration)> = found.iter().flat_map(|f| &f.1).chain(&whole).collect();
    // The geometry reported is the reading's that names the suspect, or with none the
    // strongest pilot's.
    // Damaged sums (a NaN anywhere) never win.
    let strength = |r: &(SlotSums, Registration)| {
        let v = match decision.suspects.first() {
            Some(s) => detector.score(&detector.soft_bits(&r.0), s.mark_id),
            None => detector.pilot_z(&r.0),
        };
        if v.is_finite() {
            v
        } else {
            f64::NEG_INFINITY
        }
    };
    let chosen = all.iter().max_by(|a, b| strength(a).total_cmp(&strength(b))).expect("at least one reading");
    let registration = chosen.1.clone();
    Ok(TraceResult {
        decision,
        informed: false,
        frames_used: acc.frames,
        registration,
        threshold: config.threshold,
        per_second: Vec::new(),
        example_frames: None,
    })
}

/// A reading where one candidate's whole mark peaked, and that candidate.
type CandidateReading<'p> = ((SlotSums, Registration), &'p Candidate);

/// Searches the whole-picture sets of `plan` for each of their candidates' whole marks
/// (pilot and codeword) and reads each where its search peaked: every geometry tried, over
/// all candidates, and the readings with their candidate. The folds do not depend on the
/// template: each coarse hypothesis is folded once and correlated with every candidate's.
fn search_whole_marks<'p>(
    detector: &Detector,
    key: &MasterKey,
    acc: &BlindAccumulation,
    plan: &'p [Planned<'_>],
) -> Result<(f64, Vec<CandidateReading<'p>>)> {
    let scales = &WHOLE_MARK;
    let (mut hypotheses, mut read) = (0.0, Vec::new());
    // Not the transposed sets: a mark too faint for its pilot is rarely also turned, and
    // searching them would double this stage's time on every unmarked clip.
    let searched = |p: &Planned| !p.scales.windows && !p.transposed() && !p.candidates.is_empty();
    for (i, p) in plan.iter().enumerate().filter(|(_, p)| searched(p)) {
        let cache = acc.folds.as_ref().map(|c| (c, p.set));
        let shapes = plan_shapes(plan, i, acc.folds.as_ref());
        let coarse = coarse_hypotheses(shapes, scales);
        let tried = coarse.len();
        let wholes: Vec<Pilot> = p
            .candidates
            .iter()
            .map(|c| Pilot::whole_mark(key, &detector.codebook().codeword(c.mark_id)))
            .collect();
        let rankings = ranked_hypotheses_each(&wholes, p.views, shapes, coarse, scales.mirrors, cache);
        for ((c, whole), ranked) in p.candidates.iter().zip(&wholes).zip(&rankings) {
            let (searched, readings) = refine_and_read(
                detector,
                whole,
                p.views,
                shapes,
                (ranked, tried),
                scales,
                acc.frames,
                acc.size,
            )?;
            hypotheses += searched;
            read.extend(readings.into_iter().map(|r| (r, c)));
        }
    }
    Ok((hypotheses, read))
}

/// Every reading of the searches made so far, each with its search's candidates.
fn readings_of<'a>(
    found: &'a [(f64, Vec<(SlotSums, Registration)>)],
    plan: &'a [Planned<'_>],
) -> Vec<(&'a SlotSums, &'a [Candidate])> {
    found.iter().zip(plan).flat_map(|(f, p)| f.1.iter().map(|r| (&r.0, p.candidates.as_slice()))).collect()
}

/// A view resampled onto the mark's grid where the pilot put it, ready to read.
struct Aligned {
    /// The accumulated residual, its pixel (0, 0) on a block corner of the tile.
    resid: Gray,
    /// The mean picture on the same grid: it tells the mask where the mark is strong.
    host: Gray,
    /// Tile position of pixel (0, 0).
    phase: (usize, usize),
    /// The tile shift the pilot's peak gave.
    shift: (f64, f64),
    /// Where the grid starts in the view's grid ([`GridMap`](sampling::GridMap) offset).
    start: (f64, f64),
}

/// Aligns `view` (already flipped by the mirror found) under `map`: the pilot's peak gives
/// the tile's shift, and the accumulated residual and the mean picture are resampled so
/// their blocks fall on the tile's. `None` when the view is too small for half a tile.
fn align_view(sync: &mut PilotSearch, view: &Analysis, map: Linear, frames: u64) -> Option<Aligned> {
    let (_, peak) = sync.peak(&view.sync, map)?;
    let shift = sync.subpixel(peak);
    // Residual pixel p holds tile pixel (p - shift): start reading where that is a block
    // corner.
    let start = (shift.0.rem_euclid(8.0), shift.1.rem_euclid(8.0));
    let resid = resample(&view.acc, map, start);
    let phase = (
        ((-(shift.0 - start.0)).rem_euclid(TILE_PX as f64).round() as usize) % TILE_PX,
        ((-(shift.1 - start.1)).rem_euclid(TILE_PX as f64).round() as usize) % TILE_PX,
    );
    let mut host = resample(&view.host, map, start);
    for v in host.data.iter_mut() {
        *v /= frames as f32;
    }
    Some(Aligned { resid, host, phase, shift, start })
}

/// Reads the mark from `view` (already flipped by the mirror found) under `map`, block by
/// block with the mask of the mean picture ([`align_view`]). The sums and the shift; `None`
/// when the view is too small for half a tile.
fn read_view(
    detector: &Detector,
    sync: &mut PilotSearch,
    view: &Analysis,
    map: Linear,
    frames: u64,
) -> Option<(SlotSums, (f64, f64))> {
    let a = align_view(sync, view, map, frames)?;
    let mut sums = SlotSums::default();
    detector.accumulate(
        &a.resid.data,
        &a.host.data,
        a.resid.w,
        a.resid.h,
        a.phase,
        &mut sums,
        &mut DetectScratch::default(),
    );
    sums.frames = frames;
    Some((sums, a.shift))
}

/// One planned search of a blind trace: where it looks, how, and whose marks it reads.
struct Planned<'a> {
    views: &'a [Analysis],
    set: ViewSet,
    scales: ScaleSearch,
    candidates: Vec<Candidate>,
    /// The views' shapes ([`shapes_of`]), found when the set is first searched and kept
    /// for the whole-mark stage.
    shapes: OnceLock<Vec<Vec<Shape>>>,
    /// The plan entry whose views this one's are, transposed.
    transposes: Option<usize>,
}

impl Planned<'_> {
    fn transposed(&self) -> bool {
        matches!(self.set, ViewSet::Transposed(_))
    }

    /// Marks readings of a transposed set as such (the search itself does not know).
    fn mark_orientation(&self, readings: &mut [(SlotSums, Registration)]) {
        if self.transposed() {
            for (_, r) in readings {
                if let Registration::Blind { transposed, .. } = r {
                    *transposed = true;
                }
            }
        }
    }
}

/// The shapes plan entry `i`'s views are searched under: their own ([`shapes_of`]), or
/// for a transposed set those of the set it transposes, transposed (its lattice is theirs,
/// transposed, and the lattice sums need not run again).
fn plan_shapes<'p>(plan: &'p [Planned], i: usize, folds: Option<&FoldCache>) -> &'p [Vec<Shape>] {
    let p = &plan[i];
    p.shapes.get_or_init(|| match p.transposes {
        Some(j) => plan_shapes(plan, j, folds)
            .iter()
            .map(|view| view.iter().map(|s| s.transposed()).collect())
            .collect(),
        None => shapes_of(p.views, &p.scales, folds.map(|c| (c, p.set))),
    })
}

/// Searches one set of accumulated views under their `shapes` for the pilot and reads the
/// mark where it is: the number of hypotheses searched, the slot sums, and the geometry
/// found. The coarse hypotheses' folds go through `cache`, when given, as folds of
/// `views`' set.
#[allow(clippy::too_many_arguments)]
fn search_and_read(
    detector: &Detector,
    pilot: &Pilot,
    views: &[Analysis],
    shapes: &[Vec<Shape>],
    cache: Option<(&FoldCache, ViewSet)>,
    parent: Option<&Analysis>,
    scales: &ScaleSearch,
    frames: u64,
    acc_size: (usize, usize),
) -> Result<(f64, Vec<(SlotSums, Registration)>)> {
    if let Some(parent) = parent {
        let found = search_windows(detector, pilot, views, cache, parent, scales, frames);
        let Some((window, s, m, tried)) = found else {
            return Err(too_small(acc_size));
        };
        let hypotheses = (tried * scales.mirrors.len() * TILE_PX * TILE_PX) as f64;
        let reading = read_peak(
            detector,
            pilot,
            &[window],
            shapes,
            (0, 0, s, m),
            scales,
            frames,
            acc_size,
            hypotheses,
        )?;
        return Ok((hypotheses, vec![reading]));
    }
    let coarse = coarse_hypotheses(shapes, scales);
    let tried = coarse.len();
    let ranked = ranked_hypotheses(pilot, views, shapes, coarse, scales.mirrors, cache);
    refine_and_read(detector, pilot, views, shapes, (&ranked, tried), scales, frames, acc_size)
}

/// The shapes each of `views` is searched under: the plain one, then, when `scales` asks
/// for them, those its mark's lattice suggests (found without the key, through `cache`
/// when given).
fn shapes_of(
    views: &[Analysis],
    scales: &ScaleSearch,
    cache: Option<(&FoldCache, ViewSet)>,
) -> Vec<Vec<Shape>> {
    views
        .iter()
        .enumerate()
        .map(|(vi, v)| {
            let lattice = match (scales.lattice, cache) {
                (false, _) => Vec::new(),
                (true, None) => lattice_shapes(&v.sync),
                (true, Some((cache, set))) => cache.lattice_shapes(set, vi, &v.sync),
            };
            std::iter::once(Shape::PLAIN).chain(lattice).collect()
        })
        .collect()
}

/// Every view under every one of its shapes at that shape's coarse scales.
fn coarse_hypotheses(shapes: &[Vec<Shape>], scales: &ScaleSearch) -> Vec<Hyp> {
    (0..shapes.len())
        .flat_map(|vi| (0..shapes[vi].len()).map(move |si| (vi, si)))
        .flat_map(|(vi, si)| scales.coarse_scales_of(&shapes[vi][si]).map(move |s| (vi, si, s)))
        .collect()
}

/// The best distinct peaks of a coarse search (`ranked`, of `tried` hypotheses), each
/// refined over fine scales and read: the number of hypotheses searched in all, and the
/// slot sums and geometry of each peak.
#[allow(clippy::too_many_arguments)]
fn refine_and_read(
    detector: &Detector,
    pilot: &Pilot,
    views: &[Analysis],
    shapes: &[Vec<Shape>],
    (ranked, tried): (&[(f64, Hyp, Mirror)], usize),
    scales: &ScaleSearch,
    frames: u64,
    acc_size: (usize, usize),
) -> Result<(f64, Vec<(SlotSums, Registration)>)> {
    let mut hypotheses = tried;
    // The peaks to read: (view, shape, scale, mirror).
    let mut peaks: Vec<(usize, usize, f64, Mirror)> = Vec::with_capacity(scales.peaks);
    for best in distinct_peaks(ranked, scales.peaks, scales.coarse_step) {
        let (vi0, si0, s0) = best.1;
        let fine: Vec<Hyp> = scales.fine_scales(s0).map(|s| (vi0, si0, s)).collect();
        hypotheses += fine.len();
        let best_fine = best_hypothesis(pilot, views, shapes, fine, scales.mirrors, None);
        let (_, (vi, si, scale), mirror) = if best_fine.0 > best.0 { best_fine } else { best };
        peaks.push((vi, si, scale, mirror));
    }
    // No scale of the search fits half a tile into a picture this small.
    if peaks.is_empty() {
        return Err(too_small(acc_size));
    }
    let hypotheses = (hypotheses * scales.mirrors.len() * TILE_PX * TILE_PX) as f64;
    let mut readings = Vec::with_capacity(peaks.len());
    for peak in peaks {
        readings.push(read_peak(detector, pilot, views, shapes, peak, scales, frames, acc_size, hypotheses)?);
    }
    Ok((hypotheses, readings))
}

/// The error of a picture too small for any scale of the search to hold half a tile.
fn too_small((width, height): (usize, usize)) -> Error {
    Error::TooSmall {
        width,
        height,
        min: BLIND_MIN_SIDE,
        what: "trace without the original (blind); pass --original",
    }
}

/// Reads one peak of a search: view `vi` under shape `si` at `scale`, flipped by `mirror`.
#[allow(clippy::too_many_arguments)]
fn read_peak(
    detector: &Detector,
    pilot: &Pilot,
    views: &[Analysis],
    shapes: &[Vec<Shape>],
    (vi, si, scale, mirror): (usize, usize, f64, Mirror),
    scales: &ScaleSearch,
    frames: u64,
    acc_size: (usize, usize),
    hypotheses: f64,
) -> Result<(SlotSums, Registration)> {
    // Read the mirrored copy the right way round: flipping the accumulated pictures is
    // exact (the shape is seen flipped too), and the shift is then found afresh.
    let flipped;
    let view = if mirror.is_identity() {
        &views[vi]
    } else {
        flipped = views[vi].flipped(mirror);
        &flipped
    };
    let map = shapes[vi][si].map.mirrored(mirror).scaled(scale);
    // Every scale of the search is too large for a picture this small to hold half a tile.
    let (sums, shift) = read_view(detector, &mut PilotSearch::new(pilot), view, map, frames)
        .ok_or_else(|| too_small(acc_size))?;
    let (rotation_deg, stretch) = shapes[vi][si].map.rotation_and_stretch();
    // A window of the picture: where it is, in leaked pixels.
    let window = scales.windows.then(|| {
        let (fx, fy) = view.factor;
        [view.origin.0 as f64 * fx, view.origin.1 as f64 * fy, view.acc.w as f64 * fx, view.acc.h as f64 * fy]
    });
    let registration = Registration::Blind {
        scale,
        analysis_factor: view.factor.1,
        shift,
        hypotheses,
        mirrored: (mirror.horizontal, mirror.vertical),
        transposed: false,
        rotation_deg,
        stretch,
        window,
    };
    Ok((sums, registration))
}
