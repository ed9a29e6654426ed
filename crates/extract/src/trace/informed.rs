//! Informed trace: the leaked clip registered against its exported source.
//!
//! Both files are decoded once, at the same time, each on its own thread: thumbnails (to
//! find where the source sits in the leaked picture and in time) and, within the memory
//! budget, every frame at the resolution it is read at. A file is decoded a second time
//! only when the budget runs out or the registration asks for another reading resolution
//! of the leaked clip than the one guessed from the frame sizes (a picture-in-picture, say).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rayon::prelude::*;
use tracemark_core::grid::Grid;
use tracemark_core::pipeline::ProgressFn;
use tracemark_core::video::{VideoInfo, VideoReader};
use tracemark_core::{Error as CoreError, Frame, MasterKey};

use super::{open, seconds, thumb_size, tick, Registration, SecondStrength, TraceConfig, TraceResult};
use crate::detect::{DetectScratch, Detector, SlotSums};
use crate::homography::Homography;
use crate::image::{Downscaler, Gray};
use crate::register::{self, Geometry, Warp, WarpTaps};
use crate::register_projective;
use crate::verdict::{decide, Candidate};
use crate::{Error, Result};

/// Stored frames are fixed point in 1/64 grey level: far below any codec's noise, and half
/// the bytes of f32.
const FIXED_ONE: f32 = 64.0;

/// A grey level (0..=255) in fixed point, rounded to the nearest step.
#[inline]
fn to_fixed(v: f32) -> u16 {
    (v * FIXED_ONE + 0.5) as u16
}

/// The grey level of a fixed-point value.
#[inline]
fn from_fixed(v: u16) -> f32 {
    f32::from(v) * (1.0 / FIXED_ONE)
}

/// Writes fixed-point samples into floats.
fn load_fixed(src: &[u16], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(src) {
        *o = from_fixed(v);
    }
}

/// Thumbnail width in source pixels: enough to register, small enough to compare every
/// leaked frame with many source frames.
const THUMB_WIDTH: f64 = 128.0;

/// What the decoder threads share with the thread that reports progress.
struct Shared {
    /// Frames decoded so far, both files.
    done: AtomicU64,
    /// Set to stop both decoders (the user cancelled, or the other file failed).
    cancel: AtomicBool,
    /// Bytes of the memory budget not yet spent on stored frames.
    budget: AtomicUsize,
}

impl Shared {
    fn take(&self, bytes: usize) -> bool {
        self.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(bytes)).is_ok()
    }

    fn give(&self, bytes: usize) {
        self.budget.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// One file, decoded once.
struct Clip {
    info: VideoInfo,
    thumbs: Vec<Thumb>,
    /// Seconds from the first frame: re-encoders usually reset a clip's start to zero.
    times: Vec<f64>,
    /// Every frame at `store_size` in fixed point, unless the memory budget ran out.
    store: Option<Vec<Box<[u16]>>>,
    store_size: (usize, usize),
}

/// Decodes up to `limit` frames (0 = all) of `path` into thumbnails at `thumb_factor`
/// picture pixels per thumbnail pixel and, budget permitting, frames at `store_size`.
fn decode_clip(
    path: &Path,
    thumb_factor: f64,
    store_size: (usize, usize),
    limit: usize,
    shared: &Shared,
) -> Result<Clip> {
    let mut reader = open(path)?;
    let info = reader.info().clone();
    let (w, h) = (info.width, info.height);
    let (tw, th) = thumb_size(w, h, thumb_factor);
    let mut store_down = Downscaler::new(w, h, store_size.0, store_size.1);
    // Thumbnails come from the reading-size picture when that is larger (a box of boxes is
    // a box: 1080p to 640x360 to 128x72 is exactly 1080p to 128x72).
    let from_work = tw <= store_size.0 && th <= store_size.1;
    let mut thumb_down = if from_work {
        Downscaler::new(store_size.0, store_size.1, tw, th)
    } else {
        Downscaler::new(w, h, tw, th)
    };
    let mut work = vec![0f32; store_size.0 * store_size.1];
    let mut thumb = Gray::new(tw, th);
    let frame_bytes = work.len() * std::mem::size_of::<u16>();
    let mut frame = Frame::new(w, h);
    let tb = info.time_base;
    let mut clip = Clip { info, thumbs: Vec::new(), times: Vec::new(), store: Some(Vec::new()), store_size };
    let mut start = None;
    while limit == 0 || clip.thumbs.len() < limit {
        if shared.cancel.load(Ordering::Relaxed) {
            return Err(Error::Video(CoreError::Cancelled));
        }
        if !reader.read_frame(&mut frame).map_err(Error::Video)? {
            break;
        }
        if from_work {
            store_down.run(&frame.y, &mut work);
            thumb_down.run_f32(&work, &mut thumb.data);
        } else {
            thumb_down.run(&frame.y, &mut thumb.data);
        }
        clip.thumbs.push(Thumb::from_gray(&thumb));
        let t = seconds(frame.pts, tb);
        clip.times.push(t - *start.get_or_insert(t));
        if let Some(store) = clip.store.as_mut() {
            if shared.take(frame_bytes) {
                if !from_work {
                    store_down.run(&frame.y, &mut work);
                }
                store.push(work.iter().map(|&v| to_fixed(v)).collect());
            } else {
                shared.give(store.len() * frame_bytes);
                clip.store = None;
            }
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(clip)
}

/// Decodes the leaked clip and the source at the same time, reporting progress from this
/// thread. The first real error wins over the other thread's resulting cancellation.
#[allow(clippy::too_many_arguments)]
fn decode_both(
    leaked: &Path,
    source: &Path,
    thumb_factor: f64,
    sizes: ((usize, usize), (usize, usize)),
    leak_limit: usize,
    shared: &Shared,
    progress: &mut ProgressFn<'_>,
    total: Option<u64>,
) -> Result<(Clip, Clip)> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let spawn = |path: &'static str, p: &Path, size, limit| {
            let (tx, p) = (tx.clone(), p.to_path_buf());
            std::thread::Builder::new()
                .name(format!("tracemark-decode-{path}"))
                .spawn_scoped(s, move || {
                    let r = decode_clip(&p, thumb_factor, size, limit, shared);
                    if r.is_err() {
                        shared.cancel.store(true, Ordering::Relaxed);
                    }
                    // The receiver outlives the scope's threads.
                    let _ = tx.send(());
                    r
                })
                .expect("spawning a decoder thread")
        };
        let leak = spawn("leaked", leaked, sizes.0, leak_limit);
        let src = spawn("source", source, sizes.1, 0);
        let mut finished = 0;
        let mut stopped = None;
        while finished < 2 {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => finished += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if stopped.is_none() {
                if let Err(e) = tick(progress, shared.done.load(Ordering::Relaxed), total) {
                    shared.cancel.store(true, Ordering::Relaxed);
                    stopped = Some(e);
                }
            }
        }
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Clip>>| {
            h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        };
        let (leak, src) = (join(leak), join(src));
        if let Some(e) = stopped {
            return Err(e);
        }
        match (leak, src) {
            (Ok(l), Ok(s)) => Ok((l, s)),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(if is_cancelled(&a) { b } else { a }),
        }
    })
}

