//! Spatial registration of a leaked frame against its source (informed mode).
//!
//! The model: a point at continuous position `x` of the source picture (pixel `i` covers
//! `[i, i+1)`) appears at `sx * x + tx` in the leaked picture (likewise for `y`). This covers
//! scaling (also anisotropic), crops, letterbox/pillarbox and a picture-in-picture window.
//! A coarse search runs FFT phase correlation over a list of scale hypotheses on small
//! thumbnails; the best candidates are then refined by pattern search on the normalised
//! cross-correlation at higher resolution.

use rayon::prelude::*;
use rustfft::num_complex::Complex32;

use crate::fft2d::{cross_correlate_spectrum, spectrum, Fft2d};
use crate::image::{Gray, Ncc};

/// Where the source picture sits in the leaked picture.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Geometry {
    /// Horizontal scale (leaked pixels per source pixel).
    pub sx: f64,
    /// Vertical scale.
    pub sy: f64,
    /// Horizontal offset in leaked pixels.
    pub tx: f64,
    /// Vertical offset in leaked pixels.
    pub ty: f64,
}

impl Geometry {
    /// Identity.
    pub const IDENTITY: Geometry = Geometry { sx: 1.0, sy: 1.0, tx: 0.0, ty: 0.0 };

    /// The same geometry for images downscaled by `src_factor` (source) and `leak_factor`
    /// (leaked): each is original pixels per image pixel.
    pub fn rescaled(&self, src_factor: f64, leak_factor: f64) -> Geometry {
        Geometry {
            sx: self.sx * src_factor / leak_factor,
            sy: self.sy * src_factor / leak_factor,
            tx: self.tx / leak_factor,
            ty: self.ty / leak_factor,
        }
    }

    /// Maps a source pixel centre to leaked sample coordinates (pixel-centre convention of
    /// [`Gray::sample`]).
    #[inline]
    pub fn map(&self, i: f64, j: f64) -> (f32, f32) {
        ((self.sx * (i + 0.5) + self.tx - 0.5) as f32, (self.sy * (j + 0.5) + self.ty - 0.5) as f32)
    }
}

/// Where each source column (row) samples the leaked picture under a geometry: the two
/// neighbouring leaked columns (rows) and the weight of the second. The geometry is
/// axis-aligned, so the bilinear warp separates, and the source pixels the leaked picture
/// covers form one rectangle.
pub struct WarpTaps {
    /// Covered source columns.
    pub x_range: std::ops::Range<usize>,
    /// Covered source rows.
    pub y_range: std::ops::Range<usize>,
    /// Taps of every source column (row); meaningful inside the ranges.
    pub cols: Vec<(usize, usize, f32)>,
    /// Taps of every source row.
    pub rows: Vec<(usize, usize, f32)>,
}

impl WarpTaps {
    /// Taps for a `src_size` source grid sampling a `leak_size` picture under `g`, with the
    /// arithmetic of [`Gray::sample`] at [`Geometry::map`].
    pub fn new(src_size: (usize, usize), leak_size: (usize, usize), g: &Geometry) -> Self {
        let axis = |n: usize, len: usize, map: &dyn Fn(f64) -> f32| {
            let mut range = n..n;
            let taps = (0..n)
                .map(|i| {
                    let x = map(i as f64);
                    if !(x >= 0.0 && x <= (len - 1) as f32) {
                        return (0, 0, 0.0);
                    }
                    range.start = range.start.min(i);
                    range.end = i + 1;
                    let x0 = (x as usize).min(len.saturating_sub(2));
                    (x0, (x0 + 1).min(len - 1), x - x0 as f32)
                })
                .collect();
            (taps, if range.start < range.end { range } else { 0..0 })
        };
        let (cols, x_range) = axis(src_size.0, leak_size.0, &|i| g.map(i, 0.0).0);
        let (rows, y_range) = axis(src_size.1, leak_size.1, &|j| g.map(0.0, j).1);
        Self { x_range, y_range, cols, rows }
    }

    /// Whether source pixel (`i`, `j`) sees the leaked picture.
    pub fn covers(&self, i: usize, j: usize) -> bool {
        self.x_range.contains(&i) && self.y_range.contains(&j)
    }

    /// The leaked picture at source pixel (`i`, `j`), which it must cover.
    #[inline]
    pub fn sample(&self, leak: &Gray, i: usize, j: usize) -> f32 {
        let ((x0, x1, fx), (y0, y1, fy)) = (self.cols[i], self.rows[j]);
        bilinear(&leak.data[y0 * leak.w..][..leak.w], &leak.data[y1 * leak.w..][..leak.w], x0, x1, fx, fy)
    }
}

