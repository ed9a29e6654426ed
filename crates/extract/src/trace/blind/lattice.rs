//! The mark's own lattice: the rotation and stretch of a copy, found without the key from
//! the autocorrelation of the accumulated residual.

use rustfft::num_complex::Complex32;
use tracemark_core::layout::TILE_PX;

use super::pilot::{parabola_vertex, Shape, MAX_LATTICE_SHAPES};
use super::sampling::Linear;
use crate::fft2d::Fft2d;
use crate::image::Gray;

/// Shapes (rotation, stretch, and the scale they were seen at) the mark's periodic lattice
/// suggests, found without the key: the autocorrelation of the accumulated residual peaks
/// at the tile's lattice vectors. Returns at most [`MAX_LATTICE_SHAPES`] shapes that are
/// not the identity (the plain search covers that).
pub(super) fn lattice_shapes(acc: &Gray) -> Vec<Shape> {
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
    let ac: Vec<f64> = buf.iter().map(|c| f64::from(c.re)).collect();
    let at = |dx: i64, dy: i64| -> f64 {
        ac[(dy.rem_euclid(h as i64) as usize) * w + dx.rem_euclid(w as i64) as usize]
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
    let para = parabola_vertex;
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
    let mut shapes: Vec<Shape> = Vec::new();
    let mut keep = |map: Linear, scale: f64| {
        let (rot, stretch) = map.rotation_and_stretch();
        // The plain search (square pixels, no rotation) covers what is close to it.
        let plain = rot.abs() < 0.3 && (stretch - 1.0).abs() < 0.015;
        let seen = shapes.iter().any(|o| {
            let (r2, s2) = o.map.rotation_and_stretch();
            let near = |s: Option<f64>| s.is_some_and(|s| (s / scale).ln().abs() < LATTICE_SCALE_SPAN);
            (r2 - rot).abs() < 0.1 && (s2 - stretch).abs() < 0.003 && near(o.lattice_scale)
        });
        if !plain && !seen && (0.7..=1.43).contains(&stretch) && shapes.len() < MAX_LATTICE_SHAPES {
            shapes.push(Shape { map, lattice_scale: Some(scale) });
        }
    };
    // First the shape all lattice points agree on, then the single peaks' shapes (both
    // axes found: rotation and stretch; one axis only: a rotation of square pixels), then
    // the lattice sums' one-parameter shapes.
    let tile = TILE_PX as f64;
    let sums = lattice_from_sums(&ac, (w, h), (mu, sd));
    let from_sums =
        |&(rot, stretch, scale): &(f64, f64, f64)| (Linear(shape_map((rot, stretch, 1.0))), scale);
    for (map, scale) in sums.iter().take(1).map(from_sums) {
        keep(map, scale);
    }
    let rotation = |deg: f64| Linear(shape_map((deg, 1.0, 1.0)));
    for &(_, px, py) in &along_x {
        for &(_, qx, qy) in &along_y {
            let det = px * qy - qx * py;
            if det <= 0.0 {
                continue;
            }
            let k = det.sqrt();
            keep(Linear([[px / k, qx / k], [py / k, qy / k]]), k / tile);
        }
    }
    for &(_, px, py) in along_x.iter().take(1) {
        keep(rotation(py.atan2(px).to_degrees()), px.hypot(py) / tile);
    }
    for &(_, qx, qy) in along_y.iter().take(1) {
        keep(rotation((-qx).atan2(qy).to_degrees()), qx.hypot(qy) / tile);
    }
    for (map, scale) in sums.iter().skip(1).map(from_sums) {
        keep(map, scale);
    }
    shapes
}

/// The lattice shape (rotation, stretch) whose points the autocorrelation `ac` (of a `w` x
/// `h` picture, row-major, cyclic; `mu`, `sd`: its mean and spread over the lattice ring) is highest at, summed over
/// several lattice vectors at once (p, q, p + q, p - q, 2p, ...): a rotated and zoomed
/// lattice whose single peaks are lost among the host's and the codec's is found by all
/// of them together. Coarse steps on the autocorrelation's 3x3 maximum, then fine steps
/// around the best few. Then the two common one-parameter cases on their own, finely: a
/// rotation of square pixels (a tilted camera or a `rotate` filter) and a stretch without
/// rotation (a wrong aspect ratio). Their searches are far smaller than the general one,
/// so a faint lattice the general search loses among its own null shapes still stands out
/// in them (a 48 dB copy of a 4 s cut rotated 4 degrees: z 5.2-6.3 at the true rotation,
/// 3.5-4.1 at the best other); a fainter one is among their few best peaks, and each
/// shape is cheap to try (the key's search tries it near its lattice's scale only). The
/// shapes as (rotation in degrees, stretch, scale): the general one first, then the
/// rotations' and the stretches' best peaks, in turn; none when the picture is too small
/// to hold the lattice.
pub(super) fn lattice_from_sums(
    ac: &[f64],
    (w, h): (usize, usize),
    (mu, sd): (f64, f64),
) -> Vec<(f64, f64, f64)> {
    const POINTS: [(f64, f64); 8] =
        [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, -1.0), (2.0, 0.0), (0.0, 2.0), (2.0, 1.0), (1.0, 2.0)];
    let (hw, hh) = (w as f64 / 2.0 - 2.0, h as f64 / 2.0 - 2.0);
    // Cyclic indices, and the next one: one division each, not one per tap.
    let wrap = |i: i64, n: usize| i.rem_euclid(n as i64) as usize;
    let next = |i: usize, n: usize| if i + 1 == n { 0 } else { i + 1 };
    let bilinear = |x: f64, y: f64| {
        let (ix, iy) = (x.floor() as i64, y.floor() as i64);
        let (fx, fy) = (x - ix as f64, y - iy as f64);
        let (x0, y0) = (wrap(ix, w), wrap(iy, h));
        let (x1, y1) = (next(x0, w), next(y0, h));
        let (r0, r1) = (&ac[y0 * w..][..w], &ac[y1 * w..][..w]);
        let v = r0[x0] * (1.0 - fx) * (1.0 - fy)
            + r0[x1] * fx * (1.0 - fy)
            + r1[x0] * (1.0 - fx) * fy
            + r1[x1] * fx * fy;
        (v - mu) / sd
    };
    // The autocorrelation's 3x3 maximum, once (rows, then columns: the same maximum).
    let mut across = vec![0f64; w * h];
    for (o, r) in across.chunks_exact_mut(w).zip(ac.chunks_exact(w)) {
        for x in 0..w {
            o[x] = r[(x + w - 1) % w].max(r[x]).max(r[next(x, w)]);
        }
    }
    let mut widest_at = vec![0f64; w * h];
    for y in 0..h {
        let (up, here, down) = ((y + h - 1) % h, y, next(y, h));
        for x in 0..w {
            widest_at[y * w + x] = across[up * w + x].max(across[here * w + x]).max(across[down * w + x]);
        }
    }
    let widest = |x: f64, y: f64| {
        let (ix, iy) = (x.round() as i64, y.round() as i64);
        (widest_at[wrap(iy, h) * w + wrap(ix, w)] - mu) / sd
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
    // How many coarse shapes fit the picture, and the best few, in order, earlier first
    // among equals.
    let mut fitting = 0usize;
    let mut top: Vec<(f64, (f64, f64, f64))> = Vec::with_capacity(REFINED + 1);
    for &r in &rots {
        for &st in &stretches {
            for &sc in &scales {
                let v = score((r, st, sc), &widest, 4);
                if v.is_finite() {
                    fitting += 1;
                    let at = top.partition_point(|t| t.0.total_cmp(&v).is_ge());
                    if at < REFINED {
                        top.insert(at, (v, (r, st, sc)));
                        top.truncate(REFINED);
                    }
                }
            }
        }
    }
    if fitting < 100 {
        return Vec::new();
    }
    let mut best: Option<(f64, (f64, f64, f64))> = None;
    for &(_, (r, st, sc)) in &top {
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
                        best = Some((v, shape));
                    }
                }
            }
        }
    }
    // The best shape is tried whether or not it stands out: on a faint mark the right one
    // stands at z 4.7-5.4 (a 48 dB copy stretched 1.25x), among the host's and the codec's
    // shapes. The key's search decides, and counts its hypotheses.
    let Some((_, general)) = best else { return Vec::new() };
    // One parameter and the scale, in the refinement's steps (0.1 degree, 0.2%): every
    // shape scored, then the best few distinct peaks (apart in the parameter or the scale).
    let fine_scales = grid(0.75f64.ln(), 2.05f64.ln(), 0.002);
    let one_parameter = |values: &[f64], shape: &dyn Fn(f64, f64) -> (f64, f64, f64), apart: f64| {
        let mut all: Vec<(f64, f64, f64)> = Vec::with_capacity(values.len() * fine_scales.len());
        for &v in values {
            for &ls in &fine_scales {
                let z = score(shape(v, ls.exp()), &bilinear, POINTS.len());
                if z.is_finite() {
                    all.push((z, v, ls));
                }
            }
        }
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut peaks: Vec<(f64, f64, f64)> = Vec::with_capacity(ONE_PARAMETER_PEAKS);
        for p in all {
            if peaks.len() == ONE_PARAMETER_PEAKS {
                break;
            }
            if peaks.iter().all(|q| (q.1 - p.1).abs() > apart || (q.2 - p.2).abs() > LATTICE_SCALE_SPAN) {
                peaks.push(p);
            }
        }
        peaks.into_iter().map(|(_, v, ls)| shape(v, ls.exp())).collect::<Vec<_>>()
    };
    let fine_rots = grid(-LATTICE_MAX_ROT, LATTICE_MAX_ROT, 0.1);
    let rotations = one_parameter(&fine_rots, &|r, sc| (r, 1.0, sc), 0.5);
    let log_stretches = grid(0.72f64.ln(), 1.4f64.ln(), 0.002);
    let stretches = one_parameter(&log_stretches, &|ls, sc| (0.0, ls.exp(), sc), 0.01);
    let mut shapes = vec![general];
    for k in 0..ONE_PARAMETER_PEAKS {
        shapes.extend(rotations.get(k));
        shapes.extend(stretches.get(k));
    }
    shapes
}