fn is_cancelled(e: &Error) -> bool {
    matches!(e, Error::Video(CoreError::Cancelled))
}

/// Leaked pixels per reading pixel for a source→leaked scale of (`sx`, `sy`): the largest
/// whole number that keeps the leaked picture at least as fine as the source's working
/// grid. A little slack so that a 720p copy of a 1080p source reads at 2, not 1.
fn reading_factor(sx: f64, sy: f64, grid: &Grid) -> f64 {
    (sx.min(sy) * grid.scale + 0.02).floor().max(1.0)
}

/// Below this NCC of the best axis-aligned thumbnail registration, mirrored, rotated and
/// turned pictures are searched too (they cost a few tenths of a second; an ordinary copy
/// matches far better than this).
const ORIENTATION_SEARCH_BELOW: f64 = 0.9;

/// Registers a leaked thumbnail against a source thumbnail: the axis-aligned search
/// (scale, crop, bars, picture-in-picture), a projective refinement of it (small tilts,
/// keystones), and when neither fits well the search over mirrors and rotations. Every
/// candidate is judged by the same robust NCC. The map is in thumbnail pixels.
fn register_thumbs(src: &Gray, leak: &Gray) -> Option<(Homography, f64)> {
    let axis = register::coarse(src, leak, 3)
        .into_iter()
        .map(|(g, _)| register::refine(src, leak, g, 1))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(g, _)| Homography::from_geometry(&g));
    let mut best = axis.and_then(|h| register_projective::quality(src, leak, h, 1).map(|q| (h, q)));
    if let Some((h, q)) = best {
        if let Some((p, pq)) = register_projective::refine(src, leak, h, 1, 40) {
            if pq > q && p.corner_distance(&h, src.w as f64, src.h as f64) > 0.3 {
                best = Some((p, pq));
            }
        }
    }
    if best.is_none_or(|b| b.1 < ORIENTATION_SEARCH_BELOW) {
        if let Some(&(h, q)) = register_projective::coarse_oriented(src, leak, 1).first() {
            // A robust NCC can rise by fitting a part of the picture only: a decent
            // axis-aligned answer gives way only to a clearly better one.
            let margin = if best.is_some_and(|b| b.1 >= 0.8) { 0.1 } else { 0.01 };
            if best.is_none_or(|b| q > b.1 + margin) {
                best = Some((h, q));
            }
        }
    }
    best
}

/// Refines a working-grid registration on one pair of frames at reading resolution. An
/// axis-aligned map is refined as such (and kept unless a projective fit is materially
/// different and better); any other map is refined projectively.
fn refine_work(src: &Gray, leak: &Gray, h: &Homography) -> (Homography, f64) {
    if let Some(g) = h.as_geometry() {
        let (g, v) = register::refine_robust(src, leak, g, 2);
        let axis = Homography::from_geometry(&g);
        let q0 = register_projective::quality(src, leak, axis, 2);
        if let (Some(q0), Some((p, q))) = (q0, register_projective::refine(src, leak, axis, 2, 30)) {
            if q > q0 + 0.002 && p.corner_distance(&axis, src.w as f64, src.h as f64) > 0.5 {
                return (p, q);
            }
        }
        return (axis, v);
    }
    match register_projective::refine(src, leak, *h, 2, 40) {
        Some((p, q)) => (p, q),
        None => (*h, 0.0),
    }
}

/// NCC of a leaked thumbnail mapped onto a source thumbnail, on every `step`-th pixel.
fn thumb_match(src: &Gray, leak: &Gray, g: &Geometry, step: usize) -> f64 {
    register::ncc_at(src, leak, g, step).value()
}

fn nearest(times: &[f64], t: f64) -> usize {
    (0..times.len()).min_by(|&a, &b| (times[a] - t).abs().total_cmp(&(times[b] - t).abs())).unwrap_or(0)
}