/// How a source grid samples a leaked picture: separable taps for an axis-aligned
/// geometry (the common case, and the faster one), a per-pixel map for any other
/// homography.
pub enum Warp {
    /// Scale and offset per axis.
    Axis(WarpTaps),
    /// Any projective map.
    Projective(crate::homography::PixelMap),
}

impl Warp {
    /// The warp of a `src_size` grid sampling a `leak_size` picture under `h`.
    pub fn new(
        src_size: (usize, usize),
        leak_size: (usize, usize),
        h: &crate::homography::Homography,
    ) -> Self {
        match h.as_geometry() {
            Some(g) => Warp::Axis(WarpTaps::new(src_size, leak_size, &g)),
            None => Warp::Projective(crate::homography::PixelMap::new(src_size, leak_size, h)),
        }
    }

    /// Bounding columns of the covered source pixels.
    pub fn x_range(&self) -> std::ops::Range<usize> {
        match self {
            Warp::Axis(t) => t.x_range.clone(),
            Warp::Projective(m) => m.x_range.clone(),
        }
    }

    /// Bounding rows of the covered source pixels.
    pub fn y_range(&self) -> std::ops::Range<usize> {
        match self {
            Warp::Axis(t) => t.y_range.clone(),
            Warp::Projective(m) => m.y_range.clone(),
        }
    }

    /// Whether source pixel (`i`, `j`) sees the leaked picture.
    #[inline]
    pub fn covers(&self, i: usize, j: usize) -> bool {
        match self {
            Warp::Axis(t) => t.covers(i, j),
            Warp::Projective(m) => m.covers(i, j),
        }
    }

    /// The leaked picture at source pixel (`i`, `j`), `None` where it is not covered.
    #[inline]
    pub fn sample(&self, leak: &Gray, i: usize, j: usize) -> Option<f32> {
        match self {
            Warp::Axis(t) => t.covers(i, j).then(|| t.sample(leak, i, j)),
            Warp::Projective(m) => m.sample(leak, i, j),
        }
    }
}

/// Bilinear interpolation between rows `r0` and `r1` at columns `x0`, `x1` (the arithmetic
/// of [`Gray::sample`]).
#[inline]
pub fn bilinear(r0: &[f32], r1: &[f32], x0: usize, x1: usize, fx: f32, fy: f32) -> f32 {
    let top = r0[x0] + (r0[x1] - r0[x0]) * fx;
    let bot = r1[x0] + (r1[x1] - r1[x0]) * fx;
    top + (bot - top) * fy
}

/// NCC between `src` and `leak` under `g`, sampling every `step`-th source pixel.
pub fn ncc_at(src: &Gray, leak: &Gray, g: &Geometry, step: usize) -> Ncc {
    ncc_masked(src, leak, g, step, None)
}

/// [`ncc_at`] over the source pixels `keep` allows (all when `None`).
pub fn ncc_masked(src: &Gray, leak: &Gray, g: &Geometry, step: usize, keep: Option<&[bool]>) -> Ncc {
    let taps = WarpTaps::new((src.w, src.h), (leak.w, leak.h), g);
    let mut n = Ncc::default();
    for j in (0..src.h).step_by(step).filter(|j| taps.y_range.contains(j)) {
        for i in (0..src.w).step_by(step).filter(|i| taps.x_range.contains(i)) {
            if keep.is_some_and(|k| !k[j * src.w + i]) {
                continue;
            }
            n.add(src.data[j * src.w + i], taps.sample(leak, i, j));
        }
    }
    n
}

