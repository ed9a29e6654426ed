//! Blind trace: no source. The mark's pilot is found by its own periodic structure.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use rayon::prelude::*;
use rustfft::num_complex::Complex32;
use tracemark_core::layout::Scheme;
use tracemark_core::layout::{PILOT, TILE_PX};
use tracemark_core::motion::{Displacements, MotionTracker, TrackedQueue, Tracking};
use tracemark_core::pipeline::ProgressFn;
use tracemark_core::{Frame, MasterKey};

use super::{open, tick, Registration, TraceConfig, TraceResult};
use crate::detect::{DetectScratch, Detector, SlotSums};
use crate::fft2d::Fft2d;
use crate::image::{Downscaler, Gray};
use crate::register;
use crate::verdict::{decide_readings, Candidate, Family};
use crate::{Error, Result};

/// The pilot's reference tile in pixels: what a unit-mask mark's pilot looks like.
fn pilot_tile(key: &MasterKey) -> Vec<f32> {
    let layout = tracemark_core::layout::TileLayout::new(key);
    tracemark_core::layout::tile_image(
        &layout.block_patterns(|slot| if slot.role == PILOT { 1.0 } else { 0.0 }),
    )
}

/// Buffers one frame needs on one analysis grid, made once and reused for every frame.
#[derive(Default)]
struct FrameScratch {
    /// The area downscaler and the (plane width, plane height, width, height) it is for.
    down: Option<((usize, usize, usize, usize), Downscaler)>,
    /// The downscaled plane, when it is then upscaled to the grid.
    small: Gray,
    med: Gray,
    lanes: Vec<Vec<f32>>,
    resid: Gray,
    /// Squared residual, and its 9-row and 9x9 window sums along one row.
    squares: Vec<f32>,
    down_sum: Vec<f32>,
    window_sum: Vec<f32>,
    /// The frame on the grid, and its whitened residual (the outputs).
    picture: Gray,
    white: Gray,
    /// Both moved back by the picture's motion since the first frame as each tracking
    /// measures it ([`Tracking::index`]), when it moved.
    moved_picture: [Gray; Tracking::ALL.len()],
    moved_white: [Gray; Tracking::ALL.len()],
    moved: [bool; Tracking::ALL.len()],
}

/// `out(q) = src(q + d)`, bilinear, zero where a tap falls outside `src`.
fn shift_into(src: &Gray, (dx, dy): (f64, f64), out: &mut Gray) {
    let (w, h) = (src.w, src.h);
    out.reshape(w, h);
    let (ix, iy) = (dx.floor(), dy.floor());
    let (fx, fy) = ((dx - ix) as f32, (dy - iy) as f32);
    let (ix, iy) = (ix as i64, iy as i64);
    // Output columns whose taps x + ix and x + ix + 1 are both inside.
    let x0 = (-ix).clamp(0, w as i64) as usize;
    let x1 = (w as i64 - 1 - ix).clamp(x0 as i64, w as i64) as usize;
    for y in 0..h {
        let row = &mut out.data[y * w..][..w];
        let sy = y as i64 + iy;
        if sy < 0 || sy + 1 >= h as i64 || x0 >= x1 {
            row.fill(0.0);
            continue;
        }
        let (sy, sx) = (sy as usize, (x0 as i64 + ix) as usize);
        let r0 = &src.data[sy * w + sx..][..x1 - x0 + 1];
        let r1 = &src.data[(sy + 1) * w + sx..][..x1 - x0 + 1];
        row[..x0].fill(0.0);
        row[x1..].fill(0.0);
        for (n, o) in row[x0..x1].iter_mut().enumerate() {
            *o = register::bilinear(r0, r1, n, n + 1, fx, fy);
        }
    }
}

/// Whitened, locally normalised residual of one analysis image, into `out`.
fn whiten_into(img: &Gray, s: &mut FrameScratch, out: &mut Gray) {
    img.median3_into(&mut s.lanes, &mut s.med);
    let (w, h) = (img.w, img.h);
    s.resid.reshape(w, h);
    for (o, (a, b)) in s.resid.data.iter_mut().zip(img.data.iter().zip(&s.med.data)) {
        *o = a - b;
    }
    // Local RMS over 9x9 windows (clamped at the edges): squares summed down 9 rows, then
    // across 9 columns, whole rows at a time (the sums vectorise; no running sum drifts).
    let r = &s.resid;
    s.squares.clear();
    s.squares.extend(r.data.iter().map(|v| v * v));
    s.down_sum.resize(w, 0.0);
    s.window_sum.resize(w, 0.0);
    out.reshape(w, h);
    for y in 0..h {
        let (y0, y1) = (y.saturating_sub(4), (y + 5).min(h));
        let col = &mut s.down_sum;
        col.copy_from_slice(&s.squares[y0 * w..][..w]);
        for yy in y0 + 1..y1 {
            for (c, q) in col.iter_mut().zip(&s.squares[yy * w..][..w]) {
                *c += q;
            }
        }
        let win = &mut s.window_sum;
        for x in (0..w.min(4)).chain(w.saturating_sub(4).max(4)..w) {
            win[x] = col[x.saturating_sub(4)..(x + 5).min(w)].iter().sum();
        }
        if w > 8 {
            let inner = &mut win[4..w - 4];
            inner.copy_from_slice(&col[..w - 8]);
            for k in 1..9 {
                for (o, c) in inner.iter_mut().zip(&col[k..]) {
                    *o += c;
                }
            }
        }
        let rows = (y1 - y0) as f32;
        let (resid, o) = (&r.data[y * w..][..w], &mut out.data[y * w..][..w]);
        for (x, ((o, &v), &sum)) in o.iter_mut().zip(resid).zip(win.iter()).enumerate() {
            let n = rows * ((x + 5).min(w) - x.saturating_sub(4)) as f32;
            // Rounding can leave a sum of squares a hair below zero.
            *o = v / ((sum / n).max(0.0).sqrt() + 1.0);
        }
    }
}

/// Resizes a plane to `w` x `h` into `s.picture`: area averaging where it shrinks,
/// bilinear where it grows.
fn resize_into(p: &tracemark_core::Plane, w: usize, h: usize, s: &mut FrameScratch) {
    let (dw, dh) = (w.min(p.width()), h.min(p.height()));
    let key = (p.width(), p.height(), dw, dh);
    if s.down.as_ref().is_none_or(|(k, _)| *k != key) {
        s.down = Some((key, Downscaler::new(p.width(), p.height(), dw, dh)));
    }
    let down = &mut s.down.as_mut().expect("just made").1;
    if (dw, dh) == (w, h) {
        s.picture.reshape(w, h);
        down.run(p, &mut s.picture.data);
    } else {
        s.small.reshape(dw, dh);
        down.run(p, &mut s.small.data);
        register::scaled_into(&s.small, w as f64 / dw as f64, h as f64 / dh as f64, &mut s.picture);
        debug_assert_eq!((s.picture.w, s.picture.h), (w, h));
    }
}

/// A linear map from the mark's working grid to analysis pixels: `scale` times a shape
/// (rotation and aspect stretch, unit determinant) found from the mark's own lattice.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Linear([[f64; 2]; 2]);

impl Linear {
    const IDENTITY: Linear = Linear([[1.0, 0.0], [0.0, 1.0]]);

    fn scaled(self, s: f64) -> Linear {
        let m = self.0;
        Linear([[m[0][0] * s, m[0][1] * s], [m[1][0] * s, m[1][1] * s]])
    }

    /// The same map seen in a picture flipped by `mirror` (conjugation by the flip).
    fn mirrored(self, mirror: Mirror) -> Linear {
        let (fx, fy) = (if mirror.horizontal { -1.0 } else { 1.0 }, if mirror.vertical { -1.0 } else { 1.0 });
        let m = self.0;
        Linear([[m[0][0], m[0][1] * fx * fy], [m[1][0] * fx * fy, m[1][1]]])
    }

    /// Rotation in degrees (of the mark's x axis) and horizontal-to-vertical stretch.
    fn rotation_and_stretch(self) -> (f64, f64) {
        let m = self.0;
        let (cx, cy) =
            ((m[0][0].powi(2) + m[1][0].powi(2)).sqrt(), (m[0][1].powi(2) + m[1][1].powi(2)).sqrt());
        (m[1][0].atan2(m[0][0]).to_degrees(), cx / cy.max(1e-12))
    }
}

/// Where the mark's grid lands in a picture under a [`Linear`] map: output pixel (x, y)
/// (plus `offset`) reads the picture at `map` (x, y), the grid centred on the picture so a
/// rotation loses the corners evenly (the centre must not depend on `offset`: shifts are
/// measured against it). One definition for the resampler and the fused fold, so the two
/// read exactly the same positions.
struct GridMap {
    m: [[f64; 2]; 2],
    /// Output size: as large as the input at the map's scale.
    w: usize,
    h: usize,
    /// Output-grid centre minus the offset and the pixel-centre half, and the input centre.
    c: (f64, f64),
    ic: (f64, f64),
}

impl GridMap {
    fn new(img: &Gray, map: Linear, offset: (f64, f64)) -> Self {
        let m = map.0;
        let scale = (m[0][0] * m[1][1] - m[0][1] * m[1][0]).abs().sqrt().max(1e-9);
        let (w, h) = (
            ((img.w as f64 / scale) - offset.0).floor().max(1.0) as usize,
            ((img.h as f64 / scale) - offset.1).floor().max(1.0) as usize,
        );
        let (cx, cy) = (img.w as f64 / scale / 2.0, img.h as f64 / scale / 2.0);
        Self {
            m,
            w,
            h,
            c: (offset.0 + 0.5 - cx, offset.1 + 0.5 - cy),
            ic: (img.w as f64 / 2.0 - 0.5, img.h as f64 / 2.0 - 0.5),
        }
    }

