//! Tracing a leaked video file: informed (with the source) or blind.

use std::ops::ControlFlow;
use std::path::Path;

use rayon::prelude::*;
use tracemark_core::grid::Grid;
use tracemark_core::layout::{PILOT, TILE_BLOCKS, TILE_PX};
use tracemark_core::pipeline::{Progress, ProgressFn};
use tracemark_core::video::VideoReader;
use tracemark_core::{Error as CoreError, Frame, MasterKey};

use crate::detect::{DetectScratch, Detector, SlotSums};
use crate::fft2d::{cross_correlate, Fft2d};
use crate::image::Gray;
use crate::register::{self, Geometry};
use crate::verdict::{decide, Candidate, Decision};
use crate::{Error, Result};

/// Settings of a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// Family-wise false-positive probability at or below which an export is named.
    pub threshold: f64,
    /// Read at most this many leaked frames (0 = all).
    pub max_frames: usize,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self { threshold: 1e-6, max_frames: 0 }
    }
}

impl TraceConfig {
    /// Defaults: threshold 1e-6, all frames.
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
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(Error::InvalidConfig(format!("threshold {} must be in (0, 1)", self.threshold)));
        }
        Ok(())
    }
}

/// Which way the geometry was found.
#[derive(Clone, Debug, PartialEq)]
pub enum Registration {
    /// Against the source: where the source sits in the leaked picture and in time.
    Informed {
        /// Source → leaked mapping in full-resolution pixels.
        geometry: Geometry,
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
        /// Number of (scale, shift) hypotheses searched.
        hypotheses: f64,
    },
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

fn open(path: &Path) -> Result<VideoReader> {
    VideoReader::open(path).map_err(Error::Video)
}

fn seconds(pts: Option<i64>, tb: (i32, i32)) -> f64 {
    pts.unwrap_or(0) as f64 * f64::from(tb.0) / f64::from(tb.1)
}

fn tick(progress: &mut ProgressFn<'_>, done: u64, total: Option<u64>) -> Result<()> {
    match progress(Progress { done, total }) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(Error::Video(CoreError::Cancelled)),
    }
}

/// Size of a thumbnail of a `w` x `h` picture at `factor` pictures pixels per thumbnail pixel.
fn thumb_size(w: usize, h: usize, factor: f64) -> (usize, usize) {
    (((w as f64 / factor).round() as usize).clamp(2, w), ((h as f64 / factor).round() as usize).clamp(2, h))
}

struct Decoded {
    thumbs: Vec<Gray>,
    times: Vec<f64>,
}

fn decode_thumbs(
    path: &Path,
    factor: f64,
    limit: usize,
    progress: &mut ProgressFn<'_>,
    done: &mut u64,
    total: Option<u64>,
) -> Result<Decoded> {
    let mut r = open(path)?;
    let (w, h) = (r.info().width, r.info().height);
    let tb = r.info().time_base;
    let (tw, th) = thumb_size(w, h, factor);
    let mut f = Frame::new(w, h);
    let mut out = Decoded { thumbs: Vec::new(), times: Vec::new() };
    let mut start = None;
    while (limit == 0 || out.thumbs.len() < limit) && r.read_frame(&mut f).map_err(Error::Video)? {
        out.thumbs.push(Gray::from_plane(&f.y, tw, th));
        // Times from the first frame: re-encoders usually reset a clip's start to zero.
        let t = seconds(f.pts, tb);
        out.times.push(t - *start.get_or_insert(t));
        *done += 1;
        tick(progress, *done, total)?;
    }
    Ok(out)
}

