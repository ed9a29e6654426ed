//! Blind trace: no source. The mark's pilot is found by its own periodic structure.

use std::path::Path;

use rayon::prelude::*;
use tracemark_core::layout::{PILOT, TILE_BLOCKS, TILE_PX};
use tracemark_core::pipeline::ProgressFn;
use tracemark_core::{Frame, MasterKey};

use super::{open, tick, Registration, TraceConfig, TraceResult};
use crate::detect::{DetectScratch, Detector, SlotSums};
use crate::fft2d::{cross_correlate, Fft2d};
use crate::image::Gray;
use crate::register;
use crate::verdict::{decide, Candidate};
use crate::{Error, Result};

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

/// A mirror of the leaked picture relative to the mark: copies are flipped left-right
/// (most often) or upside down, and both at once is a half turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Mirror {
    /// Flipped left-right.
    pub(crate) horizontal: bool,
    /// Flipped upside down.
    pub(crate) vertical: bool,
}

impl Mirror {
    /// Every mirror the blind search tries, the unflipped picture first.
    const ALL: [Mirror; 4] = [
        Mirror { horizontal: false, vertical: false },
        Mirror { horizontal: true, vertical: false },
        Mirror { horizontal: false, vertical: true },
        Mirror { horizontal: true, vertical: true },
    ];

    fn is_identity(self) -> bool {
        !self.horizontal && !self.vertical
    }

    /// `img` flipped by this mirror (a copy; pixel-exact).
    fn apply(self, img: &Gray) -> Gray {
        let mut out = Gray::new(img.w, img.h);
        for y in 0..img.h {
            let sy = if self.vertical { img.h - 1 - y } else { y };
            for x in 0..img.w {
                let sx = if self.horizontal { img.w - 1 - x } else { x };
                out.data[y * img.w + x] = img.data[sy * img.w + sx];
            }
        }
        out
    }

    /// The folded tile of the mirrored picture, up to a cyclic shift: folding commutes
    /// with a flip once the flip is taken modulo the tile.
    fn reflect_folded(self, folded: &[f32], out: &mut [f32]) {
        for v in 0..TILE_PX {
            let sv = if self.vertical { (TILE_PX - v) % TILE_PX } else { v };
            for u in 0..TILE_PX {
                let su = if self.horizontal { (TILE_PX - u) % TILE_PX } else { u };
                out[v * TILE_PX + u] = folded[sv * TILE_PX + su];
            }
        }
    }
}

/// Searches the pilot's correlation peak over geometries: one FFT plan and its buffers,
/// reused for every hypothesis a thread tries.
struct PilotSearch {
    fft: Fft2d,
    tile: Vec<f32>,
    ba: Vec<rustfft::num_complex::Complex32>,
    bb: Vec<rustfft::num_complex::Complex32>,
    surface: Vec<f32>,
    reflected: Vec<f32>,
}

impl PilotSearch {
    fn new(key: &MasterKey) -> Self {
        Self {
            fft: Fft2d::new(TILE_PX, TILE_PX),
            tile: pilot_tile(key),
            ba: Vec::new(),
            bb: Vec::new(),
            surface: vec![0f32; TILE_PX * TILE_PX],
            reflected: vec![0f32; TILE_PX * TILE_PX],
        }
    }

    /// Best pilot peak of `acc` resampled at `scale` over the mirrors: its z, and the
    /// mirror. `None` when the image is too small for a tile.
    fn best_mirror(&mut self, acc: &Gray, scale: f64) -> Option<(f64, Mirror)> {
        let img = resample(acc, scale, (0.0, 0.0));
        if img.w < TILE_PX / 2 || img.h < TILE_PX / 2 {
            return None;
        }
        let folded = fold(&img);
        let mut best = (f64::MIN, Mirror::ALL[0]);
        for m in Mirror::ALL {
            let mut reflected = std::mem::take(&mut self.reflected);
            m.reflect_folded(&folded, &mut reflected);
            let (z, _) = self.correlate(&reflected);
            self.reflected = reflected;
            if z > best.0 {
                best = (z, m);
            }
        }
        Some(best)
    }

    /// Peak of the pilot correlation of `acc` resampled at `scale`: its z over the whole
    /// surface and the integer shift; `None` when the image is too small for a tile.
    fn peak(&mut self, acc: &Gray, scale: f64) -> Option<(f64, (usize, usize))> {
        let img = resample(acc, scale, (0.0, 0.0));
        if img.w < TILE_PX / 2 || img.h < TILE_PX / 2 {
            return None;
        }
        let folded = fold(&img);
        Some(self.correlate(&folded))
    }