    /// Input position of the start of output row `y`, before rounding to f32.
    #[inline]
    fn row(&self, y: usize) -> (f64, f64) {
        let m = self.m;
        let (px, py) = (self.c.0, y as f64 + self.c.1);
        (m[0][0] * px + m[0][1] * py + self.ic.0, m[1][0] * px + m[1][1] * py + self.ic.1)
    }

    /// Input position of output pixel `x` of the row that starts at `row`.
    #[inline]
    fn along(&self, row: (f64, f64), x: usize) -> (f32, f32) {
        // Pictures are far narrower than 2^32 pixels; u32 converts in one instruction.
        let x = f64::from(x as u32);
        ((row.0 + self.m[0][0] * x) as f32, (row.1 + self.m[1][0] * x) as f32)
    }
}

/// The fold of `img` under `map` by splatting: every picture pixel adds its value, split
/// bilinearly, at the grid position [`GridMap`] maps back to it, modulo the tile (the
/// transpose of [`fold_resampled`]'s sampling, in the same coordinates, so the pilot peaks
/// at the same shift). It costs the picture's pixels, where resampling costs the grid's:
/// ten times more for a window holding a mark shrunk to 0.3. Returns the grid's size.
fn fold_splatted(img: &Gray, map: Linear, tile: &mut [f32]) -> (usize, usize) {
    const _: () = assert!(TILE_PX.is_power_of_two());
    let wrap = TILE_PX as i64 - 1;
    let g = GridMap::new(img, map, (0.0, 0.0));
    tile.fill(0.0);
    let m = g.m;
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    let inv = [[m[1][1] / det, -m[0][1] / det], [-m[1][0] / det, m[0][0] / det]];
    for (y, row) in img.data.chunks_exact(img.w.max(1)).enumerate() {
        // Grid position of picture pixel (x, y): inv ((x, y) - ic) - c.
        let dy = y as f64 - g.ic.1;
        let (u0, v0) =
            (inv[0][1] * dy - inv[0][0] * g.ic.0 - g.c.0, inv[1][1] * dy - inv[1][0] * g.ic.0 - g.c.1);
        for (x, &value) in row.iter().enumerate() {
            let (u, v) = (u0 + inv[0][0] * x as f64, v0 + inv[1][0] * x as f64);
            let (fu, fv) = (u.floor(), v.floor());
            let (au, av) = ((u - fu) as f32, (v - fv) as f32);
            let (iu, iv) = (fu as i64, fv as i64);
            let (u0i, u1i) = ((iu & wrap) as usize, ((iu + 1) & wrap) as usize);
            let (r0, r1) = (((iv & wrap) as usize) * TILE_PX, (((iv + 1) & wrap) as usize) * TILE_PX);
            let (top, bottom) = (value * (1.0 - av), value * av);
            tile[r0 + u0i] += top * (1.0 - au);
            tile[r0 + u1i] += top * au;
            tile[r1 + u0i] += bottom * (1.0 - au);
            tile[r1 + u1i] += bottom * au;
        }
    }
    (g.w, g.h)
}

/// Resamples `img` onto the mark's grid (see [`GridMap`]); outside the picture is 0.
fn resample(img: &Gray, map: Linear, offset: (f64, f64)) -> Gray {
    /// Writes the picture.
    struct Picture<'a>(&'a mut Gray);
    impl ResampledRows for Picture<'_> {
        fn one(&mut self, y: usize, x: usize, v: f32) {
            self.0.data[y * self.0.w + x] = v;
        }
        fn lanes(&mut self, y: usize, x0: usize, v: &[f32; LANES]) {
            self.0.data[y * self.0.w + x0..][..LANES].copy_from_slice(v);
        }
    }
    let g = GridMap::new(img, map, offset);
    let mut out = Gray::new(g.w, g.h);
    resample_rows(img, &g, &mut Picture(&mut out));
    out
}

/// The straightforward [`resample`]: [`Gray::sample`] at every position.
#[cfg(test)]
fn resample_reference(img: &Gray, map: Linear, offset: (f64, f64)) -> Gray {
    let g = GridMap::new(img, map, offset);
    let mut out = Gray::new(g.w, g.h);
    for y in 0..g.h {
        let row = g.row(y);
        for x in 0..g.w {
            let (u, v) = g.along(row, x);
            out.data[y * g.w + x] = img.sample(u, v).unwrap_or(0.0);
        }
    }
    out
}

/// [`fold`] of [`resample`]`(img, map, (0, 0))` into `tile`, without the resampled picture:
/// the same values added in the same order, so the result is bit-identical (the blind
/// search runs this for every hypothesis). Returns the resampled size.
fn fold_resampled(img: &Gray, map: Linear, tile: &mut [f32]) -> (usize, usize) {
    /// Adds the picture modulo the tile.
    struct Folded<'a>(&'a mut [f32]);
    impl ResampledRows for Folded<'_> {
        fn one(&mut self, y: usize, x: usize, v: f32) {
            self.0[(y % TILE_PX) * TILE_PX + x % TILE_PX] += v;
        }
        fn lanes(&mut self, y: usize, x0: usize, v: &[f32; LANES]) {
            // Lanes start on a multiple of LANES: they never wrap around the tile row.
            let out = &mut self.0[(y % TILE_PX) * TILE_PX + x0 % TILE_PX..][..LANES];
            for (o, v) in out.iter_mut().zip(v) {
                *o += v;
            }
        }
    }
    const _: () = assert!(TILE_PX % LANES == 0);
    let g = GridMap::new(img, map, (0.0, 0.0));
    tile.fill(0.0);
    resample_rows(img, &g, &mut Folded(tile));
    (g.w, g.h)
}

/// Where [`resample_rows`] puts the resampled picture: a row at a time, and within a row
/// in x order, a pixel or [`LANES`] pixels at once.
trait ResampledRows {
    /// Pixel `x` of row `y`.
    fn one(&mut self, y: usize, x: usize, v: f32);
    /// Pixels `x0..x0 + LANES` of row `y`, `x0` a multiple of [`LANES`].
    fn lanes(&mut self, y: usize, x0: usize, v: &[f32; LANES]);
}

/// Samples `img` bilinearly at every position of the grid `g` (as [`Gray::sample`] does,
/// outside the picture 0) into `out`. Positions safely inside the picture take an
/// unchecked path, [`LANES`] at a time, whose arithmetic vectorises.
#[inline(always)]
fn resample_rows(img: &Gray, g: &GridMap, out: &mut impl ResampledRows) {
    if img.w < 2 || img.h < 2 {
        // Degenerate pictures take the general sampler's clamped edges.
        for y in 0..g.h {
            let start = g.row(y);
            for x in 0..g.w {
                let (u, v) = g.along(start, x);
                out.one(y, x, img.sample(u, v).unwrap_or(0.0));
            }
        }
        return;
    }
    let (w, h) = (img.w, img.h);
    let (xmax, ymax) = ((w - 1) as f32, (h - 1) as f32);
    let (du, dv) = (g.m[0][0], g.m[1][0]);
    let edge = |u: f32, v: f32| -> f32 {
        // Outside the picture is 0 ([`Gray::sample`]'s `None`).
        if u >= 0.0 && v >= 0.0 && u <= xmax && v <= ymax {
            let (xi, yi) = ((u as usize).min(w - 2), (v as usize).min(h - 2));
            bilinear_at(img, xi, yi, u - xi as f32, v - yi as f32)
        } else {
            0.0
        }
    };
    for y in 0..g.h {
        let start = g.row(y);
        // Output pixels at least `MARGIN` inside the picture need no bounds check and no
        // clamp (there floor(u) <= w - 2 already); the rest take the checked path.
        let (lo, hi) = inside(start, (du, dv), ((w - 1) as f64, (h - 1) as f64));
        let (a, b) = (lo.ceil().max(0.0), hi.floor().min(g.w as f64 - 1.0));
        let (a, b) = if a <= b { (a as usize, b as usize + 1) } else { (0, 0) };
        let at_edge = |x: usize| {
            let (u, v) = g.along(start, x);
            edge(u, v)
        };
        let inner = |x: usize| {
            let (u, v) = g.along(start, x);
            let (xi, yi) = (u as u32 as usize, v as u32 as usize);
            bilinear_at(img, xi, yi, u - xi as f32, v - yi as f32)
        };
        for x in 0..a.min(g.w) {
            out.one(y, x, at_edge(x));
        }
        // The lane arithmetic (register::bilinear's, lane by lane) vectorises; the loads
        // stay scalar.
        let lanes_from = a.next_multiple_of(LANES).min(b);
        let lanes_to = lanes_from + (b - lanes_from) / LANES * LANES;
        for x in a..lanes_from {
            out.one(y, x, inner(x));
        }
        for x0 in (lanes_from..lanes_to).step_by(LANES) {
            let (mut u, mut v) = ([0f32; LANES], [0f32; LANES]);
            for j in 0..LANES {
                (u[j], v[j]) = g.along(start, x0 + j);
            }
            let (mut fx, mut fy, mut at) = ([0f32; LANES], [0f32; LANES], [0usize; LANES]);
            for j in 0..LANES {
                let (xi, yi) = (u[j] as u32, v[j] as u32);
                (fx[j], fy[j]) = (u[j] - xi as f32, v[j] - yi as f32);
                at[j] = yi as usize * w + xi as usize;
            }
            let (mut p, mut q, mut r, mut t) = ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
            for j in 0..LANES {
                let i = at[j];
                (p[j], q[j], r[j], t[j]) =
                    (img.data[i], img.data[i + 1], img.data[i + w], img.data[i + w + 1]);
            }
            let mut values = [0f32; LANES];
            for j in 0..LANES {
                let top = p[j] + (q[j] - p[j]) * fx[j];
                let bot = r[j] + (t[j] - r[j]) * fx[j];
                values[j] = top + (bot - top) * fy[j];
            }
            out.lanes(y, x0, &values);
        }
        for x in lanes_to..b {
            out.one(y, x, inner(x));
        }
        for x in b.max(a)..g.w {
            out.one(y, x, at_edge(x));
        }
    }
}