/// Informed trace: registers the leaked clip against `source` in time and space, subtracts
/// the source, and reads the mark from what is left.
pub fn trace_informed(
    key: &MasterKey,
    leaked: &Path,
    source: &Path,
    candidates: &[Candidate],
    config: &TraceConfig,
    progress: &mut ProgressFn<'_>,
) -> Result<TraceResult> {
    config.validate()?;
    let detector = Detector::new(key);
    let (src_info, leak_info) = (open(source)?.info().clone(), open(leaked)?.info().clone());
    let grid = Grid::for_frame(src_info.width, src_info.height);
    let factor = (src_info.width as f64 / THUMB_WIDTH).max(1.0);
    // The leaked clip is kept at the reading resolution a whole-picture copy would need;
    // registration confirms it (or the leaked file is decoded again).
    let guess = reading_factor(
        leak_info.width as f64 / src_info.width as f64,
        leak_info.height as f64 / src_info.height as f64,
        &grid,
    );
    let leak_size = thumb_size(leak_info.width, leak_info.height, guess);
    let mut leak_frames = leak_info.frames_estimate.unwrap_or(0);
    if config.max_frames > 0 {
        leak_frames = leak_frames.min(config.max_frames as u64);
    }
    let src_frames = src_info.frames_estimate.unwrap_or(0);
    let total = Some(src_frames + 2 * leak_frames);
    let shared = Shared {
        done: AtomicU64::new(0),
        cancel: AtomicBool::new(false),
        budget: AtomicUsize::new(config.memory_budget),
    };
    let (leak, src) = decode_both(
        leaked,
        source,
        factor,
        (leak_size, (grid.work_w, grid.work_h)),
        config.max_frames,
        &shared,
        progress,
        total,
    )?;
    if leak.thumbs.is_empty() || src.thumbs.is_empty() {
        return Err(Error::NoFrames);
    }
    let mut done = shared.done.load(Ordering::Relaxed);
    tick(progress, done, total)?;

    // 1. Geometry from one pair of frames: the leaked middle frame against the source frame
    // at the same time, or else the source frame that looks most like it.
    let mid = leak.thumbs.len() / 2;
    let leak_mid = leak.thumbs[mid].gray();
    let same_time = nearest(&src.times, leak.times[mid]);
    let whole = |a: &Gray, b: &Gray| {
        let g = Geometry { sx: b.w as f64 / a.w as f64, sy: b.h as f64 / a.h as f64, tx: 0.0, ty: 0.0 };
        thumb_match(a, b, &g, 2)
    };
    let look_alike = (0..src.thumbs.len())
        .into_par_iter()
        .map(|a| (whole(&src.thumbs[a].gray(), &leak_mid), a))
        .reduce(|| (f64::NEG_INFINITY, 0), |x, y| if y.0 > x.0 || (y.0 == x.0 && y.1 < x.1) { y } else { x })
        .1;
    // On a panning shot a time offset and a translation explain the picture equally well,
    // but only the true pairing lines up the mark. Both pairings are registered; when they
    // disagree materially both are read and the one whose pilot is stronger is kept (the
    // pilot's probability then counts both; the payload chips played no part in the choice).
    let register_pair = |pair: usize| register_thumbs(&src.thumbs[pair].gray(), &leak_mid);
    let mut pairings: Vec<Homography> = Vec::new();
    let pairs = if look_alike == same_time { vec![same_time] } else { vec![same_time, look_alike] };
    for pair in pairs {
        if let Some((g, _)) = register_pair(pair) {
            // The map sends source thumbnail corners into the leak: compare it there.
            let (tw, th) = (src.thumbs[pair].w as f64, src.thumbs[pair].h as f64);
            let differs = |h: &Homography| h.corner_distance(&g, tw, th) > 0.5;
            if pairings.iter().all(differs) {
                pairings.push(g);
            }
        }
    }
    if pairings.is_empty() {
        return Err(Error::Registration("the leaked clip does not overlap the source at any scale".into()));
    }
    let ctx = Informed { detector: &detector, src: &src, leak: &leak, factor, grid, source, leaked, mid };
    let total = total.map(|t| t + (pairings.len() as u64 - 1) * leak.thumbs.len() as u64);
    let mut best: Option<Reading> = None;
    for g in &pairings {
        let reading = ctx.read(g, progress, &mut done, total)?;
        if best.as_ref().is_none_or(|b| detector.pilot_z(&reading.sums) > detector.pilot_z(&b.sums)) {
            best = Some(reading);
        }
    }
    let Reading { sums, per_second, example, geometry, refined_ncc, offset } =
        best.expect("at least one pairing");
    if sums.frames == 0 {
        return Err(Error::Registration("no leaked frame could be matched to the source".into()));
    }
    let decision = decide(&detector, &sums, candidates, pairings.len() as f64, config.threshold);
    Ok(TraceResult {
        decision,
        informed: true,
        frames_used: sums.frames,
        registration: Registration::Informed {
            geometry: geometry.nearest_geometry(src_info.width as f64, src_info.height as f64),
            homography: geometry,
            mirrored: geometry.is_mirrored(),
            rotation_deg: geometry.rotation_degrees(src_info.width as f64, src_info.height as f64),
            time_offset_s: offset,
            ncc: refined_ncc.unwrap_or(0.0),
        },
        threshold: config.threshold,
        per_second: per_second
            .iter()
            .map(|(t, s)| SecondStrength { t: *t, pilot_z: detector.pilot_z(s) })
            .collect(),
        example_frames: example,
    })
}

/// What one registration hypothesis read from the clip.
struct Reading {
    sums: SlotSums,
    per_second: Vec<(f64, SlotSums)>,
    example: Option<(Gray, Gray)>,
    geometry: Homography,
    refined_ncc: Option<f64>,
    offset: f64,
}

/// A frame at reading resolution: kept from the first decode, or decoded again.
#[derive(Clone)]
enum Pic<'a> {
    Stored(&'a [u16]),
    Decoded(Arc<Gray>),
}