/// NCC of a leaked thumbnail mapped onto a source thumbnail, on every `step`-th pixel.
fn thumb_match(src: &Gray, leak: &Gray, g: &Geometry, step: usize) -> f64 {
    register::ncc_at(src, leak, g, step).value()
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
    let total = Some(src_info.frames_estimate.unwrap_or(0) + 2 * leak_info.frames_estimate.unwrap_or(0));
    let mut done = 0u64;
    // Thumbnails of both at one scale: ~128 source pixels across.
    let factor = (src_info.width as f64 / 128.0).max(1.0);
    let leak = decode_thumbs(leaked, factor, config.max_frames, progress, &mut done, total)?;
    let src = decode_thumbs(source, factor, 0, progress, &mut done, total)?;
    if leak.thumbs.is_empty() || src.thumbs.is_empty() {
        return Err(Error::NoFrames);
    }

    // 1. Geometry from one pair of frames: the leaked middle frame against the source frame
    // at the same time, or else the source frame that looks most like it.
    let mid = leak.thumbs.len() / 2;
    let same_time = nearest(&src.times, leak.times[mid]);
    let whole = |a: &Gray, b: &Gray| {
        let g = Geometry { sx: b.w as f64 / a.w as f64, sy: b.h as f64 / a.h as f64, tx: 0.0, ty: 0.0 };
        thumb_match(a, b, &g, 2)
    };
    let look_alike = (0..src.thumbs.len())
        .max_by(|&a, &b| {
            whole(&src.thumbs[a], &leak.thumbs[mid]).total_cmp(&whole(&src.thumbs[b], &leak.thumbs[mid]))
        })
        .unwrap_or(0);
    // On a panning shot a time offset and a translation explain the picture equally well,
    // but only the true pairing lines up the mark. Both pairings are registered; when they
    // disagree materially both are read and the one whose pilot is stronger is kept (the
    // pilot's probability then counts both; the payload chips played no part in the choice).
    let register_pair = |pair: usize| {
        register::coarse(&src.thumbs[pair], &leak.thumbs[mid], 3)
            .into_iter()
            .map(|(g, _)| register::refine(&src.thumbs[pair], &leak.thumbs[mid], g, 1))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    };
    let mut pairings: Vec<Geometry> = Vec::new();
    for pair in [same_time, look_alike] {
        if let Some((g, _)) = register_pair(pair) {
            let differs = |h: &Geometry| {
                (h.sx - g.sx).abs() > 0.005 * g.sx || (h.tx - g.tx).abs() > 0.5 || (h.ty - g.ty).abs() > 0.5
            };
            if pairings.iter().all(differs) {
                pairings.push(g);
            }
        }
    }
    if pairings.is_empty() {
        return Err(Error::Registration("the leaked clip does not overlap the source at any scale".into()));
    }
    let ctx = InformedContext {
        detector: &detector,
        src: &src,
        leak: &leak,
        factor,
        src_info: &src_info,
        leak_info: &leak_info,
        source,
        leaked,
        mid,
    };
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
            geometry,
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
    geometry: Geometry,
    refined_ncc: Option<f64>,
    offset: f64,
}

/// Everything an informed reading needs besides the hypothesis.
struct InformedContext<'a> {
    detector: &'a Detector,
    src: &'a Decoded,
    leak: &'a Decoded,
    factor: f64,
    src_info: &'a tracemark_core::video::VideoInfo,
    leak_info: &'a tracemark_core::video::VideoInfo,
    source: &'a Path,
    leaked: &'a Path,
    mid: usize,
}