/// Source pixels that do not look like the leaked picture under `g`: logos, tickers and
/// banners pasted over the picture. Both sides are standardised (a linear tone fit) and
/// pixels whose difference is beyond three times the median difference are dropped.
pub fn outlier_mask(src: &Gray, leak: &Gray, g: &Geometry) -> Vec<bool> {
    let (mut ms, mut ml, mut n) = (0f64, 0f64, 0f64);
    let taps = WarpTaps::new((src.w, src.h), (leak.w, leak.h), g);
    let mut pairs = Vec::with_capacity(src.w * src.h);
    for j in 0..src.h {
        for i in 0..src.w {
            let v = taps.covers(i, j).then(|| taps.sample(leak, i, j));
            if let Some(v) = v {
                ms += f64::from(src.data[j * src.w + i]);
                ml += f64::from(v);
                n += 1.0;
            }
            pairs.push(v);
        }
    }
    if n < 16.0 {
        return vec![true; src.w * src.h];
    }
    let (ms, ml) = (ms / n, ml / n);
    let (mut vs, mut vl) = (0f64, 0f64);
    for (s, l) in src.data.iter().zip(&pairs) {
        if let Some(l) = l {
            vs += (f64::from(*s) - ms).powi(2);
            vl += (f64::from(*l) - ml).powi(2);
        }
    }
    let (ss, sl) = ((vs / n).sqrt().max(1e-6), (vl / n).sqrt().max(1e-6));
    let diffs: Vec<Option<f64>> = src
        .data
        .iter()
        .zip(&pairs)
        .map(|(s, l)| l.map(|l| ((f64::from(*s) - ms) / ss - (f64::from(l) - ml) / sl).abs()))
        .collect();
    let mut sorted: Vec<f64> = diffs.iter().flatten().copied().collect();
    sorted.sort_by(f64::total_cmp);
    let cut = 3.0 * sorted[sorted.len() / 2].max(1e-3);
    diffs.iter().map(|d| d.is_none_or(|d| d <= cut)).collect()
}

/// Zero-mean, edge-tapered copy of `img` placed at the origin of a `cw` x `ch` canvas.
fn canvas(img: &Gray, cw: usize, ch: usize) -> Vec<f32> {
    let mean = img.data.iter().sum::<f32>() / img.data.len().max(1) as f32;
    let mut out = vec![0f32; cw * ch];
    let taper = |k: usize, n: usize| {
        let edge = (n / 8).max(1) as f32;
        let d = k.min(n - 1 - k) as f32;
        if d >= edge {
            1.0
        } else {
            0.5 - 0.5 * (std::f32::consts::PI * (d + 0.5) / edge).cos()
        }
    };
    for y in 0..img.h.min(ch) {
        let ty = taper(y, img.h);
        for x in 0..img.w.min(cw) {
            out[y * cw + x] = (img.data[y * img.w + x] - mean) * ty * taper(x, img.w);
        }
    }
    out
}

/// Resamples `img` by (`sx`, `sy`) with bilinear interpolation.
pub(crate) fn scaled(img: &Gray, sx: f64, sy: f64) -> Gray {
    let mut out = Gray::new(0, 0);
    scaled_into(img, sx, sy, &mut out);
    out
}

/// [`scaled`] into `out` (reshaped; its allocation reused).
pub(crate) fn scaled_into(img: &Gray, sx: f64, sy: f64, out: &mut Gray) {
    let (w, h) =
        (((img.w as f64 * sx).round() as usize).max(2), ((img.h as f64 * sy).round() as usize).max(2));
    out.reshape(w, h);
    for y in 0..h {
        for x in 0..w {
            let u = ((x as f64 + 0.5) / sx - 0.5).clamp(0.0, (img.w - 1) as f64) as f32;
            let v = ((y as f64 + 0.5) / sy - 0.5).clamp(0.0, (img.h - 1) as f64) as f32;
            out.data[y * w + x] = img.sample(u, v).unwrap_or(0.0);
        }
    }
}

/// The scale hypotheses of the coarse search: isotropic scales from 0.25 to 1.6 in 2%
/// steps (further for a leaked picture larger than the source), plus the stretch that maps
/// the whole source onto the whole leaked picture.
pub fn scale_hypotheses(src: (usize, usize), leak: (usize, usize)) -> Vec<(f64, f64)> {
    scale_hypotheses_with_step(src, leak, 1.02)
}

/// [`scale_hypotheses`] with isotropic steps of `ratio`.
fn scale_hypotheses_with_step(src: (usize, usize), leak: (usize, usize), ratio: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut s = 0.25f64;
    // Up to 1.6x a crop of the source, or more when the leaked picture is larger than the
    // source (a vertical re-cut blows a narrow crop up to the full height).
    let grow = (leak.0 as f64 / src.0 as f64).max(leak.1 as f64 / src.1 as f64).max(1.0);
    while s <= 1.6 * grow {
        out.push((s, s));
        s *= ratio;
    }
    out.push((leak.0 as f64 / src.0 as f64, leak.1 as f64 / src.1 as f64));
    out
}

/// The smallest length at least `n` with no prime factor above 5: rustfft's fast radices,
/// and much closer to `n` than the next power of two.
fn fft_friendly(n: usize) -> usize {
    (n.max(1)..)
        .find(|&m| {
            let mut m = m;
            for p in [2, 3, 5] {
                while m % p == 0 {
                    m /= p;
                }
            }
            m == 1
        })
        .expect("5-smooth numbers are unbounded")
}