/// Bilinear sample between pixel (xi, yi) and its right and lower neighbours, as
/// [`Gray::sample`] computes it.
#[inline]
fn bilinear_at(img: &Gray, xi: usize, yi: usize, fx: f32, fy: f32) -> f32 {
    let (r0, r1) = (&img.data[yi * img.w..], &img.data[(yi + 1) * img.w..]);
    register::bilinear(r0, r1, xi, xi + 1, fx, fy)
}

/// Pixels the fused fold computes at once.
const LANES: usize = 8;

/// How far inside the picture (in pixels) a position must be for the unchecked bilinear
/// path: far above f32 rounding at any picture size this reads.
const MARGIN: f64 = 1e-2;

/// The range of x for which `p0 + d x` lies at least [`MARGIN`] inside [0, max] on both
/// axes (empty when low > high).
fn inside(p0: (f64, f64), d: (f64, f64), max: (f64, f64)) -> (f64, f64) {
    let axis = |p0: f64, d: f64, max: f64| -> (f64, f64) {
        let (lo, hi) = (MARGIN, max - MARGIN);
        if d.abs() < 1e-12 {
            if (lo..=hi).contains(&p0) {
                (f64::NEG_INFINITY, f64::INFINITY)
            } else {
                (1.0, 0.0)
            }
        } else {
            let (t0, t1) = ((lo - p0) / d, (hi - p0) / d);
            (t0.min(t1), t0.max(t1))
        }
    };
    let (a, b) = (axis(p0.0, d.0, max.0), axis(p0.1, d.1, max.1));
    (a.0.max(b.0), a.1.min(b.1))
}

/// Shapes (rotation, stretch) the mark's periodic lattice suggests, found without the key:
/// the autocorrelation of the accumulated residual peaks at the tile's lattice vectors.
/// Returns at most a few shapes that are not the identity (the plain search covers that).
fn lattice_shapes(acc: &Gray) -> Vec<Linear> {
    let (w, h) = (acc.w, acc.h);
    if w < TILE_PX / 2 || h < TILE_PX / 2 {
        return Vec::new();
    }
    let mean = acc.data.iter().sum::<f32>() / acc.data.len() as f32;
    let mut buf: Vec<Complex32> = acc.data.iter().map(|&v| Complex32::new(v - mean, 0.0)).collect();
    let mut fft = Fft2d::new(w, h);
    fft.forward(&mut buf);
    for c in buf.iter_mut() {
        *c = Complex32::new(c.norm_sqr().sqrt(), 0.0);
    }
    fft.inverse(&mut buf);
    let at = |dx: i64, dy: i64| -> f64 {
        f64::from(buf[(dy.rem_euclid(h as i64) as usize) * w + dx.rem_euclid(w as i64) as usize].re)
    };
    // Lattice periods the scale search covers: a tile of 128 mark pixels at 0.5-2 mark
    // pixels per analysis pixel; directions within 12 degrees of the axes.
    let (rmin, rmax) = (TILE_PX as f64 / 2.05, TILE_PX as f64 * 2.05);
    let lim = (rmax.ceil() as i64).min(w as i64 / 2 - 2).min(h as i64 / 2 - 2).max(1);
    let mut ring = Vec::new();
    for dy in -lim..=lim {
        for dx in -lim..=lim {
            let r = ((dx * dx + dy * dy) as f64).sqrt();
            if r >= rmin && r <= rmax {
                ring.push((at(dx, dy), dx, dy));
            }
        }
    }
    if ring.len() < 100 {
        return Vec::new();
    }
    let n = ring.len() as f64;
    let mu = ring.iter().map(|v| v.0).sum::<f64>() / n;
    let sd = (ring.iter().map(|v| (v.0 - mu).powi(2)).sum::<f64>() / n).sqrt().max(1e-12);
    let para = |l: f64, c: f64, r: f64| {
        let d = l - 2.0 * c + r;
        if d.abs() > 1e-12 {
            (0.5 * (l - r) / d).clamp(-0.5, 0.5)
        } else {
            0.0
        }
    };
    // Local maxima well above the ring's spread, refined to sub-pixel, by axis.
    let mut along_x = Vec::new();
    let mut along_y = Vec::new();
    for &(v, dx, dy) in &ring {
        let z = (v - mu) / sd;
        if z < LATTICE_MIN_Z
            || !(-2..=2).all(|ey| (-2..=2).all(|ex| (ex == 0 && ey == 0) || at(dx + ex, dy + ey) <= v))
        {
            continue;
        }
        let fx = dx as f64 + para(at(dx - 1, dy), v, at(dx + 1, dy));
        let fy = dy as f64 + para(at(dx, dy - 1), v, at(dx, dy + 1));
        let angle = fy.atan2(fx).to_degrees();
        if dx > 0 && angle.abs() <= 12.0 {
            along_x.push((z, fx, fy));
        } else if dy > 0 && (angle - 90.0).abs() <= 12.0 {
            along_y.push((z, fx, fy));
        }
    }
    let best = |v: &mut Vec<(f64, f64, f64)>| {
        v.sort_by(|a, b| b.0.total_cmp(&a.0));
        v.truncate(2);
    };
    best(&mut along_x);
    best(&mut along_y);
    let mut shapes: Vec<Linear> = Vec::new();
    let mut keep = |shape: Linear| {
        let (rot, stretch) = shape.rotation_and_stretch();
        // The plain search (square pixels, no rotation) covers what is close to it.
        let plain = rot.abs() < 0.3 && (stretch - 1.0).abs() < 0.015;
        let seen = shapes.iter().any(|o| {
            let (r2, s2) = o.rotation_and_stretch();
            (r2 - rot).abs() < 0.1 && (s2 - stretch).abs() < 0.003
        });
        if !plain && !seen && (0.7..=1.43).contains(&stretch) && shapes.len() < MAX_LATTICE_SHAPES {
            shapes.push(shape);
        }
    };
    // First the shape all lattice points agree on, then the single peaks' shapes: both
    // axes found, rotation and stretch; one axis only, a rotation of square pixels.
    if let Some(shape) = lattice_from_sums(&at, (w, h), (mu, sd)) {
        keep(shape);
    }
    let rotation = |deg: f64| Linear(shape_map((deg, 1.0, 1.0)));
    for &(_, px, py) in &along_x {
        for &(_, qx, qy) in &along_y {
            let det = px * qy - qx * py;
            if det <= 0.0 {
                continue;
            }
            let k = det.sqrt();
            keep(Linear([[px / k, qx / k], [py / k, qy / k]]));
        }
    }
    for &(_, px, py) in along_x.iter().take(1) {
        keep(rotation(py.atan2(px).to_degrees()));
    }
    for &(_, qx, qy) in along_y.iter().take(1) {
        keep(rotation((-qx).atan2(qy).to_degrees()));
    }
    shapes
}

/// The lattice shape (rotation, stretch) whose points the autocorrelation `at` (of a `w` x
/// `h` picture; `mu`, `sd`: its mean and spread over the lattice ring) is highest at, summed over
/// several lattice vectors at once (p, q, p + q, p - q, 2p, ...): a rotated and zoomed
/// lattice whose single peaks are lost among the host's and the codec's is found by all
/// of them together. Coarse steps on the autocorrelation's 3x3 maximum, then fine steps
/// around the best few. `None` when no shape stands out.
fn lattice_from_sums(
    at: &dyn Fn(i64, i64) -> f64,
    (w, h): (usize, usize),
    (mu, sd): (f64, f64),
) -> Option<Linear> {
    const POINTS: [(f64, f64); 8] =
        [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, -1.0), (2.0, 0.0), (0.0, 2.0), (2.0, 1.0), (1.0, 2.0)];
    let (hw, hh) = (w as f64 / 2.0 - 2.0, h as f64 / 2.0 - 2.0);
    let bilinear = |x: f64, y: f64| {
        let (ix, iy) = (x.floor() as i64, y.floor() as i64);
        let (fx, fy) = (x - ix as f64, y - iy as f64);
        let v = at(ix, iy) * (1.0 - fx) * (1.0 - fy)
            + at(ix + 1, iy) * fx * (1.0 - fy)
            + at(ix, iy + 1) * (1.0 - fx) * fy
            + at(ix + 1, iy + 1) * fx * fy;
        (v - mu) / sd
    };
    let widest = |x: f64, y: f64| {
        let (ix, iy) = (x.round() as i64, y.round() as i64);
        let mut m = f64::MIN;
        for dy in -1..=1 {
            for dx in -1..=1 {
                m = m.max(at(ix + dx, iy + dy));
            }
        }
        (m - mu) / sd
    };
    let score = |shape: (f64, f64, f64), sample: &dyn Fn(f64, f64) -> f64, points: usize| -> f64 {
        let m = shape_map(shape);
        let t = TILE_PX as f64;
        let (mut sum, mut n) = (0.0, 0usize);
        for &(i, j) in &POINTS[..points] {
            let (x, y) = ((m[0][0] * i + m[0][1] * j) * t, (m[1][0] * i + m[1][1] * j) * t);
            if x.abs() < hw && y.abs() < hh {
                sum += sample(x, y);
                n += 1;
            }
        }
        if n >= 3.min(points) {
            sum / (n as f64).sqrt()
        } else {
            f64::NAN
        }
    };
    let grid = |lo: f64, hi: f64, step: f64| -> Vec<f64> {
        let n = ((hi - lo) / step).ceil() as usize;
        (0..=n).map(|k| lo + (hi - lo) * k as f64 / n.max(1) as f64).collect()
    };
    // Coarse, on the four shortest vectors: 0.4 degrees, 0.8% in stretch and scale (log
    // steps), under a pixel and a half at the longest of them. Scales from 0.75: below, a
    // lattice of 64-96 px lands on the copy's 16-px codec block grid at some rotation and
    // stretch, which outscores the mark (seen on city). The scale search still covers them.
    let rots = grid(-LATTICE_MAX_ROT, LATTICE_MAX_ROT, 0.4);
    let stretches: Vec<f64> = grid(0.72f64.ln(), 1.4f64.ln(), 0.008).into_iter().map(f64::exp).collect();
    let scales: Vec<f64> = grid(0.75f64.ln(), 2.05f64.ln(), 0.008).into_iter().map(f64::exp).collect();
    // Every coarse score (for their spread) and the best few, in order, earlier first
    // among equals.
    let mut scores: Vec<f64> = Vec::with_capacity(rots.len() * stretches.len() * scales.len());
    let mut top: Vec<(f64, (f64, f64, f64))> = Vec::with_capacity(REFINED + 1);
    for &r in &rots {
        for &st in &stretches {
            for &sc in &scales {
                let v = score((r, st, sc), &widest, 4);
                if v.is_finite() {
                    scores.push(v);
                    let at = top.partition_point(|t| t.0.total_cmp(&v).is_ge());
                    if at < REFINED {
                        top.insert(at, (v, (r, st, sc)));
                        top.truncate(REFINED);
                    }
                }
            }
        }
    }
    if scores.len() < 100 {
        return None;
    }
    let n = scores.len() as f64;
    let m = scores.iter().sum::<f64>() / n;
    let s = (scores.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt().max(1e-12);
    let mut best: Option<(f64, (f64, f64, f64), f64)> = None;
    for &(z, (r, st, sc)) in &top {
        for dr in -2..=2 {
            for ds in -2..=2 {
                for dk in -2..=2 {
                    let shape = (
                        r + 0.1 * f64::from(dr),
                        st * (0.002 * f64::from(ds)).exp(),
                        sc * (0.002 * f64::from(dk)).exp(),
                    );
                    let v = score(shape, &bilinear, POINTS.len());
                    if v.is_finite() && best.is_none_or(|b| v > b.0) {
                        best = Some((v, shape, z));
                    }
                }
            }
        }
    }
    let (_, shape, coarse_v) = best?;
    let z = (coarse_v - m) / s;
    (z >= LATTICE_SUM_MIN_Z).then(|| Linear(shape_map((shape.0, shape.1, 1.0))))
}

