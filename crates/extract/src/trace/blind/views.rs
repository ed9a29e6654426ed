//! Ways of looking at the leaked picture: the analysis grids, and the windows where a
//! picture-in-picture may sit, searched and fitted to the inset.

use rayon::prelude::*;
use tracemark_core::layout::TILE_PX;

use super::pilot::{Cached, FoldCache, Mirror, Pilot, PilotSearch, ScaleSearch, Shape, ViewSet};
use super::sampling::{GridMap, Linear};
use super::{align_view, read_view};
use crate::detect::{local_noise, DetectScratch, Detector};
use crate::image::Gray;

/// One way of looking at the leaked picture in blind mode: resampled to square pixels at a
/// height where a mark's 8x8 blocks are near their own size.
#[derive(Clone)]
pub(super) struct Analysis {
    /// Leaked pixels per analysis pixel, horizontally and vertically.
    pub(super) factor: (f64, f64),
    /// Sum of the whitened frames.
    pub(super) acc: Gray,
    /// Sum of the frames themselves: where the mark's mask put its energy.
    pub(super) host: Gray,
    /// What the pilot search correlates: `acc` [`equalised`], or for a window that may
    /// hold a picture-in-picture `acc` itself ([`Analysis::unequalised`]); empty until
    /// the accumulation is finished.
    pub(super) sync: Gray,
    /// Where this view's pixel (0, 0) is in the whole analysis picture (it may be a window
    /// of it).
    pub(super) origin: (usize, usize),
}

impl Analysis {
    /// The `w` x `h` window of this view at (`x`, `y`).
    pub(super) fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Analysis {
        Analysis {
            factor: self.factor,
            acc: self.acc.crop(x, y, w, h),
            host: self.host.crop(x, y, w, h),
            sync: self.sync.crop(x, y, w, h),
            origin: (self.origin.0 + x, self.origin.1 + y),
        }
    }

    /// This view flipped by `mirror` (a copy).
    pub(super) fn flipped(&self, mirror: Mirror) -> Analysis {
        Analysis {
            factor: self.factor,
            acc: mirror.apply(&self.acc),
            host: mirror.apply(&self.host),
            sync: mirror.apply(&self.sync),
            origin: self.origin,
        }
    }

    /// This view with rows and columns swapped (a copy): searched with the mirrors, it
    /// reads copies turned a quarter. A square tile's lattice looks the same turned, so the
    /// turn cannot be seen from it and is searched like the flips.
    pub(super) fn transposed(&self) -> Analysis {
        Analysis {
            factor: (self.factor.1, self.factor.0),
            acc: self.acc.transposed(),
            host: self.host.transposed(),
            sync: self.sync.transposed(),
            origin: (self.origin.1, self.origin.0),
        }
    }

    /// Fills [`Analysis::sync`] once the frames are summed: the sums equalised
    /// ([`equalised`]).
    pub(super) fn finish(&mut self) {
        self.sync = equalised(&self.acc);
    }

    /// This view with the plain sums as what the pilot search correlates. For the windows
    /// that may hold a picture-in-picture: equalising a picture the mark covers only in
    /// part gives the unmarked rest (a studio set, quiet where the inset is busy) as much
    /// say as the inset (a 30% inset's pilot fell from the best window to none of the
    /// eight read).
    pub(super) fn unequalised(&self) -> Analysis {
        Analysis {
            factor: self.factor,
            acc: self.acc.clone(),
            host: self.host.clone(),
            sync: self.acc.clone(),
            origin: self.origin,
        }
    }
}

/// `acc` with every 8x8 block scaled to unit noise: divided by the root of the residual's
/// power around it ([`local_noise`]). The pilot search correlates this, not the plain sum:
/// unweighted, the loud blocks (texture that stands still and so adds up frame after
/// frame, an encoder's noise on detail) drown the quiet ones, where the mark may stand out
/// as well. Blocks on the view's own grid (the mark's blocks are near 8 pixels at every
/// scale searched); the partial blocks at the right and bottom take their neighbour's
/// scale, blocks with no residual around them stay zero. Only the search sees this: the
/// mark is read from `acc`, with the detector's own weights.
pub(super) fn equalised(acc: &Gray) -> Gray {
    let (w, h) = (acc.w, acc.h);
    let (bx, by) = (w / 8, h / 8);
    if bx == 0 || by == 0 {
        return acc.clone();
    }
    let power: Vec<f32> = (0..bx * by)
        .map(|b| {
            let (i, j) = (b % bx, b / bx);
            let rows = acc.data[j * 8 * w..].chunks(w).take(8);
            rows.map(|r| r[i * 8..i * 8 + 8].iter().map(|v| v * v).sum::<f32>()).sum::<f32>() / 64.0
        })
        .collect();
    let gains: Vec<f32> = (0..bx * by)
        .map(|b| {
            let noise = local_noise(&power, bx, by, (b % bx, b / bx));
            if noise > 0.0 {
                noise.sqrt().recip()
            } else {
                0.0
            }
        })
        .collect();
    let mut out = Gray::new(w, h);
    for (y, (o, a)) in out.data.chunks_exact_mut(w).zip(acc.data.chunks_exact(w)).enumerate() {
        let g = &gains[(y / 8).min(by - 1) * bx..][..bx];
        for (x, (o, &a)) in o.iter_mut().zip(a).enumerate() {
            *o = a * g[(x / 8).min(bx - 1)];
        }
    }
    out
}