impl InformedContext<'_> {
    /// Aligns time under the thumbnail geometry `g_thumb`, then streams both files,
    /// refines the geometry on the first pair at full detail, subtracts the registered
    /// source and accumulates.
    fn read(
        &self,
        g_thumb: &Geometry,
        progress: &mut ProgressFn<'_>,
        done: &mut u64,
        total: Option<u64>,
    ) -> Result<Reading> {
        let (src, leak) = (self.src, self.leak);
        let probe: Vec<usize> = (0..leak.thumbs.len()).step_by((leak.thumbs.len() / 24).max(1)).collect();
        let best_match = |k: usize, range: std::ops::Range<usize>, step: usize| {
            range.max_by(|&a, &b| {
                thumb_match(&src.thumbs[a], &leak.thumbs[k], g_thumb, step).total_cmp(&thumb_match(
                    &src.thumbs[b],
                    &leak.thumbs[k],
                    g_thumb,
                    step,
                ))
            })
        };
        let mut offsets: Vec<f64> = probe
            .iter()
            .map(|&k| src.times[best_match(k, 0..src.thumbs.len(), 2).unwrap_or(0)] - leak.times[k])
            .collect();
        offsets.sort_by(f64::total_cmp);
        let offset = offsets[offsets.len() / 2];
        let frame_dt = if src.times.len() > 1 {
            (src.times[src.times.len() - 1] - src.times[0]) / (src.times.len() - 1) as f64
        } else {
            0.04
        };
        let matches: Vec<Option<usize>> = (0..leak.thumbs.len())
            .map(|k| {
                let t = leak.times[k] + offset;
                let lo = src.times.partition_point(|&s| s < t - 2.5 * frame_dt);
                let hi = src.times.partition_point(|&s| s <= t + 2.5 * frame_dt);
                best_match(k, lo..hi, 1)
            })
            .collect();

        let grid = Grid::for_frame(self.src_info.width, self.src_info.height);
        let mut geometry = g_thumb.rescaled(1.0 / self.factor, 1.0 / self.factor);
        let mut refined_ncc = None;
        let leak_factor = (geometry.sx.min(geometry.sy) * grid.scale).floor().max(1.0);
        let (lw, lh) = thumb_size(self.leak_info.width, self.leak_info.height, leak_factor);
        let mut sr = open(self.source)?;
        let mut lr = open(self.leaked)?;
        let mut sf = Frame::new(self.src_info.width, self.src_info.height);
        let mut lf = Frame::new(self.leak_info.width, self.leak_info.height);
        let mut src_index: Option<usize> = None;
        let mut sums = SlotSums::default();
        let mut per_second: Vec<(f64, SlotSums)> = Vec::new();
        let mut example = None;
        let batch_len = 2 * rayon::current_num_threads().max(1);
        let mut pairs: Vec<(usize, Gray, Gray)> = Vec::with_capacity(batch_len);
        let mut merge = |pairs: &mut Vec<(usize, Gray, Gray)>, g_work: &Geometry| {
            for (k, fs, ex) in read_pairs(self.detector, &grid, g_work, pairs, self.mid) {
                sums.merge(&fs);
                let sec = leak.times[k].floor();
                if per_second.last().is_none_or(|p| p.0 != sec) {
                    per_second.push((sec, SlotSums::default()));
                }
                per_second.last_mut().expect("pushed above").1.merge(&fs);
                if ex.is_some() {
                    example = ex;
                }
            }
            pairs.clear();
        };
        for (k, m) in matches.iter().enumerate() {
            if !lr.read_frame(&mut lf).map_err(Error::Video)? {
                break;
            }
            *done += 1;
            tick(progress, *done, total)?;
            let Some(m) = *m else { continue };
            if src_index.is_some_and(|s| s > m) {
                continue; // time ran backwards: skip rather than re-decode
            }
            while src_index != Some(m) {
                if !sr.read_frame(&mut sf).map_err(Error::Video)? {
                    break;
                }
                src_index = Some(src_index.map_or(0, |s| s + 1));
            }
            if src_index != Some(m) {
                break;
            }
            let src_work = Gray::from_plane(&sf.y, grid.work_w, grid.work_h);
            let leak_img = Gray::from_plane(&lf.y, lw, lh);
            if refined_ncc.is_none() {
                let g_work = geometry.rescaled(grid.scale, leak_factor);
                let (g, v) = register::refine_robust(&src_work, &leak_img, g_work, 2);
                geometry = Geometry {
                    sx: g.sx * leak_factor / grid.scale,
                    sy: g.sy * leak_factor / grid.scale,
                    tx: g.tx * leak_factor,
                    ty: g.ty * leak_factor,
                };
                refined_ncc = Some(v);
            }
            pairs.push((k, src_work, leak_img));
            if pairs.len() == batch_len {
                merge(&mut pairs, &geometry.rescaled(grid.scale, leak_factor));
            }
        }
        merge(&mut pairs, &geometry.rescaled(grid.scale, leak_factor));
        Ok(Reading { sums, per_second, example, geometry, refined_ncc, offset })
    }
}