impl Pic<'_> {
    /// Writes the picture into `out`, which has its size.
    fn load(&self, out: &mut Gray) {
        match self {
            Pic::Stored(d) => load_fixed(d, &mut out.data),
            Pic::Decoded(g) => out.data.copy_from_slice(&g.data),
        }
    }

    fn to_gray(&self, (w, h): (usize, usize)) -> Gray {
        let mut g = Gray::new(w, h);
        self.load(&mut g);
        g
    }
}

/// Where a reading gets its frames at one size: the first decode's store, or a second
/// decode.
enum Frames<'a> {
    Stored(&'a [Box<[u16]>]),
    Decode(Box<Redecode>),
}

/// A second, forward-only decode; the last frame is kept for repeats.
struct Redecode {
    reader: VideoReader,
    frame: Frame,
    next: usize,
    down: Downscaler,
    last: Option<(usize, Arc<Gray>)>,
}

impl<'a> Frames<'a> {
    fn new(clip: &'a Clip, path: &Path, size: (usize, usize)) -> Result<Self> {
        match &clip.store {
            Some(frames) if clip.store_size == size => Ok(Frames::Stored(frames)),
            _ => {
                let (w, h) = (clip.info.width, clip.info.height);
                Ok(Frames::Decode(Box::new(Redecode {
                    reader: open(path)?,
                    frame: Frame::new(w, h),
                    next: 0,
                    down: Downscaler::new(w, h, size.0, size.1),
                    last: None,
                })))
            }
        }
    }

    fn is_stored(&self) -> bool {
        matches!(self, Frames::Stored(_))
    }

    /// Frame `index`; `None` past the end, or when a second decode has already gone past it.
    fn get(&mut self, index: usize) -> Result<Option<Pic<'a>>> {
        let d = match self {
            Frames::Stored(frames) => return Ok(frames.get(index).map(|f| Pic::Stored(f))),
            Frames::Decode(d) => d,
        };
        if let Some((i, g)) = &d.last {
            if *i == index {
                return Ok(Some(Pic::Decoded(Arc::clone(g))));
            }
        }
        if index < d.next {
            return Ok(None);
        }
        while d.next <= index {
            if !d.reader.read_frame(&mut d.frame).map_err(Error::Video)? {
                return Ok(None);
            }
            d.next += 1;
        }
        let (w, h) = d.down.size();
        let mut g = Gray::new(w, h);
        d.down.run(&d.frame.y, &mut g.data);
        // The same fixed point as the store: the budget changes speed, not results.
        g.data.iter_mut().for_each(|v| *v = from_fixed(to_fixed(*v)));
        let g = Arc::new(g);
        d.last = Some((index, Arc::clone(&g)));
        Ok(Some(Pic::Decoded(g)))
    }
}

/// Everything an informed reading needs besides the hypothesis.
struct Informed<'a> {
    detector: &'a Detector,
    src: &'a Clip,
    leak: &'a Clip,
    /// Source pixels per thumbnail pixel.
    factor: f64,
    grid: Grid,
    source: &'a Path,
    leaked: &'a Path,
    /// The leaked frame kept for the report.
    mid: usize,
}

impl Informed<'_> {
    /// For each leaked frame, the source frame it shows under the thumbnail geometry
    /// `g_thumb` (`None` when none fits), and the time offset (leaked + offset = source).
    fn align_in_time(&self, g_thumb: &Homography) -> (Vec<Option<usize>>, f64) {
        let (src, leak) = (self.src, self.leak);
        let index = TimeIndex::new(src, leak, g_thumb);
        let best_match = |k: usize, range: std::ops::Range<usize>| {
            range.map(|a| (index.ncc(a, k), a)).reduce(|x, y| if y.0 > x.0 { y } else { x }).map(|(_, a)| a)
        };
        let probe: Vec<usize> = (0..leak.thumbs.len()).step_by((leak.thumbs.len() / 24).max(1)).collect();
        let mut offsets: Vec<f64> = probe
            .par_iter()
            .map(|&k| src.times[best_match(k, 0..src.thumbs.len()).unwrap_or(0)] - leak.times[k])
            .collect();
        offsets.sort_by(f64::total_cmp);
        let offset = offsets[offsets.len() / 2];
        let frame_dt = if src.times.len() > 1 {
            (src.times[src.times.len() - 1] - src.times[0]) / (src.times.len() - 1) as f64
        } else {
            0.04
        };
        let matches = (0..leak.thumbs.len())
            .into_par_iter()
            .map(|k| {
                let t = leak.times[k] + offset;
                let lo = src.times.partition_point(|&s| s < t - 2.5 * frame_dt);
                let hi = src.times.partition_point(|&s| s <= t + 2.5 * frame_dt);
                best_match(k, lo..hi)
            })
            .collect();
        (matches, offset)
    }

    /// Aligns time under the thumbnail geometry `g_thumb`, refines the geometry on the first
    /// matched pair at reading resolution, subtracts the registered source from every
    /// leaked frame and accumulates.
    fn read(
        &self,
        g_thumb: &Homography,
        progress: &mut ProgressFn<'_>,
        done: &mut u64,
        total: Option<u64>,
    ) -> Result<Reading> {
        let (matches, offset) = self.align_in_time(g_thumb);
        let grid = &self.grid;
        let mut geometry = g_thumb.rescaled(1.0 / self.factor, 1.0 / self.factor);
        let mut refined_ncc = None;
        let (sx, sy) = geometry.local_scale(self.src.info.width as f64, self.src.info.height as f64);
        let leak_factor = reading_factor(sx, sy, grid);
        let leak_size = thumb_size(self.leak.info.width, self.leak.info.height, leak_factor);
        let src_size = (grid.work_w, grid.work_h);
        let mut src_frames = Frames::new(self.src, self.source, src_size)?;
        let mut leak_frames = Frames::new(self.leak, self.leaked, leak_size)?;
        let batch_len = if src_frames.is_stored() && leak_frames.is_stored() {
            64
        } else {
            2 * rayon::current_num_threads()
        };
        let mut sums = SlotSums::default();
        let mut per_second: Vec<(f64, SlotSums)> = Vec::new();
        let mut example = None;
        let mut batch: Vec<(usize, Pic<'_>, Pic<'_>)> = Vec::with_capacity(batch_len);
        // Made once the geometry is refined, on the first matched pair.
        let mut warp: Option<PairWarp> = None;
        let mut merge = |batch: &mut Vec<(usize, Pic<'_>, Pic<'_>)>, warp: &Option<PairWarp>| {
            let Some(warp) = warp else { return };
            for (k, fs, ex) in read_pairs(self.detector, warp, batch, self.mid) {
                sums.merge(&fs);
                let sec = self.leak.times[k].floor();
                if per_second.last().is_none_or(|p| p.0 != sec) {
                    per_second.push((sec, SlotSums::default()));
                }
                per_second.last_mut().expect("pushed above").1.merge(&fs);
                if ex.is_some() {
                    example = ex;
                }
            }
            batch.clear();
        };
        for (k, m) in matches.iter().enumerate() {
            let Some(leak_pic) = leak_frames.get(k)? else { break };
            *done += 1;
            tick(progress, *done, total)?;
            let Some(src_pic) = (match *m {
                Some(m) => src_frames.get(m)?,
                None => None,
            }) else {
                continue;
            };
            if refined_ncc.is_none() {
                let g_work = geometry.rescaled(grid.scale, leak_factor);
                let (src_g, leak_g) = (src_pic.to_gray(src_size), leak_pic.to_gray(leak_size));
                let (g, v) = refine_work(&src_g, &leak_g, &g_work);
                geometry = g.rescaled(1.0 / grid.scale, 1.0 / leak_factor);
                warp = Some(PairWarp::new(src_size, leak_size, &g, &src_g, &leak_g));
                refined_ncc = Some(v);
            }
            batch.push((k, src_pic, leak_pic));
            if batch.len() == batch_len {
                merge(&mut batch, &warp);
            }
        }
        merge(&mut batch, &warp);
        Ok(Reading { sums, per_second, example, geometry, refined_ncc, offset })
    }
}