/// Coarse registration on thumbnails made with the same downscale factor: returns the
/// best geometries (in thumbnail pixels), best first, with their NCC.
pub fn coarse(src: &Gray, leak: &Gray, keep: usize) -> Vec<(Geometry, f64)> {
    coarse_with_step(src, leak, keep, 1.02)
}

/// [`coarse`] with isotropic scale steps of `ratio` (a coarser search when a refinement
/// follows that reaches further).
pub fn coarse_with_step(src: &Gray, leak: &Gray, keep: usize, ratio: f64) -> Vec<(Geometry, f64)> {
    let hyps = scale_hypotheses_with_step((src.w, src.h), (leak.w, leak.h), ratio);
    let max_s = hyps.iter().fold(0f64, |m, h| m.max(h.0).max(h.1));
    let cw = fft_friendly((src.w as f64 * max_s).ceil() as usize + leak.w);
    let ch = fft_friendly((src.h as f64 * max_s).ceil() as usize + leak.h);
    // The leaked picture's spectrum is the same for every hypothesis: taken once.
    let leak_spectrum = spectrum(&mut Fft2d::new(cw, ch), &canvas(leak, cw, ch));
    // Every hypothesis is independent: one FFT plan and buffers per worker thread.
    let mut found: Vec<(Geometry, f64)> = hyps
        .into_par_iter()
        .map_init(
            || (Fft2d::new(cw, ch), Vec::<Complex32>::new(), Vec::<Complex32>::new(), vec![0f32; cw * ch]),
            |(fft, ba, bb, surface), (sx, sy)| {
                let s = scaled(src, sx, sy);
                // Hypotheses that cannot overlap much are pointless.
                if s.w < 8 || s.h < 8 {
                    return None;
                }
                let sc = canvas(&s, cw, ch);
                cross_correlate_spectrum(fft, &leak_spectrum, &sc, true, (ba, bb), surface);
                let (best, _) =
                    surface
                        .iter()
                        .enumerate()
                        .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
                let (mut dx, mut dy) = ((best % cw) as f64, (best / cw) as f64);
                if dx > (cw / 2) as f64 {
                    dx -= cw as f64;
                }
                if dy > (ch / 2) as f64 {
                    dy -= ch as f64;
                }
                let g = Geometry { sx, sy, tx: dx, ty: dy };
                let ncc = ncc_at(src, leak, &g, 1);
                // Demand a real overlap: at least a fifth of the source visible.
                (ncc.count() >= 0.2 * (src.w * src.h) as f64).then(|| (g, ncc.value()))
            },
        )
        .flatten()
        .collect();
    found.sort_by(|a, b| b.1.total_cmp(&a.1));
    found.truncate(keep);
    found
}

/// Refines `g` (in the pixels of `src` and `leak`) by pattern search on the NCC.
pub fn refine(src: &Gray, leak: &Gray, g: Geometry, step: usize) -> (Geometry, f64) {
    refine_masked(src, leak, g, step, None)
}

/// Refines twice: once on every pixel, then again without the pixels that disagree
/// (overlays a channel pasted on the picture would otherwise pull the fit).
pub fn refine_robust(src: &Gray, leak: &Gray, g: Geometry, step: usize) -> (Geometry, f64) {
    let (g, _) = refine_masked(src, leak, g, step, None);
    let keep = outlier_mask(src, leak, &g);
    refine_masked(src, leak, g, step, Some(&keep))
}