/// One leaked frame's sums, with the registered pair when it is the one kept for the report.
type PairSums = (usize, SlotSums, Option<(Gray, Gray)>);

/// Reads a batch of registered (source, leaked) pairs in parallel: each pair's slot sums,
/// and for frame `keep` the registered pair itself (for the report).
fn read_pairs(
    detector: &Detector,
    grid: &Grid,
    g_work: &Geometry,
    pairs: &[(usize, Gray, Gray)],
    keep: usize,
) -> Vec<PairSums> {
    pairs
        .par_iter()
        .map_init(
            || (DetectScratch::default(), vec![0f32; grid.work_w * grid.work_h]),
            |(scratch, resid), (k, src, leak)| {
                let warped = warp_and_fit(src, leak, g_work, resid);
                let mut fs = SlotSums::default();
                detector.accumulate(resid, &src.data, grid.work_w, grid.work_h, (0, 0), &mut fs, scratch);
                detector.end_frame(&mut fs);
                (*k, fs, (*k == keep).then(|| (warped, src.clone())))
            },
        )
        .collect()
}

fn nearest(times: &[f64], t: f64) -> usize {
    (0..times.len()).min_by(|&a, &b| (times[a] - t).abs().total_cmp(&(times[b] - t).abs())).unwrap_or(0)
}

/// Warps `leak` onto the grid of `src` under `g`, fits a tone curve (leaked level as a
/// function of source level: brightness, contrast, gamma), and writes leaked minus fitted
/// source into `resid` (zero where the source is not visible). Returns the warped image.
fn warp_and_fit(src: &Gray, leak: &Gray, g: &Geometry, resid: &mut [f32]) -> Gray {
    let mut warped = Gray::new(src.w, src.h);
    let mut valid = vec![false; src.w * src.h];
    let (mut sum, mut cnt) = ([0f64; 256], [0f64; 256]);
    for j in 0..src.h {
        for i in 0..src.w {
            let (x, y) = g.map(i as f64, j as f64);
            if let Some(v) = leak.sample(x, y) {
                let idx = j * src.w + i;
                warped.data[idx] = v;
                valid[idx] = true;
                let b = src.data[idx].round().clamp(0.0, 255.0) as usize;
                sum[b] += f64::from(v);
                cnt[b] += 1.0;
            }
        }
    }
    // Tone curve: mean leaked level per source level, filled and smoothed.
    let mut lut = [f64::NAN; 256];
    for b in 0..256 {
        if cnt[b] >= 3.0 {
            lut[b] = sum[b] / cnt[b];
        }
    }
    let known: Vec<usize> = (0..256).filter(|&b| !lut[b].is_nan()).collect();
    if known.is_empty() {
        resid.fill(0.0);
        return warped;
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
    for (idx, r) in resid.iter_mut().enumerate() {
        *r = if valid[idx] {
            let s = src.data[idx].clamp(0.0, 255.0);
            let b0 = (s as usize).min(254);
            let f = f64::from(s) - b0 as f64;
            let fit = smooth[b0] + (smooth[b0 + 1] - smooth[b0]) * f;
            warped.data[idx] - fit as f32
        } else {
            0.0
        };
    }
    warped
}

/// The pilot's reference tile in pixels: what a unit-mask mark's pilot looks like.
fn pilot_tile(key: &MasterKey) -> Vec<f32> {
    let layout = tracemark_core::layout::TileLayout::new(key);
    let patterns = layout.block_patterns(|slot| if slot.role == PILOT { 1.0 } else { 0.0 });
    let mut tile = vec![0f32; TILE_PX * TILE_PX];
    for (b, p) in patterns.iter().enumerate() {
        let (bx, by) = (b % TILE_BLOCKS, b / TILE_BLOCKS);
        for (y, row) in p.chunks_exact(8).enumerate() {
            tile[(by * 8 + y) * TILE_PX + bx * 8..][..8].copy_from_slice(row);
        }
    }
    tile
}

/// Whitened, locally normalised residual of one analysis image.
fn whiten(img: &Gray) -> Gray {
    let med = img.median3();
    let mut r = Gray::new(img.w, img.h);
    for (o, (a, b)) in r.data.iter_mut().zip(img.data.iter().zip(&med.data)) {
        *o = a - b;
    }
    // Local RMS over 9x9 windows via an integral image of squares.
    let (w, h) = (img.w, img.h);
    let mut integ = vec![0f64; (w + 1) * (h + 1)];
    for y in 0..h {
        let mut row = 0f64;
        for x in 0..w {
            row += f64::from(r.data[y * w + x]).powi(2);
            integ[(y + 1) * (w + 1) + x + 1] = integ[y * (w + 1) + x + 1] + row;
        }
    }
    let mut out = Gray::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let (x0, x1, y0, y1) = (x.saturating_sub(4), (x + 5).min(w), y.saturating_sub(4), (y + 5).min(h));
            let s = integ[y1 * (w + 1) + x1] - integ[y0 * (w + 1) + x1] - integ[y1 * (w + 1) + x0]
                + integ[y0 * (w + 1) + x0];
            let n = ((x1 - x0) * (y1 - y0)) as f64;
            // Differences of an integral image can dip below zero by rounding.
            let rms = (s / n).max(0.0).sqrt() as f32;
            out.data[y * w + x] = r.data[y * w + x] / (rms + 1.0);
        }
    }
    out
}