/// A thumbnail in the store's fixed point (half the bytes of f32; the source's thumbnails
/// are kept for every frame).
struct Thumb {
    w: usize,
    h: usize,
    data: Box<[u16]>,
}

impl Thumb {
    fn from_gray(g: &Gray) -> Self {
        Self { w: g.w, h: g.h, data: g.data.iter().map(|&v| to_fixed(v)).collect() }
    }

    fn gray(&self) -> Gray {
        let mut g = Gray::new(self.w, self.h);
        load_fixed(&self.data, &mut g.data);
        g
    }
}

/// The thumbnails as time alignment compares them under one geometry. The leaked picture
/// covers a rectangle of the source thumbnail grid; over it, each warped leaked thumbnail
/// is kept as a zero-mean, unit-norm vector and each source thumbnail is summarised by its
/// inverse norm about its mean, so that the NCC of any pair is one dot product (the
/// source's mean drops out against a zero-mean vector) and nothing per source frame is
/// copied.
struct TimeIndex<'a> {
    src: &'a [Thumb],
    x_range: std::ops::Range<usize>,
    y_range: std::ops::Range<usize>,
    src_inv_norm: Vec<f32>,
    leak: Vec<Vec<f32>>,
}

impl<'a> TimeIndex<'a> {
    fn new(src: &'a Clip, leak: &Clip, g: &Homography) -> Self {
        let (w, h) = (src.thumbs[0].w, src.thumbs[0].h);
        let leak_size = (leak.thumbs[0].w, leak.thumbs[0].h);
        let warp = Warp::new((w, h), leak_size, g);
        let (x_range, y_range) = (warp.x_range(), warp.y_range());
        // Which pixels of the bounding rectangle the leaked picture covers (all of them for
        // an axis-aligned map); the others are left out of every sum.
        let covered: Vec<bool> = y_range
            .clone()
            .flat_map(|j| x_range.clone().map(move |i| (i, j)))
            .map(|(i, j)| warp.covers(i, j))
            .collect();
        let n = covered.iter().filter(|&&c| c).count().max(1) as f64;
        let row_len = x_range.len();
        // A flat picture has no direction: it matches nothing.
        let inv = |ss: f64| if ss > 1e-6 { (1.0 / ss.sqrt()) as f32 } else { 0.0 };
        let src_inv_norm = src
            .thumbs
            .par_iter()
            .map(|t| {
                let (mut sum, mut sq) = (0f64, 0f64);
                for (r, j) in y_range.clone().enumerate() {
                    let row = &t.data[j * w..][x_range.clone()];
                    for (&v, _) in row.iter().zip(&covered[r * row_len..]).filter(|(_, &c)| c) {
                        let v = f64::from(from_fixed(v));
                        sum += v;
                        sq += v * v;
                    }
                }
                inv(sq - sum * sum / n)
            })
            .collect();
        let leak = leak
            .thumbs
            .par_iter()
            .map(|t| {
                let t = t.gray();
                let mut v: Vec<f32> = y_range
                    .clone()
                    .flat_map(|j| x_range.clone().map(move |i| (i, j)))
                    .map(|(i, j)| warp.sample(&t, i, j).unwrap_or(0.0))
                    .collect();
                let mean = (v.iter().map(|&x| f64::from(x)).sum::<f64>() / n) as f32;
                v.iter_mut().zip(&covered).filter(|(_, &c)| c).for_each(|(x, _)| *x -= mean);
                let k = inv(v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>());
                v.iter_mut().for_each(|x| *x *= k);
                v
            })
            .collect();
        Self { src: &src.thumbs, x_range, y_range, src_inv_norm, leak }
    }