/// The analysis grids worth trying for a `w` x `h` picture with sample aspect `sar`: the
/// picture itself up to 576 lines, 360 lines above that (HD sources are marked on a
/// 360-line grid), and both for pictures up to 800 lines (an SD source shown at 720p).
pub(super) fn analyses(w: usize, h: usize, sar: f64) -> Vec<Analysis> {
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
            Analysis {
                factor: (w as f64 / aw as f64, fy),
                acc: Gray::new(aw, ah),
                host: Gray::new(aw, ah),
                sync: Gray::default(),
                origin: (0, 0),
            }
        })
        .collect()
}

/// Windows of `view` where a picture-in-picture may sit: a third of the picture on each
/// axis, at steps of a sixth, the last flush with the far edge (an inset larger than that
/// is found by fitting the window to it, [`fit_window`]). Read alone, a small inset's mark
/// is not drowned by the rest of the picture.
pub(super) fn pip_windows(view: &Analysis) -> Vec<Analysis> {
    let (w, h) = (view.acc.w, view.acc.h);
    let (ww, wh) = (w / 3, h / 3);
    if ww < TILE_PX / 4 || wh < TILE_PX / 4 {
        return Vec::new();
    }
    // Evenly spaced from 0 to len - side, about half a side apart.
    let starts = |len: usize, side: usize| -> Vec<usize> {
        let n = ((len - side) as f64 / (side as f64 / 2.0)).round().max(1.0) as usize;
        (0..=n).map(|k| ((k * (len - side)) as f64 / n as f64).round() as usize).collect()
    };
    let mut out = Vec::new();
    for &y in &starts(h, wh) {
        for &x in &starts(w, ww) {
            out.push(view.crop(x, y, ww, wh));
        }
    }
    out
}

/// Windows whose best coarse hypothesis is refined and read ([`search_windows`]).
pub(super) const WINDOW_CANDIDATES: usize = 8;

/// The window search: every window at every coarse scale, folded by splatting (it costs
/// the window's pixels, not the grid's, which is ten times more for a mark shrunk to
/// 0.3); then the [`WINDOW_CANDIDATES`] windows with the highest peaks are each refined
/// ([`refine_window`]) and the one whose read has the strongest pilot is kept. A peak
/// over a third of the picture barely clears the noise of so many hypotheses; a read of
/// the window fitted to the inset stands well clear. Returns the fitted window (unflipped),
/// its scale and mirror, and the hypotheses tried; `None` when no window holds half a tile.
/// The coarse folds go through `cache`, when given, as folds of the windows' set.
pub(super) fn search_windows(
    detector: &Detector,
    pilot: &Pilot,
    windows: &[Analysis],
    cache: Option<(&FoldCache, ViewSet)>,
    parent: &Analysis,
    scales: &ScaleSearch,
    frames: u64,
) -> Option<(Analysis, f64, Mirror, usize)> {
    let coarse: Vec<(usize, f64)> =
        (0..windows.len()).flat_map(|wi| scales.coarse_scales().map(move |s| (wi, s))).collect();
    let mut tried = coarse.len();
    let mut peaks: Vec<(f64, usize, f64, Mirror)> = coarse
        .into_par_iter()
        .map_init(
            || PilotSearch::splatting(pilot),
            |sync, (wi, s)| {
                let cached = cache.map(|(cache, views)| Cached { cache, views, view: wi });
                let map = Linear::IDENTITY.scaled(s);
                let best = sync.best_mirror(&windows[wi].sync, map, scales.mirrors, cached);
                best.map_or((f64::MIN, wi, s, Mirror::ALL[0]), |(z, m)| (z, wi, s, m))
            },
        )
        .collect();
    // Highest first; ties in window and scale order, so the threads do not matter.
    peaks.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.total_cmp(&b.2)));
    let mut picked: Vec<(f64, usize, f64, Mirror)> = Vec::new();
    for p in peaks.into_iter().filter(|p| p.0 > f64::MIN) {
        if picked.iter().all(|q| q.1 != p.1) {
            picked.push(p);
            if picked.len() == WINDOW_CANDIDATES {
                break;
            }
        }
    }
    let mut best: Option<(f64, Analysis, f64, Mirror)> = None;
    for (_, wi, s, m) in picked {
        let (z, window, scale, mirror, n) =
            refine_window(detector, pilot, &windows[wi], parent, scales, (s, m), frames);
        tried += n;
        if best.as_ref().is_none_or(|b| z > b.0) {
            best = Some((z, window, scale, mirror));
        }
    }
    best.map(|(_, window, scale, mirror)| (window, scale, mirror, tried))
}