    /// z and position of the pilot's cyclic correlation peak in a folded tile.
    fn correlate(&mut self, folded: &[f32]) -> (f64, (usize, usize)) {
        cross_correlate(
            &mut self.fft,
            folded,
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
        ((f64::from(v) - mean) / var.sqrt().max(1e-12), (i % TILE_PX, i / TILE_PX))
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
/// use tracemark_core::{MarkId, MasterKey};
/// use tracemark_extract::trace::{trace_blind, TraceConfig};
/// use tracemark_extract::{Candidate, Verdict};
/// let key = MasterKey::load("unit.key".as_ref())?;
/// let exports = [Candidate { mark_id: MarkId(0x9f3a), recipient: "channel-A".into() }];
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
    let acc = accumulate_blind(leaked, config, progress)?;
    trace_accumulated(key, &acc, candidates, config)
}

/// What a blind trace gathers from a leaked clip before it looks for any key: the whitened
/// frames summed on each analysis grid. Gathering does not depend on the key, so one
/// accumulation can be searched for several unit keys.
pub struct BlindAccumulation {
    views: Vec<Analysis>,
    frames: u64,
    /// Picture size of the leaked clip.
    size: (usize, usize),
}

impl BlindAccumulation {
    /// Frames summed.
    pub fn frames(&self) -> u64 {
        self.frames
    }
}

/// Decodes `leaked` and sums its whitened frames (the key-independent half of
/// [`trace_blind`]).
pub fn accumulate_blind(
    leaked: &Path,
    config: &TraceConfig,
    progress: &mut ProgressFn<'_>,
) -> Result<BlindAccumulation> {
    config.validate()?;
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
    Ok(BlindAccumulation { views, frames, size: (info.width, info.height) })
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
    let (views, frames, acc_size) = (&acc.views, acc.frames, acc.size);
    // Coarse scales: 1% steps anchored at 1 (an unscaled copy is the common case), from
    // 0.5 to 2 mark pixels per analysis pixel; then 0.1% steps around the best. Every
    // hypothesis is independent: search them in parallel, one FFT plan per thread.
    let search = |hyps: Vec<(usize, f64)>| -> (f64, usize, f64, Mirror) {
        hyps.into_par_iter()
            .map_init(
                || PilotSearch::new(key),
                |sync, (vi, scale)| {
                    sync.best_mirror(&views[vi].acc, scale)
                        .map_or((f64::MIN, vi, scale, Mirror::ALL[0]), |(z, m)| (z, vi, scale, m))
                },
            )
            .reduce(
                || (f64::MIN, 0, 1.0, Mirror::ALL[0]),
                |a, b| if b.0 > a.0 || (b.0 == a.0 && (b.1, b.2, b.3) < (a.1, a.2, a.3)) { b } else { a },
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
    let (_, vi, scale, mirror) = if best_fine.0 > best.0 { best_fine } else { best };
    // Read the mirrored copy the right way round: flipping the accumulated pictures is
    // exact, and the shift is then found afresh.
    let flipped;
    let view = if mirror.is_identity() {
        &views[vi]
    } else {
        flipped = Analysis {
            factor: views[vi].factor,
            acc: mirror.apply(&views[vi].acc),
            host: mirror.apply(&views[vi].host),
        };
        &flipped
    };
    let mut sync = PilotSearch::new(key);
    let acc = &view.acc;
    // Every scale of the search is too large for a picture this small to hold half a tile.
    let (_, peak) = sync.peak(acc, scale).ok_or(Error::TooSmall {
        width: acc_size.0,
        height: acc_size.1,
        min: BLIND_MIN_SIDE,
        what: "trace without the original (blind); pass --original",
    })?;
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
    let mut host = resample(&view.host, scale, start);
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
    let hypotheses = (hypotheses * Mirror::ALL.len() * TILE_PX * TILE_PX) as f64;
    let decision = decide(&detector, &sums, candidates, hypotheses, config.threshold);
    Ok(TraceResult {
        decision,
        informed: false,
        frames_used: frames,
        registration: Registration::Blind {
            scale,
            analysis_factor: view.factor.1,
            shift,
            hypotheses,
            mirrored: (mirror.horizontal, mirror.vertical),
        },
        threshold: config.threshold,
        per_second: Vec::new(),
        example_frames: None,
    })
}