    /// NCC of source thumbnail `a` and leaked thumbnail `k`.
    fn ncc(&self, a: usize, k: usize) -> f32 {
        let t = &self.src[a];
        let row_len = self.x_range.len();
        let mut acc = 0f32;
        for (r, j) in self.y_range.clone().enumerate() {
            acc += dot(&t.data[j * t.w..][self.x_range.clone()], &self.leak[k][r * row_len..][..row_len]);
        }
        acc * (1.0 / FIXED_ONE) * self.src_inv_norm[a]
    }
}

/// Dot product with eight running sums, so that it vectorises.
fn dot(a: &[u16], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, y)| f32::from(x) * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += f32::from(x[l]) * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// How every pair of one reading is put on a common grid: the source working grid, the
/// leaked reading size, the warp of the registered geometry between them, and which
/// source pixels take part.
struct PairWarp {
    src_size: (usize, usize),
    leak_size: (usize, usize),
    warp: Warp,
    /// For a leaked picture coarser than the working grid, how it sees the source
    /// (axis-aligned geometries).
    view: Option<LeakView>,
    /// Source pixels that are covered and not under an overlay (logo, ticker, black bar):
    /// only these enter the tone fit and the residual.
    usable: Vec<bool>,
}

impl PairWarp {
    /// `h_work` maps source working-grid pixels to leaked reading pixels; `src` and `leak`
    /// are the registered pair it was refined on (where overlays are found).
    fn new(
        src_size: (usize, usize),
        leak_size: (usize, usize),
        h_work: &Homography,
        src: &Gray,
        leak: &Gray,
    ) -> Self {
        let warp = Warp::new(src_size, leak_size, h_work);
        // A leaked picture coarser than the working grid lost the source's finest detail;
        // the source is compared as the leaked pixels would show it, or that detail is noise.
        let view = match (&warp, h_work.as_geometry()) {
            (Warp::Axis(_), Some(g)) if g.sx < 1.0 && g.sy < 1.0 => {
                Some(LeakView::new(src_size, leak_size, &g))
            }
            _ => None,
        };
        let usable = overlay_free(src, leak, &warp);
        Self { src_size, leak_size, warp, view, usable }
    }
}

/// Covered source pixels outside overlays. Whole 8x8 blocks (the mark's own) are judged:
/// after a linear tone fit, a block whose mean difference is far above the typical block's
/// shows something else than the source (black bars of a letterbox, a channel logo, a
/// banner) and would otherwise bend the tone curve and flood the residual.
fn overlay_free(src: &Gray, leak: &Gray, warp: &Warp) -> Vec<bool> {
    let (w, h) = (src.w, src.h);
    let mut usable = vec![false; w * h];
    let mut seen = vec![f32::NAN; w * h];
    let (mut n, mut ss, mut sl, mut sss, mut ssl) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for j in warp.y_range() {
        for i in warp.x_range() {
            if let Some(v) = warp.sample(leak, i, j) {
                let s = f64::from(src.data[j * w + i]);
                let l = f64::from(v);
                seen[j * w + i] = v;
                usable[j * w + i] = true;
                n += 1.0;
                ss += s;
                sl += l;
                sss += s * s;
                ssl += s * l;
            }
        }
    }
    let var = sss - ss * ss / n.max(1.0);
    if n < 64.0 || var <= 1e-6 {
        return usable;
    }
    let a = (ssl - ss * sl / n) / var;
    let b = (sl - a * ss) / n;
    let (bx, by) = (w / 8, h / 8);
    let mut blocks: Vec<(usize, f64)> = Vec::with_capacity(bx * by);
    for j in 0..by {
        for i in 0..bx {
            let (mut d, mut c) = (0f64, 0f64);
            for y in j * 8..j * 8 + 8 {
                for x in i * 8..i * 8 + 8 {
                    let v = seen[y * w + x];
                    if !v.is_nan() {
                        d += (f64::from(v) - (a * f64::from(src.data[y * w + x]) + b)).abs();
                        c += 1.0;
                    }
                }
            }
            if c > 0.0 {
                blocks.push((j * bx + i, d / c));
            }
        }
    }
    if blocks.len() < 8 {
        return usable;
    }
    let mut sorted: Vec<f64> = blocks.iter().map(|b| b.1).collect();
    sorted.sort_by(f64::total_cmp);
    let typical = sorted[sorted.len() / 2];
    // Far above the typical block and above anything a codec does to a matching block.
    let cut = (4.0 * typical).max(12.0);
    for &(k, d) in &blocks {
        if d > cut {
            let (i, j) = (k % bx, k / bx);
            for y in j * 8..j * 8 + 8 {
                usable[y * w + i * 8..y * w + i * 8 + 8].fill(false);
            }
        }
    }
    usable
}

/// Scratch of one worker reading registered pairs.
struct PairScratch {
    src: Gray,
    leak: Gray,
    /// The source as the leaked pixels show it, and the buffers that make it.
    seen: Gray,
    on_leak: Gray,
    between: Vec<f32>,
    warped: Gray,
    resid: Vec<f32>,
    detect: DetectScratch,
}

/// One leaked frame's sums, with the registered pair when it is the one kept for the report.
type PairSums = (usize, SlotSums, Option<(Gray, Gray)>);