/// Mark-to-analysis map of a (rotation in degrees, stretch, scale): scale x stretch on the
/// picture's axes x rotation.
pub(super) fn shape_map((rot, stretch, scale): (f64, f64, f64)) -> [[f64; 2]; 2] {
    let (sn, cs) = rot.to_radians().sin_cos();
    let (a, b) = (stretch.sqrt(), 1.0 / stretch.sqrt());
    [[scale * a * cs, -scale * a * sn], [scale * b * sn, scale * b * cs]]
}

/// Rotations the lattice sums try, each side of none (degrees).
pub(super) const LATTICE_MAX_ROT: f64 = 15.0;
/// Best coarse lattice-sum shapes refined.
pub(super) const REFINED: usize = 8;
/// Distinct peaks taken from each one-parameter lattice sum (rotations, stretches).
pub(super) const ONE_PARAMETER_PEAKS: usize = 3;
/// A lattice shape is tried at scales within this (relative, as a log) of its lattice's,
/// or of half of it (a lattice seen at twice its period fits every other point).
pub(super) const LATTICE_SCALE_SPAN: f64 = 0.025;

/// A single lattice peak must stand this far above the autocorrelation's spread to be
/// tried (the lattice sums' shapes are tried whatever their z).
pub(super) const LATTICE_MIN_Z: f64 = 4.5;