fn refine_masked(
    src: &Gray,
    leak: &Gray,
    mut g: Geometry,
    step: usize,
    keep: Option<&[bool]>,
) -> (Geometry, f64) {
    let ncc_at = |s: &Gray, l: &Gray, g: &Geometry, step: usize| ncc_masked(s, l, g, step, keep);
    let mut best = ncc_at(src, leak, &g, step).value();
    let (mut ds, mut dt) = (0.01 * g.sx.max(g.sy), 1.0f64);
    let threads = rayon::current_num_threads().max(1);
    let mut ahead: Vec<(Geometry, f64)> = Vec::with_capacity(threads);
    for _ in 0..200 {
        let mut improved = false;
        let trials = [
            (ds, 0.0, 0.0, 0.0),
            (-ds, 0.0, 0.0, 0.0),
            (0.0, ds, 0.0, 0.0),
            (0.0, -ds, 0.0, 0.0),
            (ds, ds, 0.0, 0.0),
            (-ds, -ds, 0.0, 0.0),
            (0.0, 0.0, dt, 0.0),
            (0.0, 0.0, -dt, 0.0),
            (0.0, 0.0, 0.0, dt),
            (0.0, 0.0, 0.0, -dt),
        ];
        let moved = |g: Geometry, (a, b, c, d): (f64, f64, f64, f64)| {
            let cand = Geometry { sx: g.sx + a, sy: g.sy + b, tx: g.tx + c, ty: g.ty + d };
            // A scale change about the picture centre should not move the centre.
            Geometry { tx: cand.tx - a * src.w as f64 / 2.0, ty: cand.ty - b * src.h as f64 / 2.0, ..cand }
        };
        // The trials are taken in order, each from where the earlier ones left the
        // geometry. A thread's worth are measured ahead in parallel from the current
        // geometry, and those after one that improves are measured again from the new one:
        // the same steps as one trial at a time.
        let mut next = 0;
        while next < trials.len() {
            let upto = (next + threads).min(trials.len());
            trials[next..upto]
                .par_iter()
                .map(|&t| {
                    let cand = moved(g, t);
                    (cand, ncc_at(src, leak, &cand, step).value())
                })
                .collect_into_vec(&mut ahead);
            match ahead.iter().position(|&(_, v)| v > best + 1e-7) {
                Some(taken) => {
                    (g, best) = ahead[taken];
                    improved = true;
                    next += taken + 1;
                }
                None => next = upto,
            }
        }
        if !improved {
            ds *= 0.5;
            dt *= 0.5;
            if dt < 0.02 {
                break;
            }
        }
    }
    (g, best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn textured(w: usize, h: usize) -> Gray {
        let mut g = Gray::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let (xf, yf) = (x as f32, y as f32);
                g.data[y * w + x] = 128.0
                    + 40.0 * (xf * 0.11).sin() * (yf * 0.07).cos()
                    + 30.0 * ((xf + 2.0 * yf) * 0.05).sin()
                    + 20.0 * ((xf * yf).sqrt() * 0.3).cos();
            }
        }
        g
    }

    #[test]
    fn fft_friendly_lengths() {
        assert_eq!([1, 7, 333, 187, 512, 1025].map(fft_friendly), [1, 8, 360, 192, 512, 1080]);
    }

    #[test]
    fn warp_taps_sample_like_gray_sample() {
        let leak = textured(97, 61);
        for g in [
            Geometry { sx: 0.75, sy: 0.7, tx: 10.3, ty: -4.2 },
            Geometry { sx: 1.3, sy: 1.3, tx: -20.0, ty: 3.5 },
            Geometry::IDENTITY,
        ] {
            let (w, h) = (120, 80);
            let taps = WarpTaps::new((w, h), (leak.w, leak.h), &g);
            for (i, j) in (0..h).flat_map(|j| (0..w).map(move |i| (i, j))) {
                let (x, y) = g.map(i as f64, j as f64);
                match leak.sample(x, y) {
                    Some(v) => assert!(taps.covers(i, j) && taps.sample(&leak, i, j) == v, "{g:?} {i},{j}"),
                    None => assert!(!taps.covers(i, j), "{g:?} {i},{j}"),
                }
            }
        }
    }

    #[test]
    fn recovers_scale_and_offset() {
        let src = textured(160, 120);
        let truth = Geometry { sx: 0.75, sy: 0.75, tx: 21.0, ty: 9.0 };
        // Leaked: the source scaled by 0.75 and pasted at (21, 9) on a grey canvas.
        let mut leak = Gray::new(200, 130);
        leak.data.fill(100.0);
        for y in 0..130 {
            for x in 0..200 {
                let u = (x as f64 + 0.5 - truth.tx) / truth.sx - 0.5;
                let v = (y as f64 + 0.5 - truth.ty) / truth.sy - 0.5;
                if let Some(s) = src.sample(u as f32, v as f32) {
                    leak.data[y * 200 + x] = s;
                }
            }
        }
        let c = coarse(&src, &leak, 3);
        let (g, ncc) = refine(&src, &leak, c[0].0, 1);
        assert!(ncc > 0.98, "{ncc}");
        assert!((g.sx - 0.75).abs() < 0.01 && (g.sy - 0.75).abs() < 0.01, "{g:?}");
        assert!((g.tx - 21.0).abs() < 0.5 && (g.ty - 9.0).abs() < 0.5, "{g:?}");
    }
}