/// Reads a batch of (source, leaked) pairs in parallel under `warp`: each pair's slot sums, and for frame `keep` the registered pair
/// itself (for the report).
fn read_pairs(
    detector: &Detector,
    warp: &PairWarp,
    pairs: &[(usize, Pic<'_>, Pic<'_>)],
    keep: usize,
) -> Vec<PairSums> {
    let ((w, h), leak_size) = (warp.src_size, warp.leak_size);
    let view = &warp.view;
    pairs
        .par_iter()
        .map_init(
            || PairScratch {
                src: Gray::new(w, h),
                leak: Gray::new(leak_size.0, leak_size.1),
                seen: Gray::new(w, h),
                on_leak: Gray::new(leak_size.0, leak_size.1),
                between: vec![0f32; h * leak_size.0],
                warped: Gray::new(w, h),
                resid: vec![0f32; w * h],
                detect: DetectScratch::default(),
            },
            |s, (k, src, leak)| {
                src.load(&mut s.src);
                leak.load(&mut s.leak);
                let compared = match (view, &warp.warp) {
                    (Some(v), Warp::Axis(taps)) => {
                        v.apply(&s.src, taps, &mut s.between, &mut s.on_leak, &mut s.seen);
                        &s.seen
                    }
                    _ => &s.src,
                };
                warp_and_fit(compared, &s.leak, warp, &mut s.warped, &mut s.resid);
                let mut fs = SlotSums::default();
                // The mask is the embedder's: computed from the source itself.
                detector.accumulate(&s.resid, &s.src.data, w, h, (0, 0), &mut fs, &mut s.detect);
                detector.end_frame(&mut fs);
                (*k, fs, (*k == keep).then(|| (s.warped.clone(), s.src.clone())))
            },
        )
        .collect()
}

/// The source as a coarser leaked picture shows it: area-averaged onto the leaked pixels
/// under the geometry, then interpolated back onto the working grid with the same taps as
/// the leaked picture.
struct LeakView {
    cols: Vec<Vec<(usize, f32)>>,
    rows: Vec<Vec<(usize, f32)>>,
}

impl LeakView {
    fn new(src_size: (usize, usize), leak_size: (usize, usize), g: &Geometry) -> Self {
        // Leaked pixel x covers source positions [(x - t) / s, (x + 1 - t) / s).
        let axis = |src_len: usize, leak_len: usize, s: f64, t: f64| -> Vec<Vec<(usize, f32)>> {
            (0..leak_len)
                .map(|x| {
                    let (a, b) = ((x as f64 - t) / s, (x as f64 + 1.0 - t) / s);
                    let lo = a.floor().max(0.0) as usize;
                    let hi = (b.ceil().max(0.0) as usize).min(src_len);
                    let mut taps: Vec<(usize, f32)> = (lo..hi)
                        .map(|i| (i, (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0)))
                        .filter(|&(_, c)| c > 1e-9)
                        .map(|(i, c)| (i, c as f32))
                        .collect();
                    if taps.is_empty() {
                        // Outside the source: the nearest edge pixel (only ever read at the
                        // rim of the covered area, by interpolation).
                        let i = if b <= 0.0 { 0 } else { src_len - 1 };
                        taps.push((i, 1.0));
                    }
                    let total: f32 = taps.iter().map(|t| t.1).sum();
                    taps.iter_mut().for_each(|t| t.1 /= total);
                    taps
                })
                .collect()
        };
        Self {
            cols: axis(src_size.0, leak_size.0, g.sx, g.tx),
            rows: axis(src_size.1, leak_size.1, g.sy, g.ty),
        }
    }

    /// Writes the source as the leaked pixels see it into `seen` (working-grid size), using
    /// `between` (source rows x leaked columns) and `on_leak` (leaked size).
    fn apply(&self, src: &Gray, taps: &WarpTaps, between: &mut [f32], on_leak: &mut Gray, seen: &mut Gray) {
        let lw = on_leak.w;
        for (row, out) in src.data.chunks_exact(src.w).zip(between.chunks_exact_mut(lw)) {
            for (o, col) in out.iter_mut().zip(&self.cols) {
                *o = col.iter().map(|&(i, w)| row[i] * w).sum();
            }
        }
        for (out, row_taps) in on_leak.data.chunks_exact_mut(lw).zip(&self.rows) {
            out.fill(0.0);
            for &(j, w) in row_taps {
                for (o, &v) in out.iter_mut().zip(&between[j * lw..(j + 1) * lw]) {
                    *o += v * w;
                }
            }
        }
        seen.data.copy_from_slice(&src.data);
        for j in taps.y_range.clone() {
            for i in taps.x_range.clone() {
                seen.data[j * src.w + i] = taps.sample(on_leak, i, j);
            }
        }
    }
}