/// Resamples `img` so one output pixel is `scale` input pixels, starting `offset` output
/// pixels in (sub-pixel shifts).
fn resample(img: &Gray, scale: f64, offset: (f64, f64)) -> Gray {
    let (w, h) = (
        ((img.w as f64 / scale) - offset.0).floor().max(1.0) as usize,
        ((img.h as f64 / scale) - offset.1).floor().max(1.0) as usize,
    );
    let mut out = Gray::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let u = ((x as f64 + offset.0 + 0.5) * scale - 0.5) as f32;
            let v = ((y as f64 + offset.1 + 0.5) * scale - 0.5) as f32;
            out.data[y * w + x] = img.sample(u, v).unwrap_or(0.0);
        }
    }
    out
}

fn fold(img: &Gray) -> Vec<f32> {
    let mut f = vec![0f32; TILE_PX * TILE_PX];
    for y in 0..img.h {
        for x in 0..img.w {
            f[(y % TILE_PX) * TILE_PX + x % TILE_PX] += img.data[y * img.w + x];
        }
    }
    f
}

/// One way of looking at the leaked picture in blind mode: resampled to square pixels at a
/// height where a mark's 8x8 blocks are near their own size.
struct Analysis {
    /// Leaked pixels per analysis pixel, horizontally and vertically.
    factor: (f64, f64),
    /// Sum of the whitened frames.
    acc: Gray,
    /// Sum of the frames themselves: where the mark's mask put its energy.
    host: Gray,
}

/// The analysis grids worth trying for a `w` x `h` picture with sample aspect `sar`: the
/// picture itself up to 576 lines, 360 lines above that (HD sources are marked on a
/// 360-line grid), and both for pictures up to 800 lines (an SD source shown at 720p).
fn analyses(w: usize, h: usize, sar: f64) -> Vec<Analysis> {
    let mut heights = Vec::new();
    if h <= 800 {
        heights.push(h);
    }
    if h > tracemark_core::grid::MAX_NATIVE_HEIGHT {
        heights.push(tracemark_core::grid::HD_WORK_HEIGHT);
    }
    heights
        .into_iter()
        .map(|ah| {
            let fy = h as f64 / ah as f64;
            let aw = ((w as f64 * sar / fy).round() as usize).max(2);
            Analysis { factor: (w as f64 / aw as f64, fy), acc: Gray::new(aw, ah), host: Gray::new(aw, ah) }
        })
        .collect()
}

/// Resizes a plane to `w` x `h`: area averaging where it shrinks, bilinear where it grows.
fn resize(p: &tracemark_core::Plane, w: usize, h: usize) -> Gray {
    let (dw, dh) = (w.min(p.width()), h.min(p.height()));
    let down = Gray::from_plane(p, dw, dh);
    if (dw, dh) == (w, h) {
        return down;
    }
    let up = register::scaled(&down, w as f64 / dw as f64, h as f64 / dh as f64);
    debug_assert_eq!((up.w, up.h), (w, h));
    up
}

