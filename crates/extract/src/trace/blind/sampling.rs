//! Where the mark's grid lands in the leaked picture ([`Linear`], [`GridMap`]), the bilinear
//! resampler, and the fold modulo the tile fused with it (the search folds every hypothesis).

use tracemark_core::layout::TILE_PX;

use super::pilot::Mirror;
use crate::image::Gray;
use crate::register;

/// A linear map from the mark's working grid to analysis pixels: `scale` times a shape
/// (rotation and aspect stretch, unit determinant) found from the mark's own lattice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Linear(pub(super) [[f64; 2]; 2]);

impl Linear {
    pub(super) const IDENTITY: Linear = Linear([[1.0, 0.0], [0.0, 1.0]]);

    pub(super) fn scaled(self, s: f64) -> Linear {
        let m = self.0;
        Linear([[m[0][0] * s, m[0][1] * s], [m[1][0] * s, m[1][1] * s]])
    }

    /// The same map seen in a picture flipped by `mirror` (conjugation by the flip).
    pub(super) fn mirrored(self, mirror: Mirror) -> Linear {
        let (fx, fy) = (if mirror.horizontal { -1.0 } else { 1.0 }, if mirror.vertical { -1.0 } else { 1.0 });
        let m = self.0;
        Linear([[m[0][0], m[0][1] * fx * fy], [m[1][0] * fx * fy, m[1][1]]])
    }