/// Mark-to-analysis map of a (rotation in degrees, stretch, scale): scale x stretch on the
/// picture's axes x rotation.
fn shape_map((rot, stretch, scale): (f64, f64, f64)) -> [[f64; 2]; 2] {
    let (sn, cs) = rot.to_radians().sin_cos();
    let (a, b) = (stretch.sqrt(), 1.0 / stretch.sqrt());
    [[scale * a * cs, -scale * a * sn], [scale * b * sn, scale * b * cs]]
}

/// Rotations the lattice sums try, each side of none (degrees).
const LATTICE_MAX_ROT: f64 = 15.0;
/// Best coarse lattice-sum shapes refined.
const REFINED: usize = 8;
/// A lattice-sum shape must stand this far above all the coarse shapes to be tried.
const LATTICE_SUM_MIN_Z: f64 = 5.5;

/// A lattice peak must stand this far above the autocorrelation's spread to be tried.
const LATTICE_MIN_Z: f64 = 4.5;
/// A reading whose suspect is this many times below the threshold settles a blind trace.
const DECISIVE: f64 = 1e-6;

/// The scales (and shapes) one pilot search tries: coarse steps over a range, then fine
/// steps around the best coarse scale.
#[derive(Clone, Copy, Debug)]
struct ScaleSearch {
    /// Coarse scales are `(1 + coarse_step)^k` for `k` in this range.
    coarse: (i32, i32),
    coarse_step: f64,
    /// Fine scales: the best coarse one times `1 + fine_step * k`, `0 < |k| <= fine_half`.
    fine_half: i32,
    fine_step: f64,
    /// Whether shapes from the mark's lattice (rotation, stretch) join the search.
    lattice: bool,
    /// Whether the views searched are windows of the picture ([`pip_windows`]).
    windows: bool,
    /// The mirrors tried, in pairs (one inverse transform per pair).
    mirrors: &'static [Mirror],
}

impl ScaleSearch {
    fn coarse_scales(&self) -> impl Iterator<Item = f64> + '_ {
        (self.coarse.0..=self.coarse.1).map(|k| (1.0 + self.coarse_step).powi(k))
    }

    fn fine_scales(&self, around: f64) -> impl Iterator<Item = f64> + '_ {
        (-self.fine_half..=self.fine_half)
            .filter(|&k| k != 0)
            .map(move |k| around * (1.0 + self.fine_step * f64::from(k)))
    }

    /// The most (scale, shape, mirror, shift) hypotheses a search of `views` views can
    /// try: what a planned search that was skipped counts for.
    fn most_hypotheses(&self, views: usize) -> f64 {
        let shapes = 1 + if self.lattice { MAX_LATTICE_SHAPES } else { 0 };
        let scales = (self.coarse.1 - self.coarse.0 + 1 + 2 * self.fine_half) as usize;
        // A window search also refines its best windows: fine scales, fitted rectangles,
        // and reads of the fitted window at fine scales.
        let pairs = FIT_EDGES * (FIT_EDGES + 1) / 2;
        let fine = 2 * self.fine_half as usize;
        let fitting = if self.windows { WINDOW_CANDIDATES * (pairs * pairs + 2 * fine + 2) } else { 0 };
        ((views * shapes * scales + fitting) * self.mirrors.len() * TILE_PX * TILE_PX) as f64
    }
}

/// The whole picture: 1% steps anchored at 1 (an unscaled copy is the common case), from
/// 0.5 to 2 mark pixels per analysis pixel, then 0.1% steps around the best; rotations and
/// stretches from the lattice.
const WHOLE_PICTURE: ScaleSearch = ScaleSearch {
    coarse: (-70, 70),
    coarse_step: 0.01,
    fine_half: 10,
    fine_step: 0.001,
    lattice: true,
    windows: false,
    mirrors: &Mirror::ALL,
};

/// A window of the picture that may hold a picture-in-picture: the mark shrunk to between
/// 0.42 and 1 of its size in 2% steps (a window is a third of the picture, so the coarser
/// step misaligns its edges no more than 1% does the whole picture's), then 0.2% steps.
/// Smaller, the mark's 8x8 blocks are under 3.4 pixels: an inset holding the mark at 0.375
/// (3-pixel blocks) was not read even cut out by hand after x264 at crf 23. Unflipped or
/// flipped left-right (a flip upside down is the whole picture's mistake, not an inset's).
const PICTURE_IN_PICTURE: ScaleSearch = ScaleSearch {
    coarse: (-44, 0),
    coarse_step: 0.02,
    fine_half: 10,
    fine_step: 0.002,
    lattice: false,
    windows: true,
    mirrors: &[Mirror::ALL[0], Mirror::ALL[1]],
};

/// At most this many lattice shapes are searched (each counted in the hypotheses).
const MAX_LATTICE_SHAPES: usize = 4;

/// The picture summed modulo the tile: every copy of the periodic mark on top of each other.
#[cfg(test)]
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
#[derive(Clone)]
struct Analysis {
    /// Leaked pixels per analysis pixel, horizontally and vertically.
    factor: (f64, f64),
    /// Sum of the whitened frames.
    acc: Gray,
    /// Sum of the frames themselves: where the mark's mask put its energy.
    host: Gray,
    /// Where this view's pixel (0, 0) is in the whole analysis picture (it may be a window
    /// of it).
    origin: (usize, usize),
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
            Analysis {
                factor: (w as f64 / aw as f64, fy),
                acc: Gray::new(aw, ah),
                host: Gray::new(aw, ah),
                origin: (0, 0),
            }
        })
        .collect()
}

/// Windows of `view` where a picture-in-picture may sit: a third of the picture on each
/// axis, at steps of a sixth, the last flush with the far edge (an inset larger than that
/// is found by fitting the window to it, [`fit_window`]). Read alone, a small inset's mark
/// is not drowned by the rest of the picture.
fn pip_windows(view: &Analysis) -> Vec<Analysis> {
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
            out.push(Analysis {
                factor: view.factor,
                acc: view.acc.crop(x, y, ww, wh),
                host: view.host.crop(x, y, ww, wh),
                origin: (view.origin.0 + x, view.origin.1 + y),
            });
        }
    }
    out
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
    /// with a flip once the flip is taken modulo the tile. (The search does this on the
    /// spectrum, see [`PilotSearch::correlate_mirrored`].)
    #[cfg(test)]
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

/// The pilot's reference tile and its conjugated spectrum: made once per key and shared by
/// every thread's [`PilotSearch`].
struct Pilot {
    #[cfg(test)]
    tile: Vec<f32>,
    conj_spectrum: Vec<Complex32>,
}

impl Pilot {
    fn new(key: &MasterKey) -> Self {
        let tile = pilot_tile(key);
        let mut conj_spectrum: Vec<Complex32> = tile.iter().map(|&v| Complex32::new(v, 0.0)).collect();
        Fft2d::new(TILE_PX, TILE_PX).forward(&mut conj_spectrum);
        conj_spectrum.iter_mut().for_each(|c| *c = c.conj());
        Self {
            #[cfg(test)]
            tile,
            conj_spectrum,
        }
    }
}

/// Which of an accumulation's sets of views a search looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ViewSet {
    /// The plain sums ([`BlindAccumulation::views`]).
    Plain,
    /// The sums moved back by a [`Tracking`] (its index).
    Moved(usize),
    /// Windows of the finest plain view ([`pip_windows`]).
    Windows,
}

/// One folded spectrum of a search: the view (of which set), the map and the way of folding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FoldKey {
    views: ViewSet,
    view: usize,
    map: [[u64; 2]; 2],
    splat: bool,
}