/// Searches the pilot's correlation peak over geometries: one FFT plan and its buffers,
/// reused for every hypothesis a thread tries.
struct PilotSearch {
    fft: Fft2d,
    tile: Vec<f32>,
    ba: Vec<rustfft::num_complex::Complex32>,
    bb: Vec<rustfft::num_complex::Complex32>,
    surface: Vec<f32>,
}

impl PilotSearch {
    fn new(key: &MasterKey) -> Self {
        Self {
            fft: Fft2d::new(TILE_PX, TILE_PX),
            tile: pilot_tile(key),
            ba: Vec::new(),
            bb: Vec::new(),
            surface: vec![0f32; TILE_PX * TILE_PX],
        }
    }

    /// Peak of the pilot correlation of `acc` resampled at `scale`: its z over the whole
    /// surface and the integer shift; `None` when the image is too small for a tile.
    fn peak(&mut self, acc: &Gray, scale: f64) -> Option<(f64, (usize, usize))> {
        let img = resample(acc, scale, (0.0, 0.0));
        if img.w < TILE_PX / 2 || img.h < TILE_PX / 2 {
            return None;
        }
        let folded = fold(&img);
        cross_correlate(
            &mut self.fft,
            &folded,
            &self.tile,
            false,
            &mut self.ba,
            &mut self.bb,
            &mut self.surface,
        );
        let n = self.surface.len() as f64;
        let mean = self.surface.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = self.surface.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
        let (i, v) = self
            .surface
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        Some(((f64::from(v) - mean) / var.sqrt().max(1e-12), (i % TILE_PX, i / TILE_PX)))
    }

    /// Sub-pixel refinement of a peak (parabola through the neighbours); call right after
    /// [`PilotSearch::peak`] for the same image and scale.
    fn subpixel(&self, (dx, dy): (usize, usize)) -> (f64, f64) {
        let at = |x: usize, y: usize| f64::from(self.surface[(y % TILE_PX) * TILE_PX + x % TILE_PX]);
        let para = |l: f64, c: f64, r: f64| {
            let d = l - 2.0 * c + r;
            if d.abs() > 1e-12 {
                (0.5 * (l - r) / d).clamp(-0.5, 0.5)
            } else {
                0.0
            }
        };
        (
            dx as f64 + para(at(dx + TILE_PX - 1, dy), at(dx, dy), at(dx + 1, dy)),
            dy as f64 + para(at(dx, dy + TILE_PX - 1), at(dx, dy), at(dx, dy + 1)),
        )
    }
}