    /// Rotation in degrees (of the mark's x axis) and horizontal-to-vertical stretch.
    pub(super) fn rotation_and_stretch(self) -> (f64, f64) {
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
pub(super) struct GridMap {
    m: [[f64; 2]; 2],
    /// Output size: as large as the input at the map's scale.
    w: usize,
    h: usize,
    /// Output-grid centre minus the offset and the pixel-centre half, and the input centre.
    pub(super) c: (f64, f64),
    pub(super) ic: (f64, f64),
}

impl GridMap {
    pub(super) fn new(img: &Gray, map: Linear, offset: (f64, f64)) -> Self {
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
    pub(super) fn row(&self, y: usize) -> (f64, f64) {
        let m = self.m;
        let (px, py) = (self.c.0, y as f64 + self.c.1);
        (m[0][0] * px + m[0][1] * py + self.ic.0, m[1][0] * px + m[1][1] * py + self.ic.1)
    }

    /// Input position of output pixel `x` of the row that starts at `row`.
    #[inline]
    pub(super) fn along(&self, row: (f64, f64), x: usize) -> (f32, f32) {
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
pub(super) fn fold_splatted(img: &Gray, map: Linear, tile: &mut [f32]) -> (usize, usize) {
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
pub(super) fn resample(img: &Gray, map: Linear, offset: (f64, f64)) -> Gray {
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
pub(super) fn resample_reference(img: &Gray, map: Linear, offset: (f64, f64)) -> Gray {
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

/// The tests' plain `fold` of [`resample`]`(img, map, (0, 0))` into `tile`, without the
/// resampled picture: the same values added in the same order, so the result is
/// bit-identical (the blind search runs this for every hypothesis). A map without rotation
/// (a scale, a stretch, a mirror) samples separably ([`fold_axis`]); `axis` holds its rows.
/// Returns the resampled size.
pub(super) fn fold_resampled(
    img: &Gray,
    map: Linear,
    tile: &mut [f32],
    axis: &mut AxisFold,
) -> (usize, usize) {
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
    if map.0[0][1] == 0.0 && map.0[1][0] == 0.0 && img.w >= 2 && img.h >= 2 {
        fold_axis(img, &g, tile, axis);
    } else {
        resample_rows(img, &g, &mut Folded(tile));
    }
    (g.w, g.h)
}

/// Rows and taps [`fold_axis`] reuses from one hypothesis to the next.
#[derive(Default)]
pub(super) struct AxisFold {
    /// The output columns inside the picture (input column `u` moves monotonically with
    /// the output column, so they are one run; the others read 0), and for each of them the
    /// input column left of it and the fraction.
    inside: std::ops::Range<usize>,
    left: Vec<u32>,
    frac: Vec<f32>,
    /// Two input rows interpolated across (by `left` and `frac`), and which rows they are.
    upper: (usize, Vec<f32>),
    lower: (usize, Vec<f32>),
    /// One output row.
    values: Vec<f32>,
}

/// [`fold_resampled`] for a map without rotation: input column `u` depends on the output
/// column alone and row `v` on the output row alone, so each input row is interpolated
/// across once (and kept while two output rows read it) and each output row is one
/// interpolation between two such rows. Every value is computed with the same f32
/// operations on the same operands as [`resample_rows`]'s (and [`Gray::sample`]'s), and
/// added in the same order: bit for bit the same fold.
fn fold_axis(img: &Gray, g: &GridMap, tile: &mut [f32], s: &mut AxisFold) {
    let (w, h) = (img.w, img.h);
    let (xmax, ymax) = ((w - 1) as f32, (h - 1) as f32);
    let first = g.row(0);
    let u_at = |x: usize| g.along(first, x).0;
    let is_inside = |x: usize| {
        let u = u_at(x);
        u >= 0.0 && u <= xmax
    };
    let a = (0..g.w).find(|&x| is_inside(x)).unwrap_or(g.w);
    let b = (a..g.w).find(|&x| !is_inside(x)).unwrap_or(g.w);
    debug_assert!((b..g.w).all(|x| !is_inside(x)), "one run of columns inside");
    s.inside = a..b;
    s.left.clear();
    s.frac.clear();
    for x in a..b {
        let u = u_at(x);
        let xi = (u as usize).min(w - 2);
        s.left.push(xi as u32);
        s.frac.push(u - xi as f32);
    }
    let across =
        |y: usize, s_inside: &std::ops::Range<usize>, left: &[u32], frac: &[f32], out: &mut Vec<f32>| {
            let r = &img.data[y * w..][..w];
            out.clear();
            out.resize(g.w, 0.0);
            for ((o, &xi), &fx) in out[s_inside.clone()].iter_mut().zip(left).zip(frac) {
                let xi = xi as usize;
                let (p, q) = (r[xi], r[xi + 1]);
                *o = p + (q - p) * fx;
            }
        };
    (s.upper.0, s.lower.0) = (usize::MAX, usize::MAX);
    s.values.resize(g.w, 0.0);
    for y in 0..g.h {
        let v = g.along(g.row(y), 0).1;
        if v >= 0.0 && v <= ymax {
            let yi = (v as usize).min(h - 2);
            let fy = v - yi as f32;
            // Rows kept from the last output row are reused (in either order).
            if s.lower.0 == yi || s.upper.0 == yi + 1 {
                std::mem::swap(&mut s.upper, &mut s.lower);
            }
            if s.upper.0 != yi {
                across(yi, &s.inside, &s.left, &s.frac, &mut s.upper.1);
                s.upper.0 = yi;
            }
            if s.lower.0 != yi + 1 {
                across(yi + 1, &s.inside, &s.left, &s.frac, &mut s.lower.1);
                s.lower.0 = yi + 1;
            }
            for ((o, &top), &bot) in s.values.iter_mut().zip(&s.upper.1).zip(&s.lower.1) {
                *o = top + (bot - top) * fy;
            }
        } else {
            s.values.fill(0.0);
        }
        let row = &mut tile[(y % TILE_PX) * TILE_PX..][..TILE_PX];
        for chunk in s.values.chunks(TILE_PX) {
            for (o, v) in row.iter_mut().zip(chunk) {
                *o += v;
            }
        }
    }
}

/// Where [`resample_rows`] puts the resampled picture: a row at a time, and within a row
/// in x order, a pixel or [`LANES`] pixels at once.
pub(super) trait ResampledRows {
    /// Pixel `x` of row `y`.
    fn one(&mut self, y: usize, x: usize, v: f32);
    /// Pixels `x0..x0 + LANES` of row `y`, `x0` a multiple of [`LANES`].
    fn lanes(&mut self, y: usize, x0: usize, v: &[f32; LANES]);
}

/// Samples `img` bilinearly at every position of the grid `g` (as [`Gray::sample`] does,
/// outside the picture 0) into `out`. Positions safely inside the picture take an
/// unchecked path, [`LANES`] at a time, whose arithmetic vectorises.
#[inline(always)]
pub(super) fn resample_rows(img: &Gray, g: &GridMap, out: &mut impl ResampledRows) {
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
pub(super) fn bilinear_at(img: &Gray, xi: usize, yi: usize, fx: f32, fy: f32) -> f32 {
    let (r0, r1) = (&img.data[yi * img.w..], &img.data[(yi + 1) * img.w..]);
    register::bilinear(r0, r1, xi, xi + 1, fx, fy)
}

/// Pixels the fused fold computes at once.
pub(super) const LANES: usize = 8;

/// How far inside the picture (in pixels) a position must be for the unchecked bilinear
/// path: far above f32 rounding at any picture size this reads.
pub(super) const MARGIN: f64 = 1e-2;

/// The range of x for which `p0 + d x` lies at least [`MARGIN`] inside [0, max] on both
/// axes (empty when low > high).
pub(super) fn inside(p0: (f64, f64), d: (f64, f64), max: (f64, f64)) -> (f64, f64) {
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

/// The picture summed modulo the tile: every copy of the periodic mark on top of each other.
#[cfg(test)]
pub(super) fn fold(img: &Gray) -> Vec<f32> {
    let mut f = vec![0f32; TILE_PX * TILE_PX];
    for y in 0..img.h {
        for x in 0..img.w {
            f[(y % TILE_PX) * TILE_PX + x % TILE_PX] += img.data[y * img.w + x];
        }
    }
    f
}