/// What every key's search of an accumulation computes alike, kept for the next key
/// ([`BlindAccumulation::keep_folds`]): the spectra of the coarse hypotheses (`None` for
/// one too small to fold) and each view's lattice shapes. Fine hypotheses (around each
/// key's own best coarse one) are not kept: they would grow with every key.
#[derive(Default)]
struct FoldCache {
    spectra: Mutex<HashMap<FoldKey, Option<Arc<[Complex32]>>>>,
    shapes: Mutex<HashMap<(ViewSet, usize), Vec<Linear>>>,
}

impl FoldCache {
    fn get(&self, key: &FoldKey) -> Option<Option<Arc<[Complex32]>>> {
        self.spectra.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    fn keep(&self, key: FoldKey, spectrum: Option<Arc<[Complex32]>>) {
        self.spectra.lock().unwrap_or_else(|e| e.into_inner()).insert(key, spectrum);
    }

    /// [`lattice_shapes`] of view `view` of `views`, found once.
    fn lattice_shapes(&self, views: ViewSet, view: usize, acc: &Gray) -> Vec<Linear> {
        let kept = self.shapes.lock().unwrap_or_else(|e| e.into_inner()).get(&(views, view)).cloned();
        kept.unwrap_or_else(|| {
            let shapes = lattice_shapes(acc);
            self.shapes.lock().unwrap_or_else(|e| e.into_inner()).insert((views, view), shapes.clone());
            shapes
        })
    }

    fn len(&self) -> usize {
        self.spectra.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Where a hypothesis's spectrum may be kept: the cache, and which view it folds.
#[derive(Clone, Copy)]
struct Cached<'c> {
    cache: &'c FoldCache,
    views: ViewSet,
    view: usize,
}

/// Searches the pilot's correlation peak over geometries: one FFT plan and its buffers,
/// reused for every hypothesis a thread tries.
struct PilotSearch<'p> {
    pilot: &'p Pilot,
    fft: Fft2d,
    folded: Vec<f32>,
    /// Spectrum of the folded tile.
    spectrum: Vec<Complex32>,
    product: Vec<Complex32>,
    surface: Vec<f32>,
    /// Fold by splatting the picture onto the grid ([`fold_splatted`]) instead of
    /// resampling it.
    splat: bool,
}

impl<'p> PilotSearch<'p> {
    fn new(pilot: &'p Pilot) -> Self {
        let n = TILE_PX * TILE_PX;
        Self {
            pilot,
            fft: Fft2d::new(TILE_PX, TILE_PX),
            folded: vec![0f32; n],
            spectrum: vec![Complex32::default(); n],
            product: vec![Complex32::default(); n],
            surface: vec![0f32; n],
            splat: false,
        }
    }

    /// A search that folds by splatting (see [`PilotSearch::splat`]).
    fn splatting(pilot: &'p Pilot) -> Self {
        Self { splat: true, ..Self::new(pilot) }
    }

    /// [`PilotSearch::fold_spectrum`] through `cached`: a spectrum an earlier key's
    /// search folded is copied instead of folded again, and a new one is kept.
    fn fold_spectrum_cached(&mut self, acc: &Gray, map: Linear, cached: Option<Cached>) -> bool {
        let Some(cached) = cached else { return self.fold_spectrum(acc, map) };
        let key = FoldKey {
            views: cached.views,
            view: cached.view,
            map: map.0.map(|r| r.map(f64::to_bits)),
            splat: self.splat,
        };
        if let Some(kept) = cached.cache.get(&key) {
            return kept.map(|spectrum| self.spectrum.copy_from_slice(&spectrum)).is_some();
        }
        let fits = self.fold_spectrum(acc, map);
        cached.cache.keep(key, fits.then(|| self.spectrum.as_slice().into()));
        fits
    }

    /// Folds `acc` resampled by `map` and takes its spectrum; `false` when the image is
    /// too small for half a tile.
    fn fold_spectrum(&mut self, acc: &Gray, map: Linear) -> bool {
        let (w, h) = if self.splat {
            fold_splatted(acc, map, &mut self.folded)
        } else {
            fold_resampled(acc, map, &mut self.folded)
        };
        if w < TILE_PX / 2 || h < TILE_PX / 2 {
            return false;
        }
        for (c, &v) in self.spectrum.iter_mut().zip(&self.folded) {
            *c = Complex32::new(v, 0.0);
        }
        self.fft.forward(&mut self.spectrum);
        true
    }

    /// Best pilot peak of `acc` resampled by `map` over the mirrors: its z, and the
    /// mirror. `None` when the image is too small for a tile.
    fn best_mirror(
        &mut self,
        acc: &Gray,
        map: Linear,
        mirrors: &[Mirror],
        cached: Option<Cached>,
    ) -> Option<(f64, Mirror)> {
        if !self.fold_spectrum_cached(acc, map, cached) {
            return None;
        }
        let mut best = (f64::MIN, Mirror::ALL[0]);
        for pair in mirrors.chunks_exact(2) {
            let (za, zb) = self.correlate_mirror_pair(pair[0], pair[1]);
            for (z, m) in [(za.0, pair[0]), (zb.0, pair[1])] {
                if z > best.0 {
                    best = (z, m);
                }
            }
        }
        Some(best)
    }

    /// Peak of the pilot correlation of `acc` resampled by `map`: its z over the whole
    /// surface and the integer shift; `None` when the image is too small for a tile.
    fn peak(&mut self, acc: &Gray, map: Linear) -> Option<(f64, (usize, usize))> {
        if !self.fold_spectrum(acc, map) {
            return None;
        }
        Some(self.correlate_mirrored(Mirror::ALL[0]))
    }

    /// z and position of the pilot's cyclic correlation peak in the folded tile flipped by
    /// `mirror`. A flip modulo the tile, u -> -u, is k -> -k on the spectrum: one forward
    /// transform serves all four mirrors.
    fn correlate_mirrored(&mut self, mirror: Mirror) -> (f64, (usize, usize)) {
        let n = TILE_PX;
        self.mirrored_product(mirror, false);
        self.fft.inverse(&mut self.product);
        let scale = 1.0 / (n * n) as f32;
        for (o, v) in self.surface.iter_mut().zip(&self.product) {
            *o = v.re * scale;
        }
        surface_peak(&self.surface)
    }

    /// [`PilotSearch::correlate_mirrored`] for two mirrors at once, with one inverse
    /// transform: both correlation surfaces are real, so one is carried in the real part
    /// and the other in the imaginary part.
    fn correlate_mirror_pair(&mut self, a: Mirror, b: Mirror) -> (Peak, Peak) {
        self.mirrored_product(a, false);
        self.mirrored_product(b, true);
        surface_peaks_of_pair(self.fft.inverse_transposed(&mut self.product))
    }