/// Refines one window's coarse hypothesis (`scale`, `mirror`): fine scales (resampled,
/// which places the peak more precisely than splatting), the window fitted to the inset
/// ([`fit_window`]), and the scale chosen again by the read's own pilot (on an inset a few
/// hundred pixels wide a tenth of a percent moves its far edge a pixel). Returns the read's
/// pilot z, the fitted window, its scale and mirror, and the hypotheses tried.
pub(super) fn refine_window(
    detector: &Detector,
    pilot: &Pilot,
    window: &Analysis,
    parent: &Analysis,
    scales: &ScaleSearch,
    (scale, mirror): (f64, Mirror),
    frames: u64,
) -> (f64, Analysis, f64, Mirror, usize) {
    let identity = [vec![Shape::PLAIN]];
    let fine: Vec<Hyp> = scales.fine_scales(scale).map(|s| (0, 0, s)).collect();
    let mut tried = fine.len();
    let best_fine =
        best_hypothesis(pilot, std::slice::from_ref(window), &identity, fine, scales.mirrors, None);
    let (scale, mirror) =
        if best_fine.0 > f64::MIN { (best_fine.1 .2, best_fine.2) } else { (scale, mirror) };
    let map = Linear::IDENTITY.scaled(scale);
    let (fitted, n) = fit_window(detector, pilot, parent, window, (map, mirror), frames);
    tried += n;
    let flipped = if mirror.is_identity() { fitted.clone() } else { fitted.flipped(mirror) };
    let shape = Linear::IDENTITY.mirrored(mirror);
    let half = scales.fine_half / 2;
    let reads: Vec<f64> = (-half..=half).map(|k| scale * (1.0 + scales.fine_step * f64::from(k))).collect();
    tried += reads.len();
    let (z, scale) = reads
        .into_par_iter()
        .map_init(
            || PilotSearch::new(pilot),
            |sync, s| {
                let z = read_view(detector, sync, &flipped, shape.scaled(s), frames)
                    .map_or(f64::MIN, |(sums, _)| detector.pilot_z(&sums));
                (z, s)
            },
        )
        .reduce(|| (f64::MIN, scale), |a, b| if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) { b } else { a });
    (z, fitted, scale, mirror, tried)
}

/// A (view, shape, scale) hypothesis of the pilot search.
pub(super) type Hyp = (usize, usize, f64);

/// The hypothesis whose best mirror has the highest pilot peak: its z, itself, the
/// mirror ([`ranked_hypotheses`]' first).
pub(super) fn best_hypothesis(
    pilot: &Pilot,
    views: &[Analysis],
    shapes: &[Vec<Shape>],
    hyps: Vec<Hyp>,
    mirrors: &[Mirror],
    cache: Option<(&FoldCache, ViewSet)>,
) -> (f64, Hyp, Mirror) {
    let ranked = ranked_hypotheses(pilot, views, shapes, hyps, mirrors, cache);
    ranked.into_iter().next().unwrap_or((f64::MIN, (0, 0, 1.0), Mirror::ALL[0]))
}