/// Warps `leak` onto the grid of `src` under `taps` into `warped` (zero where the leaked
/// picture does not cover the source), fits a tone curve (leaked level as a function of
/// source level: brightness, contrast, gamma), and writes leaked minus fitted source into
/// `resid` (zero where the source is not visible).
fn warp_and_fit(src: &Gray, leak: &Gray, pw: &PairWarp, warped: &mut Gray, resid: &mut [f32]) {
    let (xr, yr) = (pw.warp.x_range(), pw.warp.y_range());
    warped.data.fill(0.0);
    resid.fill(0.0);
    if xr.is_empty() || yr.is_empty() {
        return;
    }
    match &pw.warp {
        Warp::Axis(taps) => {
            for j in yr.clone() {
                let (y0, y1, fy) = taps.rows[j];
                let (r0, r1) = (&leak.data[y0 * leak.w..][..leak.w], &leak.data[y1 * leak.w..][..leak.w]);
                let out = &mut warped.data[j * src.w..][xr.clone()];
                for (o, &(x0, x1, fx)) in out.iter_mut().zip(&taps.cols[xr.clone()]) {
                    *o = register::bilinear(r0, r1, x0, x1, fx, fy);
                }
            }
        }
        Warp::Projective(map) => {
            for j in yr.clone() {
                for i in xr.clone() {
                    let p = j * src.w + i;
                    warped.data[p] = map.sample_at(&leak.data, p).unwrap_or(0.0);
                }
            }
        }
    }
    let usable = &pw.usable;
    // Tone curve: mean leaked level per source level. Four interleaved histograms, so
    // that neighbouring pixels of one level do not wait on each other's sums.
    let mut sum = [[0f64; 256]; 4];
    let mut cnt = [[0u32; 256]; 4];
    for j in yr.clone() {
        let s_row = &src.data[j * src.w..][xr.clone()];
        let w_row = &warped.data[j * src.w..][xr.clone()];
        let u_row = &usable[j * src.w..][xr.clone()];
        for (n, ((&s, &v), _)) in s_row.iter().zip(w_row).zip(u_row).enumerate().filter(|(_, (_, &u))| u) {
            let b = (s.clamp(0.0, 255.0) + 0.5) as usize;
            sum[n & 3][b] += f64::from(v);
            cnt[n & 3][b] += 1;
        }
    }
    let mut lut = [f64::NAN; 256];
    for b in 0..256 {
        let c: u32 = cnt.iter().map(|c| c[b]).sum();
        if c >= 3 {
            lut[b] = sum.iter().map(|s| s[b]).sum::<f64>() / f64::from(c);
        }
    }
    let mut known = [0usize; 256];
    let mut n_known = 0;
    for b in (0..256).filter(|&b| !lut[b].is_nan()) {
        known[n_known] = b;
        n_known += 1;
    }
    let known = &known[..n_known];
    if known.is_empty() {
        return;
    }
    for b in 0..256 {
        if lut[b].is_nan() {
            let hi = known.iter().position(|&k| k > b);
            lut[b] = match hi {
                Some(0) => lut[known[0]] + (b as f64 - known[0] as f64),
                None => lut[*known.last().unwrap()] + (b as f64 - *known.last().unwrap() as f64),
                Some(p) => {
                    let (a, c) = (known[p - 1], known[p]);
                    lut[a] + (lut[c] - lut[a]) * (b - a) as f64 / (c - a) as f64
                }
            };
        }
    }
    let mut smooth = [0f64; 256];
    for (b, out) in smooth.iter_mut().enumerate() {
        let window = &lut[b.saturating_sub(3)..(b + 4).min(256)];
        *out = window.iter().sum::<f64>() / window.len() as f64;
    }
    let fit: [f32; 256] = std::array::from_fn(|b| smooth[b] as f32);
    for j in yr {
        let s_row = &src.data[j * src.w..][xr.clone()];
        let w_row = &warped.data[j * src.w..][xr.clone()];
        let u_row = &usable[j * src.w..][xr.clone()];
        for (((r, &s), &v), _) in
            resid[j * src.w..][xr.clone()].iter_mut().zip(s_row).zip(w_row).zip(u_row).filter(|(_, &u)| u)
        {
            let s = s.clamp(0.0, 255.0);
            let b0 = (s as usize).min(254);
            let f = s - b0 as f32;
            *r = v - (fit[b0] + (fit[b0 + 1] - fit[b0]) * f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view_of(src: &Gray, leak_size: (usize, usize), g: &Geometry) -> (Gray, WarpTaps) {
        let taps = WarpTaps::new((src.w, src.h), leak_size, g);
        let view = LeakView::new((src.w, src.h), leak_size, g);
        let (mut between, mut on_leak, mut seen) =
            (vec![0f32; src.h * leak_size.0], Gray::new(leak_size.0, leak_size.1), Gray::new(src.w, src.h));
        view.apply(src, &taps, &mut between, &mut on_leak, &mut seen);
        (seen, taps)
    }

    #[test]
    fn leak_view_keeps_what_the_leak_can_show_and_drops_what_it_cannot() {
        let (w, h) = (96, 64);
        let g = Geometry { sx: 0.5, sy: 0.5, tx: 3.0, ty: 2.0 };
        let leak_size = (54, 36);
        // A gentle ramp survives halving: the view reproduces it away from the rim.
        let mut ramp = Gray::new(w, h);
        for (n, v) in ramp.data.iter_mut().enumerate() {
            *v = 40.0 + 0.5 * (n % w) as f32 + 0.8 * (n / w) as f32;
        }
        let (seen, taps) = view_of(&ramp, leak_size, &g);
        for j in taps.y_range.start + 3..taps.y_range.end - 3 {
            for i in taps.x_range.start + 3..taps.x_range.end - 3 {
                let (a, b) = (seen.data[j * w + i], ramp.data[j * w + i]);
                assert!((a - b).abs() < 0.5, "ramp at {i},{j}: {a} vs {b}");
            }
        }
        // A one-pixel checkerboard cannot pass through pixels twice as large: the view is flat.
        let mut checker = Gray::new(w, h);
        for (n, v) in checker.data.iter_mut().enumerate() {
            *v = if (n % w + n / w) % 2 == 0 { 100.0 } else { 140.0 };
        }
        let (seen, taps) = view_of(&checker, leak_size, &g);
        for j in taps.y_range.start + 3..taps.y_range.end - 3 {
            for i in taps.x_range.start + 3..taps.x_range.end - 3 {
                assert!(
                    (seen.data[j * w + i] - 120.0).abs() < 1.0,
                    "checker at {i},{j}: {}",
                    seen.data[j * w + i]
                );
            }
        }
    }
}