    /// The folded spectrum flipped by `mirror` times the pilot's conjugate spectrum, into
    /// `product`, or, with `add_imaginary`, added to it times i.
    fn mirrored_product(&mut self, mirror: Mirror, add_imaginary: bool) {
        let n = TILE_PX;
        let i = Complex32::new(0.0, 1.0);
        for ky in 0..n {
            let sy = if mirror.vertical { (n - ky) % n } else { ky };
            let (out, pilot) = (&mut self.product[ky * n..][..n], &self.pilot.conj_spectrum[ky * n..][..n]);
            let src = &self.spectrum[sy * n..][..n];
            if add_imaginary {
                if mirror.horizontal {
                    out[0] += i * (src[0] * pilot[0]);
                    for kx in 1..n {
                        out[kx] += i * (src[n - kx] * pilot[kx]);
                    }
                } else {
                    for ((o, &a), &p) in out.iter_mut().zip(src).zip(pilot) {
                        *o += i * (a * p);
                    }
                }
            } else if mirror.horizontal {
                out[0] = src[0] * pilot[0];
                for kx in 1..n {
                    out[kx] = src[n - kx] * pilot[kx];
                }
            } else {
                for ((o, &a), &b) in out.iter_mut().zip(src).zip(pilot) {
                    *o = a * b;
                }
            }
        }
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

/// A correlation peak: its z and where it is.
type Peak = (f64, (usize, usize));

/// z of a correlation surface's highest value over the whole surface, and where it is.
fn surface_peak(surface: &[f32]) -> (f64, (usize, usize)) {
    let n = surface.len() as f64;
    let mean = surface.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = surface.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    let (i, v) =
        surface.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
    ((f64::from(v) - mean) / var.sqrt().max(1e-12), (i % TILE_PX, i / TILE_PX))
}

/// [`surface_peak`] of the real and of the imaginary parts of a complex surface, scaled by
/// `1 / TILE_PX²`, given transposed (see [`Fft2d::inverse_transposed`]); bit for bit the
/// same values, summed in the same order. The two surfaces' sums run side by side: each is
/// one long chain of dependent additions, so two at once cost about what one did.
fn surface_peaks_of_pair(columns: &[Complex32]) -> (Peak, Peak) {
    let n = TILE_PX;
    assert_eq!(columns.len(), n * n);
    let scale = 1.0 / (n * n) as f32;
    let count = (n * n) as f64;
    // `Sum for f64` folds from -0.0; so do these.
    let (mut sum_re, mut sum_im) = (-0.0f64, -0.0f64);
    let (mut best_re, mut best_im) = ((0, f32::MIN), (0, f32::MIN));
    for y in 0..n {
        for x in 0..n {
            let c = columns[x * n + y];
            let (re, im) = (c.re * scale, c.im * scale);
            sum_re += f64::from(re);
            sum_im += f64::from(im);
            if re > best_re.1 {
                best_re = (y * n + x, re);
            }
            if im > best_im.1 {
                best_im = (y * n + x, im);
            }
        }
    }
    let (mean_re, mean_im) = (sum_re / count, sum_im / count);
    let (mut var_re, mut var_im) = (-0.0f64, -0.0f64);
    for y in 0..n {
        for x in 0..n {
            let c = columns[x * n + y];
            var_re += (f64::from(c.re * scale) - mean_re).powi(2);
            var_im += (f64::from(c.im * scale) - mean_im).powi(2);
        }
    }
    let peak = |(i, v): (usize, f32), mean: f64, var: f64| -> Peak {
        ((f64::from(v) - mean) / (var / count).sqrt().max(1e-12), (i % n, i / n))
    };
    (peak(best_re, mean_re, var_re), peak(best_im, mean_im, var_im))
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
    accumulate_blind_tracking(leaked, &Tracking::ALL, config, progress)
}

/// [`accumulate_blind`] with the copy's motion measured only the ways in `trackings`
/// (marks of other layouts that follow motion are then read from the unmoved sums only).
pub fn accumulate_blind_tracking(
    leaked: &Path,
    trackings: &[Tracking],
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
    let windows = pip_windows(&acc.views[0]);
    let mut plan: Vec<Planned> = Vec::new();
    // Newest layout first. With no registry the mark is decoded blind, as new exports lay it out.
    for tracking in Tracking::ALL.into_iter().rev() {
        let Some(moved) = &acc.moved[tracking.index()] else { continue };
        let follows = |s: Scheme| s.tracking() == Some(tracking);
        let moving: Vec<Candidate> = candidates.iter().filter(|c| follows(c.scheme)).cloned().collect();
        if !moving.is_empty() || (candidates.is_empty() && follows(Scheme::default())) {
            let set = ViewSet::Moved(tracking.index());
            plan.push(Planned { views: moved, set, scales: WHOLE_PICTURE, candidates: moving });
        }
    }
    let set = ViewSet::Plain;
    plan.push(Planned { views: &acc.views, set, scales: WHOLE_PICTURE, candidates: candidates.to_vec() });
    if !windows.is_empty() {
        let (set, scales) = (ViewSet::Windows, PICTURE_IN_PICTURE);
        plan.push(Planned { views: &windows, set, scales, candidates: candidates.to_vec() });
    }
    let mut found: Vec<(f64, SlotSums, Registration)> = Vec::with_capacity(plan.len());
    let candidates_family = plan.iter().map(|p| p.candidates.len()).sum();
    // The pilot's family: the searches made, and for a search skipped the most it could
    // have tried.
    let family_after = |found: &[(f64, SlotSums, Registration)]| Family {
        candidates: candidates_family,
        sync_hypotheses: plan
            .iter()
            .enumerate()
            .map(|(i, p)| found.get(i).map_or_else(|| p.scales.most_hypotheses(p.views.len()), |f| f.0))
            .sum(),
    };
    for (i, p) in plan.iter().enumerate() {
        let parent = p.scales.windows.then(|| &acc.views[0]);
        let cache = acc.folds.as_ref().map(|c| (c, p.set));
        found.push(search_and_read(
            &detector, &pilot, p.views, cache, parent, &p.scales, acc.frames, acc.size,
        )?);
        // Only readings that have scored every candidate can settle the trace.
        if i + 1 == plan.len() || !plan[..=i].iter().any(|p| p.candidates.len() == candidates.len()) {
            continue;
        }
        // Readings that already name someone far beyond the threshold (with every planned
        // search in their family) make the next ones pointless; those still count.
        let so_far = family_after(&found);
        let readings: Vec<(&SlotSums, &[Candidate])> =
            found.iter().zip(&plan).map(|(f, p)| (&f.1, p.candidates.as_slice())).collect();
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
    let readings: Vec<(&SlotSums, &[Candidate])> =
        found.iter().zip(&plan).map(|(f, p)| (&f.1, p.candidates.as_slice())).collect();
    let decision = decide_readings(&detector, &readings, family, config.threshold);
    let strongest = (0..found.len())
        .max_by(|&a, &b| detector.pilot_z(&found[a].1).total_cmp(&detector.pilot_z(&found[b].1)))
        .expect("at least one search");
    let (_, _, registration) = found.swap_remove(strongest);
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
    /// Where the grid starts in the view's grid ([`GridMap`] offset).
    start: (f64, f64),
}

/// Aligns `view` (already flipped by the mirror found) under `map`: the pilot's peak gives
/// the tile's shift, and the accumulated residual and the mean picture are resampled so
/// their blocks fall on the tile's. `None` when the view is too small for half a tile.
fn align_view(sync: &mut PilotSearch, view: &Analysis, map: Linear, frames: u64) -> Option<Aligned> {
    let (_, peak) = sync.peak(&view.acc, map)?;
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

/// Windows whose best coarse hypothesis is refined and read ([`search_windows`]).
const WINDOW_CANDIDATES: usize = 8;

/// The window search: every window at every coarse scale, folded by splatting (it costs
/// the window's pixels, not the grid's, which is ten times more for a mark shrunk to
/// 0.3); then the [`WINDOW_CANDIDATES`] windows with the highest peaks are each refined
/// ([`refine_window`]) and the one whose read has the strongest pilot is kept. A peak
/// over a third of the picture barely clears the noise of so many hypotheses; a read of
/// the window fitted to the inset stands well clear. Returns the fitted window (unflipped),
/// its scale and mirror, and the hypotheses tried; `None` when no window holds half a tile.
/// The coarse folds go through `cache`, when given, as folds of the windows' set.
fn search_windows(
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
                let best = sync.best_mirror(&windows[wi].acc, map, scales.mirrors, cached);
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
fn refine_window(
    detector: &Detector,
    pilot: &Pilot,
    window: &Analysis,
    parent: &Analysis,
    scales: &ScaleSearch,
    (scale, mirror): (f64, Mirror),
    frames: u64,
) -> (f64, Analysis, f64, Mirror, usize) {
    let identity = [vec![Linear::IDENTITY]];
    let fine: Vec<Hyp> = scales.fine_scales(scale).map(|s| (0, 0, s)).collect();
    let mut tried = fine.len();
    let best_fine =
        best_hypothesis(pilot, std::slice::from_ref(window), &identity, fine, scales.mirrors, None);
    let (scale, mirror) =
        if best_fine.0 > f64::MIN { (best_fine.1 .2, best_fine.2) } else { (scale, mirror) };
    let map = Linear::IDENTITY.scaled(scale);
    let (fitted, n) = fit_window(detector, pilot, parent, window, (map, mirror), frames);
    tried += n;
    let mut flipped = fitted.clone();
    if !mirror.is_identity() {
        (flipped.acc, flipped.host) = (mirror.apply(&fitted.acc), mirror.apply(&fitted.host));
    }
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
type Hyp = (usize, usize, f64);

/// The hypothesis whose best mirror has the highest pilot peak: its z, itself, the
/// mirror. Every hypothesis is independent: they are tried in parallel, one FFT plan per
/// thread; ties go to the earlier one, so the result does not depend on the threads.
/// Folds go through `cache`, when given, as folds of `views`' set.
fn best_hypothesis(
    pilot: &Pilot,
    views: &[Analysis],
    shapes: &[Vec<Linear>],
    hyps: Vec<Hyp>,
    mirrors: &[Mirror],
    cache: Option<(&FoldCache, ViewSet)>,
) -> (f64, Hyp, Mirror) {
    hyps.into_par_iter()
        .map_init(
            || PilotSearch::new(pilot),
            |sync, (vi, si, scale)| {
                let cached = cache.map(|(cache, views)| Cached { cache, views, view: vi });
                sync.best_mirror(&views[vi].acc, shapes[vi][si].scaled(scale), mirrors, cached)
                    .map_or((f64::MIN, (vi, si, scale), Mirror::ALL[0]), |(z, m)| (z, (vi, si, scale), m))
            },
        )
        .reduce(
            || (f64::MIN, (0, 0, 1.0), Mirror::ALL[0]),
            |a, b| if b.0 > a.0 || (b.0 == a.0 && (b.1, b.2) < (a.1, a.2)) { b } else { a },
        )
}

/// Fits `window` (a crop of `parent`) to the picture-in-picture it holds: the window grown
/// by half its size on every side is read under `map` and `mirror` block by block, pilot
/// slots only ([`Detector::pilot_blocks`]), and the rectangle of blocks whose pilot
/// statistic is highest becomes the window. Only the pilot takes part, so the codeword
/// read there afterwards is as unbiased as anywhere. Returns the window and how many
/// rectangles were tried (each a hypothesis of the search).
fn fit_window(
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
    let crop = |r: [usize; 4]| Analysis {
        factor: parent.factor,
        acc: parent.acc.crop(r[0], r[1], r[2] - r[0], r[3] - r[1]),
        host: parent.host.crop(r[0], r[1], r[2] - r[0], r[3] - r[1]),
        origin: (parent.origin.0 + r[0], parent.origin.1 + r[1]),
    };
    let mut view = crop(grown);
    if !mirror.is_identity() {
        (view.acc, view.host) = (mirror.apply(&view.acc), mirror.apply(&view.host));
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
fn best_block_rectangle(blocks: &[[f64; 2]], bx: usize, by: usize) -> Option<([usize; 4], usize)> {
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
const FIT_MIN_BLOCKS: usize = 8;
/// Window edges are fitted on at most this many positions per axis.
const FIT_EDGES: usize = 40;

/// One planned search of a blind trace: where it looks, how, and whose marks it reads.
struct Planned<'a> {
    views: &'a [Analysis],
    set: ViewSet,
    scales: ScaleSearch,
    candidates: Vec<Candidate>,
}

/// Searches one set of accumulated views for the pilot and reads the mark where it is:
/// the number of hypotheses searched, the slot sums, and the geometry found. The coarse
/// hypotheses' folds go through `cache`, when given, as folds of `views`' set.
#[allow(clippy::too_many_arguments)]
fn search_and_read(
    detector: &Detector,
    pilot: &Pilot,
    views: &[Analysis],
    cache: Option<(&FoldCache, ViewSet)>,
    parent: Option<&Analysis>,
    scales: &ScaleSearch,
    frames: u64,
    acc_size: (usize, usize),
) -> Result<(f64, SlotSums, Registration)> {
    // Coarse scales, then fine ones around the best. Shapes (rotation, stretch) come from
    // the mark's lattice, found without the key.
    let shapes: Vec<Vec<Linear>> = views
        .iter()
        .enumerate()
        .map(|(vi, v)| {
            let lattice = match (scales.lattice, cache) {
                (false, _) => Vec::new(),
                (true, None) => lattice_shapes(&v.acc),
                (true, Some((cache, set))) => cache.lattice_shapes(set, vi, &v.acc),
            };
            std::iter::once(Linear::IDENTITY).chain(lattice).collect()
        })
        .collect();
    let fitted;
    let mut views = views;
    let (vi, si, scale, mirror, mut hypotheses);
    if let Some(parent) = parent {
        let found = search_windows(detector, pilot, views, cache, parent, scales, frames);
        let Some((window, s, m, tried)) = found else {
            return Err(Error::TooSmall {
                width: acc_size.0,
                height: acc_size.1,
                min: BLIND_MIN_SIDE,
                what: "trace without the original (blind); pass --original",
            });
        };
        fitted = [window];
        (views, vi, si, scale, mirror, hypotheses) = (&fitted, 0, 0, s, m, tried);
    } else {
        let coarse: Vec<Hyp> = (0..views.len())
            .flat_map(|vi| (0..shapes[vi].len()).map(move |si| (vi, si)))
            .flat_map(|(vi, si)| scales.coarse_scales().map(move |s| (vi, si, s)))
            .collect();
        hypotheses = coarse.len();
        let best = best_hypothesis(pilot, views, &shapes, coarse, scales.mirrors, cache);
        let (vi0, si0, s0) = best.1;
        let fine: Vec<Hyp> = scales.fine_scales(s0).map(|s| (vi0, si0, s)).collect();
        hypotheses += fine.len();
        let best_fine = best_hypothesis(pilot, views, &shapes, fine, scales.mirrors, None);
        (_, (vi, si, scale), mirror) = if best_fine.0 > best.0 { best_fine } else { best };
    }
    // Read the mirrored copy the right way round: flipping the accumulated pictures is
    // exact (the shape is seen flipped too), and the shift is then found afresh.
    let flipped;
    let view = if mirror.is_identity() {
        &views[vi]
    } else {
        flipped = Analysis {
            factor: views[vi].factor,
            acc: mirror.apply(&views[vi].acc),
            host: mirror.apply(&views[vi].host),
            origin: views[vi].origin,
        };
        &flipped
    };
    let map = shapes[vi][si].mirrored(mirror).scaled(scale);
    // Every scale of the search is too large for a picture this small to hold half a tile.
    let (sums, shift) =
        read_view(detector, &mut PilotSearch::new(pilot), view, map, frames).ok_or(Error::TooSmall {
            width: acc_size.0,
            height: acc_size.1,
            min: BLIND_MIN_SIDE,
            what: "trace without the original (blind); pass --original",
        })?;
    let hypotheses = (hypotheses * scales.mirrors.len() * TILE_PX * TILE_PX) as f64;
    let (rotation_deg, stretch) = shapes[vi][si].rotation_and_stretch();
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
        rotation_deg,
        stretch,
        window,
    };
    Ok((hypotheses, sums, registration))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The straightforward whitening (fresh buffers, sorting median) the reused path must
    /// reproduce exactly.
    fn whiten_reference(img: &Gray) -> Gray {
        let med = img.median3_reference();
        let (w, h) = (img.w, img.h);
        let r: Vec<f32> = img.data.iter().zip(&med.data).map(|(a, b)| a - b).collect();
        let mut out = Gray::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let (x0, x1, y0, y1) =
                    (x.saturating_sub(4), (x + 5).min(w), y.saturating_sub(4), (y + 5).min(h));
                let mut s = 0f64;
                for yy in y0..y1 {
                    for xx in x0..x1 {
                        s += f64::from(r[yy * w + xx]).powi(2);
                    }
                }
                let rms = (s / ((x1 - x0) * (y1 - y0)) as f64).sqrt() as f32;
                out.data[y * w + x] = r[y * w + x] / (rms + 1.0);
            }
        }
        out
    }

    fn plane(w: usize, h: usize, seed: u32) -> tracemark_core::Plane {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        let data = (0..w * h)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                // Smooth ramps plus noise: like pictures, not like white noise.
                ((i % w) as u32 * 2 + (i / w) as u32 + (x >> 28)) as u8
            })
            .collect();
        tracemark_core::Plane::from_vec(data, w, h, w).expect("sizes match")
    }

    /// A textured test picture (smooth ramps plus noise).
    fn gray(w: usize, h: usize, seed: u32) -> Gray {
        Gray::from_plane(&plane(w, h, seed), w, h)
    }

    fn rotation(deg: f64, stretch: f64) -> Linear {
        let (s, c) = deg.to_radians().sin_cos();
        let (a, b) = (stretch.sqrt(), 1.0 / stretch.sqrt());
        Linear([[c * a, -s * b], [s * a, c * b]])
    }

    /// A tile of noise repeated under `shape` (rotation, stretch, scale), plus fresh noise
    /// `noise` times as strong: what an accumulated residual of a rotated copy looks like.
    fn tiled(w: usize, h: usize, shape: (f64, f64, f64), noise: f32) -> Gray {
        let mut x = 0x9E37_79B9u32;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let tile: Vec<f32> = (0..TILE_PX * TILE_PX).map(|_| rand()).collect();
        let m = shape_map(shape);
        let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
        let mut g = Gray::new(w, h);
        for y in 0..h {
            for x in 0..w {
                // Mark coordinates of this pixel: the inverse of the map.
                let (px, py) = (x as f64, y as f64);
                let u = (m[1][1] * px - m[0][1] * py) / det;
                let v = (-m[1][0] * px + m[0][0] * py) / det;
                let (iu, iv) = (
                    u.floor().rem_euclid(TILE_PX as f64) as usize,
                    v.floor().rem_euclid(TILE_PX as f64) as usize,
                );
                g.data[y * w + x] = tile[iv * TILE_PX + iu] + noise * rand();
            }
        }
        g
    }

    #[test]
    fn lattice_sums_find_a_rotated_zoomed_tile_under_noise() {
        // 1.5 degrees and 8% zoom under noise four times the tile's: the tilt-zoom a TV
        // channel does, on a picture the size of an SD copy.
        let acc = tiled(720, 404, (1.5, 1.0, 1.08), 4.0);
        let shapes = lattice_shapes(&acc);
        let found = shapes
            .iter()
            .map(|l| l.rotation_and_stretch())
            .find(|&(r, s)| (r - 1.5).abs() < 0.25 && (s - 1.0).abs() < 0.01);
        assert!(
            found.is_some(),
            "shapes found: {:?}",
            shapes.iter().map(|l| l.rotation_and_stretch()).collect::<Vec<_>>()
        );
        // Plain noise suggests no shape.
        let noise = tiled(720, 404, (0.0, 1.0, 1.0), 1e4);
        assert!(lattice_shapes(&noise).is_empty(), "{:?}", lattice_shapes(&noise).len());
    }

    /// The fast resampler and the fused fold against the per-pixel sampler, bit for bit.
    #[test]
    fn resampling_and_the_fused_fold_match_the_per_pixel_sampler() {
        let maps = [
            Linear::IDENTITY,
            Linear::IDENTITY.scaled(0.5),
            Linear::IDENTITY.scaled(1.37),
            rotation(4.0, 1.0).scaled(0.93),
            rotation(-11.0, 1.3).scaled(1.08),
            rotation(2.0, 0.8).mirrored(Mirror::ALL[1]).scaled(0.71),
        ];
        for (w, h, seed) in [(300, 170, 7), (129, 257, 8), (1, 40, 9), (40, 1, 10)] {
            let img = gray(w, h, seed);
            for map in maps {
                let mut tile = vec![1f32; TILE_PX * TILE_PX];
                let size = fold_resampled(&img, map, &mut tile);
                let resampled = resample_reference(&img, map, (0.0, 0.0));
                assert_eq!(size, (resampled.w, resampled.h), "{w}x{h} {map:?}");
                assert_eq!(tile, fold(&resampled), "{w}x{h} {map:?}");
                for offset in [(0.0, 0.0), (3.25, 7.5)] {
                    let (fast, slow) = (resample(&img, map, offset), resample_reference(&img, map, offset));
                    assert_eq!((fast.w, fast.h), (slow.w, slow.h), "{w}x{h} {map:?}");
                    let same = fast.data.iter().zip(&slow.data).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{w}x{h} {map:?} {offset:?}");
                }
            }
        }
    }

    #[test]
    fn mirrors_on_the_spectrum_match_mirrors_of_the_folded_tile() {
        let key = MasterKey::from_bytes([5; 32]);
        let pilot = Pilot::new(&key);
        let mut search = PilotSearch::new(&pilot);
        // A picture that holds the pilot tile (mirrored, shifted) under texture.
        let (w, h) = (3 * TILE_PX + 17, 2 * TILE_PX + 5);
        let mut img = gray(w, h, 11);
        for y in 0..h {
            for x in 0..w {
                let (tx, ty) = ((w - x + 37) % TILE_PX, (y + 90) % TILE_PX);
                img.data[y * w + x] = 0.05 * img.data[y * w + x] + 4.0 * pilot.tile[ty * TILE_PX + tx];
            }
        }
        let map = Linear::IDENTITY;
        assert!(search.fold_spectrum(&img, map));
        let folded = fold(&resample(&img, map, (0.0, 0.0)));
        let mut best = (f64::MIN, Mirror::ALL[0]);
        for m in Mirror::ALL {
            let mut reflected = vec![0f32; TILE_PX * TILE_PX];
            m.reflect_folded(&folded, &mut reflected);
            let (mut ba, mut bb, mut surface) = (Vec::new(), Vec::new(), vec![0f32; TILE_PX * TILE_PX]);
            let mut fft = Fft2d::new(TILE_PX, TILE_PX);
            crate::fft2d::cross_correlate(
                &mut fft,
                &reflected,
                &pilot.tile,
                false,
                &mut ba,
                &mut bb,
                &mut surface,
            );
            let want = surface_peak(&surface);
            let got = search.correlate_mirrored(m);
            // Two mirrors through one inverse transform give the same two surfaces.
            let partner = Mirror::ALL[(Mirror::ALL.iter().position(|&x| x == m).unwrap() + 2) % 4];
            let (paired, other) = search.correlate_mirror_pair(m, partner);
            let alone = search.correlate_mirrored(partner);
            assert_eq!((paired.1, other.1), (got.1, alone.1), "{m:?} with {partner:?}");
            assert!(
                (paired.0 - got.0).abs() < 1e-3 * got.0.abs().max(1.0),
                "{m:?}: {} vs {}",
                paired.0,
                got.0
            );
            assert!(
                (other.0 - alone.0).abs() < 1e-3 * alone.0.abs().max(1.0),
                "{partner:?}: {} vs {}",
                other.0,
                alone.0
            );
            assert_eq!(got.1, want.1, "{m:?}");
            assert!((got.0 - want.0).abs() < 1e-3 * want.0.abs().max(1.0), "{m:?}: {} vs {}", got.0, want.0);
            if want.0 > best.0 {
                best = (want.0, m);
            }
        }
        // The planted mirror stands out, and the search names it.
        assert!(best.0 > 10.0, "planted pilot z {}", best.0);
        assert_eq!(search.best_mirror(&img, map, &Mirror::ALL, None).map(|b| b.1), Some(best.1));
        assert_eq!(best.1, Mirror { horizontal: true, vertical: false });
    }

    /// The fused statistics of two surfaces at once give what [`surface_peak`] gives on each
    /// surface written out, bit for bit (the null calibration's slices add up only if the
    /// search is the same arithmetic).
    #[test]
    fn paired_surface_peaks_are_surface_peak_bit_for_bit() {
        let key = MasterKey::from_bytes([7; 32]);
        let pilot = Pilot::new(&key);
        let mut search = PilotSearch::new(&pilot);
        let img = gray(2 * TILE_PX + 9, TILE_PX + 40, 3);
        assert!(search.fold_spectrum(&img, Linear::IDENTITY));
        let n = TILE_PX;
        for pair in Mirror::ALL.chunks_exact(2) {
            let (a, b) = (pair[0], pair[1]);
            search.mirrored_product(a, false);
            search.mirrored_product(b, true);
            let mut product = search.product.clone();
            Fft2d::new(n, n).inverse(&mut product);
            let scale = 1.0 / (n * n) as f32;
            let re: Vec<f32> = product.iter().map(|v| v.re * scale).collect();
            let im: Vec<f32> = product.iter().map(|v| v.im * scale).collect();
            let (want_a, want_b) = (surface_peak(&re), surface_peak(&im));
            let (got_a, got_b) = search.correlate_mirror_pair(a, b);
            assert_eq!((got_a.0.to_bits(), got_a.1), (want_a.0.to_bits(), want_a.1), "{a:?}");
            assert_eq!((got_b.0.to_bits(), got_b.1), (want_b.0.to_bits(), want_b.1), "{b:?}");
        }
    }

    /// A picture holding the pilot's tile shrunk by `scale` (shifted by `shift` tile pixels)
    /// under texture.
    fn shrunk_pilot(pilot: &Pilot, (w, h): (usize, usize), scale: f64, shift: (f64, f64)) -> Gray {
        let mut img = gray(w, h, 12);
        let map = Linear::IDENTITY.scaled(scale);
        let g = GridMap::new(&img, map, (0.0, 0.0));
        let n = TILE_PX as f64;
        for y in 0..h {
            for x in 0..w {
                // The grid position of this pixel, then the tile pixel it shows.
                let u = (x as f64 - g.ic.0) / scale - g.c.0 - shift.0;
                let v = (y as f64 - g.ic.1) / scale - g.c.1 - shift.1;
                let (tu, tv) = (u.rem_euclid(n) as usize, v.rem_euclid(n) as usize);
                img.data[y * w + x] = 0.05 * img.data[y * w + x] + 4.0 * pilot.tile[tv * TILE_PX + tu];
            }
        }
        img
    }

    #[test]
    fn splatting_finds_the_pilot_where_resampling_does() {
        let pilot = Pilot::new(&MasterKey::from_bytes([7; 32]));
        for (scale, shift) in [(0.5, (30.0, 77.0)), (0.37, (101.0, 5.0)), (1.3, (64.0, 12.0))] {
            let img = shrunk_pilot(&pilot, (300, 200), scale, shift);
            let map = Linear::IDENTITY.scaled(scale);
            let (mut resampled, mut splatted) = (PilotSearch::new(&pilot), PilotSearch::splatting(&pilot));
            let (a, b) = (resampled.peak(&img, map).unwrap(), splatted.peak(&img, map).unwrap());
            let d = |p: usize, q: usize| {
                (p as i64 - q as i64)
                    .rem_euclid(TILE_PX as i64)
                    .min((q as i64 - p as i64).rem_euclid(TILE_PX as i64))
            };
            assert!(d(a.1 .0, b.1 .0) <= 1 && d(a.1 .1, b.1 .1) <= 1, "scale {scale}: {a:?} vs {b:?}");
            assert!(b.0 > 8.0, "scale {scale}: splatted pilot z {}", b.0);
            // Every picture pixel lands on the tile once, whole.
            let mut tile = vec![0f32; TILE_PX * TILE_PX];
            fold_splatted(&img, map, &mut tile);
            let (total, want) = (
                tile.iter().map(|&v| f64::from(v)).sum::<f64>(),
                img.data.iter().map(|&v| f64::from(v)).sum::<f64>(),
            );
            assert!((total - want).abs() < 1e-3 * want.abs().max(1.0), "scale {scale}: {total} vs {want}");
        }
    }

    #[test]
    fn the_best_block_rectangle_is_the_planted_one() {
        // Noise blocks, and a 12x9 patch of blocks that all agree with the pilot.
        let (bx, by) = (60, 40);
        let mut x = 0x2545_F491u32;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            f64::from(x >> 8) / f64::from(1u32 << 24) - 0.5
        };
        let mut blocks: Vec<[f64; 2]> = (0..bx * by).map(|_| [rand(), 1.0 / 12.0]).collect();
        for j in 20..29 {
            for i in 33..45 {
                blocks[j * bx + i][0] += 0.3;
            }
        }
        let (r, tried) = best_block_rectangle(&blocks, bx, by).unwrap();
        assert!(tried > 1000, "{tried}");
        let err = [r[0] as i64 - 33, r[1] as i64 - 20, r[2] as i64 - 45, r[3] as i64 - 29];
        assert!(err.iter().all(|e| e.abs() <= 2), "{r:?}");
        // Too small a picture for a window: no rectangle.
        assert!(best_block_rectangle(&blocks[..7 * 7], 7, 7).is_none());
    }

    #[test]
    fn windows_cover_the_picture_and_hold_any_quarter_inset_mostly() {
        let view = Analysis {
            factor: (1.0, 1.0),
            acc: Gray::new(1280, 720),
            host: Gray::new(1280, 720),
            origin: (0, 0),
        };
        let windows = pip_windows(&view);
        assert_eq!(windows.len(), 25);
        // An inset a quarter of the picture wide and high, anywhere: some window holds at
        // least two thirds of it on each axis.
        for (x, y) in [(0, 0), (955, 30), (500, 260), (960, 540), (130, 400)] {
            let (iw, ih) = (320usize, 180usize);
            let held = windows
                .iter()
                .map(|w| {
                    let ox = (x + iw).min(w.origin.0 + w.acc.w).saturating_sub(x.max(w.origin.0));
                    let oy = (y + ih).min(w.origin.1 + w.acc.h).saturating_sub(y.max(w.origin.1));
                    (ox as f64 / iw as f64).min(oy as f64 / ih as f64)
                })
                .fold(0f64, f64::max);
            assert!(held >= 2.0 / 3.0, "inset at {x},{y}: {held}");
        }
    }

    #[test]
    fn reused_buffers_give_what_fresh_ones_give() {
        let mut s = FrameScratch::default();
        // Shrinking, same size, growing (a small picture shown on a larger grid), and back.
        for (pw, ph, w, h, seed) in [
            (96, 64, 48, 32, 1),
            (96, 64, 48, 32, 2),
            (40, 30, 40, 30, 3),
            (40, 30, 64, 48, 4),
            (96, 64, 48, 32, 5),
            // Narrower than two half-windows, and just wider.
            (12, 10, 6, 5, 6),
            (18, 10, 9, 5, 7),
        ] {
            let p = plane(pw, ph, seed);
            resize_into(&p, w, h, &mut s);
            let (dw, dh) = (w.min(pw), h.min(ph));
            let mut want = Gray::from_plane(&p, dw, dh);
            if (dw, dh) != (w, h) {
                want = register::scaled(&want, w as f64 / dw as f64, h as f64 / dh as f64);
            }
            assert_eq!(s.picture.data, want.data, "{pw}x{ph} -> {w}x{h}");
            let picture = std::mem::take(&mut s.picture);
            let mut white = std::mem::take(&mut s.white);
            whiten_into(&picture, &mut s, &mut white);
            let reference = whiten_reference(&picture);
            let worst =
                white.data.iter().zip(&reference.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            // The integral image and the direct window sums round differently in the last bits.
            assert!(worst < 1e-4, "{pw}x{ph} -> {w}x{h}: {worst}");
            (s.picture, s.white) = (picture, white);
        }
    }
}