/// Every hypothesis with its best mirror's pilot peak, highest first. Every hypothesis is
/// independent: they are tried in parallel, one FFT plan per thread; ties keep the order
/// given, so the result does not depend on the threads. Folds go through `cache`, when
/// given, as folds of `views`' set.
pub(super) fn ranked_hypotheses(
    pilot: &Pilot,
    views: &[Analysis],
    shapes: &[Vec<Shape>],
    hyps: Vec<Hyp>,
    mirrors: &[Mirror],
    cache: Option<(&FoldCache, ViewSet)>,
) -> Vec<(f64, Hyp, Mirror)> {
    let mut each = ranked_hypotheses_each(std::slice::from_ref(pilot), views, shapes, hyps, mirrors, cache);
    each.pop().unwrap_or_default()
}

/// [`ranked_hypotheses`] for several templates at once, one ranking each (ties in the
/// order given): every hypothesis is folded once and correlated with each template.
pub(super) fn ranked_hypotheses_each(
    pilots: &[Pilot],
    views: &[Analysis],
    shapes: &[Vec<Shape>],
    hyps: Vec<Hyp>,
    mirrors: &[Mirror],
    cache: Option<(&FoldCache, ViewSet)>,
) -> Vec<Vec<(f64, Hyp, Mirror)>> {
    let Some(first) = pilots.first() else { return Vec::new() };
    let peaks: Vec<Vec<(f64, Mirror)>> = hyps
        .par_iter()
        .map_init(
            || PilotSearch::new(first),
            |sync, &(vi, si, scale)| {
                let cached = cache.map(|(cache, views)| Cached { cache, views, view: vi });
                let map = shapes[vi][si].map.scaled(scale);
                sync.best_mirror_each(&views[vi].sync, map, mirrors, pilots, cached)
            },
        )
        .collect();
    (0..pilots.len())
        .map(|k| {
            let mut ranked: Vec<(f64, Hyp, Mirror)> = hyps
                .iter()
                .zip(&peaks)
                .map(|(&hyp, p)| p.get(k).map_or((f64::MIN, hyp, Mirror::ALL[0]), |&(z, m)| (z, hyp, m)))
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
            ranked
        })
        .collect()
}

/// The first `n` of `ranked` that are distinct peaks: a hypothesis of the same view,
/// shape and mirror as one already taken, within `step` of its scale (relative), is the
/// same peak seen from the next coarse scale.
pub(super) fn distinct_peaks(ranked: &[(f64, Hyp, Mirror)], n: usize, step: f64) -> Vec<(f64, Hyp, Mirror)> {
    let mut out: Vec<(f64, Hyp, Mirror)> = Vec::with_capacity(n);
    for &(z, (vi, si, s), m) in ranked {
        if out.len() == n || z == f64::MIN {
            break;
        }
        let same = out
            .iter()
            .any(|&(_, (v, h, t), mm)| v == vi && h == si && mm == m && (s / t - 1.0).abs() <= step * 1.5);
        if !same {
            out.push((z, (vi, si, s), m));
        }
    }
    out
}

/// Fits `window` (a crop of `parent`) to the picture-in-picture it holds: the window grown
/// by half its size on every side is read under `map` and `mirror` block by block, pilot
/// slots only ([`Detector::pilot_blocks`]), and the rectangle of blocks whose pilot
/// statistic is highest becomes the window. Only the pilot takes part, so the codeword
/// read there afterwards is as unbiased as anywhere. Returns the window and how many
/// rectangles were tried (each a hypothesis of the search).
pub(super) fn fit_window(
    detector: &Detector,
    pilot: &Pilot,
    parent: &Analysis,
    window: &Analysis,
    (map, mirror): (Linear, Mirror),
    frames: u64,
) -> (Analysis, usize) {
    let (pw, ph) = (parent.acc.w, parent.acc.h);
    let (x0, y0) = (window.origin.0 - parent.origin.0, window.origin.1 - parent.origin.1);
    let (gx, gy) = (window.acc.w / 2, window.acc.h / 2);
    let grown = [
        x0.saturating_sub(gx),
        y0.saturating_sub(gy),
        (x0 + window.acc.w + gx).min(pw),
        (y0 + window.acc.h + gy).min(ph),
    ];
    let crop = |r: [usize; 4]| parent.crop(r[0], r[1], r[2] - r[0], r[3] - r[1]);
    let mut view = crop(grown);
    if !mirror.is_identity() {
        view = view.flipped(mirror);
    }
    let map = map.mirrored(mirror);
    let Some(aligned) = align_view(&mut PilotSearch::new(pilot), &view, map, frames) else {
        return (crop([x0, y0, x0 + window.acc.w, y0 + window.acc.h]), 1);
    };
    let mut blocks = Vec::new();
    detector.pilot_blocks(
        &aligned.resid.data,
        &aligned.host.data,
        aligned.resid.w,
        aligned.resid.h,
        aligned.phase,
        &mut DetectScratch::default(),
        &mut blocks,
    );
    let (bx, by) = (aligned.resid.w / 8, aligned.resid.h / 8);
    let Some(([i0, j0, i1, j1], tried)) = best_block_rectangle(&blocks, bx, by) else {
        return (crop([x0, y0, x0 + window.acc.w, y0 + window.acc.h]), 1);
    };
    // Back to the (flipped) view's pixels through the grid map, then to the parent's.
    let g = GridMap::new(&view.acc, map, aligned.start);
    let corner = |i: usize, j: usize| {
        let (u, v) = g.along(g.row(8 * j), 8 * i);
        (f64::from(u), f64::from(v))
    };
    let ((ua, va), (ub, vb)) = (corner(i0, j0), corner(i1, j1));
    let (vw, vh) = (view.acc.w as f64, view.acc.h as f64);
    let (mut xa, mut xb) = (ua.min(ub).clamp(0.0, vw), ua.max(ub).clamp(0.0, vw));
    let (mut ya, mut yb) = (va.min(vb).clamp(0.0, vh), va.max(vb).clamp(0.0, vh));
    if mirror.horizontal {
        (xa, xb) = (vw - xb, vw - xa);
    }
    if mirror.vertical {
        (ya, yb) = (vh - yb, vh - ya);
    }
    let r = [
        grown[0] + xa.round() as usize,
        grown[1] + ya.round() as usize,
        grown[0] + (xb.round() as usize).max(xa.round() as usize + 1),
        grown[1] + (yb.round() as usize).max(ya.round() as usize + 1),
    ];
    (crop([r[0], r[1], r[2].min(pw), r[3].min(ph)]), tried)
}