/// Blind trace: no source. Averages the whitened leaked frames, searches the scale and
/// cyclic shift of the pilot, and reads the mark there.
pub fn trace_blind(
    key: &MasterKey,
    leaked: &Path,
    candidates: &[Candidate],
    config: &TraceConfig,
    progress: &mut ProgressFn<'_>,
) -> Result<TraceResult> {
    config.validate()?;
    let detector = Detector::new(key);
    let mut r = open(leaked)?;
    let info = r.info().clone();
    let total = info.frames_estimate;
    let sar = match info.sample_aspect_ratio {
        (n, d) if n > 0 && d > 0 => f64::from(n) / f64::from(d),
        _ => 1.0,
    };
    let mut views = analyses(info.width, info.height, sar);
    // Frames are decoded here and whitened in parallel, a batch at a time.
    let batch_len = 2 * rayon::current_num_threads().max(1);
    let mut batch: Vec<Frame> = (0..batch_len).map(|_| Frame::new(info.width, info.height)).collect();
    let mut frames = 0u64;
    let mut at_end = false;
    while !at_end {
        let mut n = 0;
        while n < batch_len {
            if (config.max_frames > 0 && frames + n as u64 >= config.max_frames as u64)
                || !r.read_frame(&mut batch[n]).map_err(Error::Video)?
            {
                at_end = true;
                break;
            }
            n += 1;
        }
        let sizes: Vec<(usize, usize)> = views.iter().map(|v| (v.acc.w, v.acc.h)).collect();
        let whitened: Vec<Vec<(Gray, Gray)>> = batch[..n]
            .par_iter()
            .map(|f| {
                sizes
                    .iter()
                    .map(|&(w, h)| {
                        let a = resize(&f.y, w, h);
                        (whiten(&a), a)
                    })
                    .collect()
            })
            .collect();
        for per_view in whitened {
            for (v, (wr, a)) in views.iter_mut().zip(per_view) {
                for (o, x) in v.acc.data.iter_mut().zip(&wr.data) {
                    *o += x;
                }
                for (o, x) in v.host.data.iter_mut().zip(&a.data) {
                    *o += x;
                }
            }
        }
        frames += n as u64;
        tick(progress, frames, total)?;
    }
    if frames == 0 {
        return Err(Error::NoFrames);
    }
    // Coarse scales: 1% steps anchored at 1 (an unscaled copy is the common case), from
    // 0.5 to 2 mark pixels per analysis pixel; then 0.1% steps around the best. Every
    // hypothesis is independent: search them in parallel, one FFT plan per thread.
    let search = |hyps: Vec<(usize, f64)>| -> (f64, usize, f64) {
        hyps.into_par_iter()
            .map_init(
                || PilotSearch::new(key),
                |sync, (vi, scale)| {
                    sync.peak(&views[vi].acc, scale).map_or((f64::MIN, vi, scale), |(z, _)| (z, vi, scale))
                },
            )
            .reduce(
                || (f64::MIN, 0, 1.0),
                |a, b| if b.0 > a.0 || (b.0 == a.0 && (b.1, b.2) < (a.1, a.2)) { b } else { a },
            )
    };
    let coarse: Vec<(usize, f64)> =
        (0..views.len()).flat_map(|vi| (-70..=70).map(move |k| (vi, 1.01f64.powi(k)))).collect();
    let mut hypotheses = coarse.len();
    let best = search(coarse);
    let fine: Vec<(usize, f64)> =
        (-10..=10).filter(|&k| k != 0).map(|k| (best.1, best.2 * (1.0 + 0.001 * f64::from(k)))).collect();
    hypotheses += fine.len();
    let best_fine = search(fine);
    let (_, vi, scale) = if best_fine.0 > best.0 { best_fine } else { best };
    let mut sync = PilotSearch::new(key);
    let acc = &views[vi].acc;
    let (_, peak) = sync.peak(acc, scale).expect("the best scale fits");
    let shift = sync.subpixel(peak);
    // Residual pixel p holds tile pixel (p - shift): start reading where that is a block
    // corner.
    let start = (shift.0.rem_euclid(8.0), shift.1.rem_euclid(8.0));
    let aligned = resample(acc, scale, start);
    let phase = (
        ((-(shift.0 - start.0)).rem_euclid(TILE_PX as f64).round() as usize) % TILE_PX,
        ((-(shift.1 - start.1)).rem_euclid(TILE_PX as f64).round() as usize) % TILE_PX,
    );
    // The mean picture, on the same grid, tells the mask where the mark is strong.
    let mut host = resample(&views[vi].host, scale, start);
    for v in host.data.iter_mut() {
        *v /= frames as f32;
    }
    let flat = host.data;
    let mut sums = SlotSums::default();
    detector.accumulate(
        &aligned.data,
        &flat,
        aligned.w,
        aligned.h,
        phase,
        &mut sums,
        &mut DetectScratch::default(),
    );
    sums.frames = frames;
    let hypotheses = (hypotheses * TILE_PX * TILE_PX) as f64;
    let decision = decide(&detector, &sums, candidates, hypotheses, config.threshold);
    Ok(TraceResult {
        decision,
        informed: false,
        frames_used: frames,
        registration: Registration::Blind { scale, analysis_factor: views[vi].factor.1, shift, hypotheses },
        threshold: config.threshold,
        per_second: Vec::new(),
        example_frames: None,
    })
}