/// The rectangle of blocks (`[i0, j0, i1, j1)`, from per-block `[num, energy]`, `bx`
/// across) whose `sum num / sqrt(sum energy)` is highest, at least [`FIT_MIN_BLOCKS`] on
/// each side, its edges on a grid of at most [`FIT_EDGES`] positions per axis; and how many
/// rectangles were tried.
pub(super) fn best_block_rectangle(blocks: &[[f64; 2]], bx: usize, by: usize) -> Option<([usize; 4], usize)> {
    if bx < FIT_MIN_BLOCKS || by < FIT_MIN_BLOCKS {
        return None;
    }
    // Prefix sums with a zero row and column.
    let (pw, ph) = (bx + 1, by + 1);
    let mut pre = vec![[0f64; 2]; pw * ph];
    for j in 0..by {
        for i in 0..bx {
            for k in 0..2 {
                pre[(j + 1) * pw + i + 1][k] =
                    blocks[j * bx + i][k] + pre[j * pw + i + 1][k] + pre[(j + 1) * pw + i][k]
                        - pre[j * pw + i][k];
            }
        }
    }
    let edges = |n: usize| -> Vec<usize> {
        let step = n.div_ceil(FIT_EDGES).max(1);
        let mut e: Vec<usize> = (0..n).step_by(step).collect();
        e.push(n);
        e
    };
    let (ex, ey) = (edges(bx), edges(by));
    let sum = |k: usize, [i0, j0, i1, j1]: [usize; 4]| {
        pre[j1 * pw + i1][k] - pre[j0 * pw + i1][k] - pre[j1 * pw + i0][k] + pre[j0 * pw + i0][k]
    };
    let (mut best, mut tried) = (None::<(f64, [usize; 4])>, 0);
    for (a, &j0) in ey.iter().enumerate() {
        for &j1 in &ey[a + 1..] {
            if j1 - j0 < FIT_MIN_BLOCKS {
                continue;
            }
            for (b, &i0) in ex.iter().enumerate() {
                for &i1 in &ex[b + 1..] {
                    if i1 - i0 < FIT_MIN_BLOCKS {
                        continue;
                    }
                    let r = [i0, j0, i1, j1];
                    let energy = sum(1, r);
                    if energy <= 0.0 {
                        continue;
                    }
                    tried += 1;
                    let z = sum(0, r) / energy.sqrt();
                    if best.is_none_or(|(bz, _)| z > bz) {
                        best = Some((z, r));
                    }
                }
            }
        }
    }
    best.map(|(_, r)| (r, tried))
}

/// A fitted window is at least this many blocks on each side.
pub(super) const FIT_MIN_BLOCKS: usize = 8;
/// Window edges are fitted on at most this many positions per axis.
pub(super) const FIT_EDGES: usize = 40;
