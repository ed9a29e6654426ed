//! Projective registration: the coarse search over orientations (mirrors, rotations,
//! quarter turns) and the sub-pixel refinement of a full homography.
//!
//! The coarse search turns the leaked thumbnail back by each orientation hypothesis and
//! runs the axis-aligned scale and shift search of [`register::coarse`] on it; the
//! refinement is a robust Levenberg–Marquardt fit of the eight homography parameters and a
//! linear tone map (leaked level = a · source level + b), with pixels that disagree with
//! the fit (logos, tickers, black bars, the background around a picture-in-picture) left
//! out of every step.

#![allow(clippy::needless_range_loop)] // the normal equations read best indexed

use rayon::prelude::*;

use crate::homography::Homography;
use crate::image::{Gray, Ncc};
use crate::register;

/// Orientation hypotheses of the coarse search: (rotation in degrees, mirrored). Small
/// tilts in 5° steps up to ±15° (the refinement's reach covers the gaps), quarter turns,
/// each with and without a left-right mirror (an up-down mirror is a mirror and a half
/// turn).
pub fn orientations() -> Vec<(f64, bool)> {
    let mut out = Vec::new();
    for mirror in [false, true] {
        for a in [0.0, -5.0, 5.0, -10.0, 10.0, -15.0, 15.0, 90.0, 180.0, 270.0] {
            out.push((a, mirror));
        }
    }
    out
}

/// The leaked thumbnail turned back by an orientation: `turned(q) = leak(T q)`, with `T`
/// (returned) mapping the turned picture's coordinates to the leaked picture's. Outside the
/// leaked picture the turned one holds the leaked picture's mean (no edge to lock onto).
fn turned(leak: &Gray, angle_deg: f64, mirror: bool) -> (Gray, Homography) {
    let quarter = ((angle_deg / 90.0).round() as i64).rem_euclid(2) == 1 && (angle_deg % 90.0).abs() < 1e-9;
    let (w, h) = if quarter { (leak.h, leak.w) } else { (leak.w, leak.h) };
    let centre = |w: usize, h: usize| (w as f64 / 2.0, h as f64 / 2.0);
    let t = Homography::turn(angle_deg.to_radians(), mirror, centre(w, h), centre(leak.w, leak.h));
    let mean = leak.data.iter().sum::<f32>() / leak.data.len().max(1) as f32;
    let mut out = Gray::new(w, h);
    for j in 0..h {
        for i in 0..w {
            out.data[j * w + i] = t.map_pixel(i, j).and_then(|(x, y)| leak.sample(x, y)).unwrap_or(mean);
        }
    }
    (out, t)
}

/// Coarse registration over every orientation of [`orientations`] on thumbnails made with
/// the same downscale factor, each candidate refined projectively on the thumbnails:
/// the `keep` best homographies (thumbnail pixels), best first, with their robust NCC.
pub fn coarse_oriented(src: &Gray, leak: &Gray, keep: usize) -> Vec<(Homography, f64)> {
    let mut found: Vec<(Homography, f64)> = orientations()
        .into_par_iter()
        .flat_map_iter(|(angle, mirror)| {
            let (t_leak, t) = turned(leak, angle, mirror);
            register::coarse_with_step(src, &t_leak, 2, 1.04)
                .into_iter()
                .filter_map(|(g, _)| {
                    let h = t.then_after(&Homography::from_geometry(&g));
                    refine(src, leak, h, 1, 30)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    found.sort_by(|a, b| b.1.total_cmp(&a.1));
    // The same answer reached from neighbouring orientations counts once.
    let mut out: Vec<(Homography, f64)> = Vec::new();
    for (h, v) in found {
        if out.iter().all(|(o, _)| o.corner_distance(&h, src.w as f64, src.h as f64) > 1.0) {
            out.push((h, v));
        }
        if out.len() == keep {
            break;
        }
    }
    out
}

/// One sample of the fit: where it is in the source (normalised coordinates) and its level.
#[derive(Clone, Copy)]
struct Sample {
    xn: f64,
    yn: f64,
    s: f64,
}

/// The least fraction of the source that must stay visible for a fit to count.
const MIN_COVERED: f64 = 0.04;

/// Robust Levenberg–Marquardt refinement of `h` (source → leaked, in the pixels of `src`
/// and `leak`), sampling every `step`-th source pixel, at most `iterations` steps. Returns
/// the refined map and the NCC over the pixels it kept, or `None` when the fit leaves the
/// picture (too little of the source visible) or degenerates.
pub fn refine(
    src: &Gray,
    leak: &Gray,
    h: Homography,
    step: usize,
    iterations: usize,
) -> Option<(Homography, f64)> {
    // Normalised coordinates keep the normal equations well conditioned.
    let (ss, cxs, cys) = ((src.w.max(src.h) as f64) / 2.0, src.w as f64 / 2.0, src.h as f64 / 2.0);
    let (sl, cxl, cyl) = ((leak.w.max(leak.h) as f64) / 2.0, leak.w as f64 / 2.0, leak.h as f64 / 2.0);
    let ns = Homography([1.0 / ss, 0.0, -cxs / ss, 0.0, 1.0 / ss, -cys / ss, 0.0, 0.0, 1.0]);
    let nl = Homography([1.0 / sl, 0.0, -cxl / sl, 0.0, 1.0 / sl, -cyl / sl, 0.0, 0.0, 1.0]);
    let mut p = nl.then_after(&h.then_after(&ns.inverse()?)).0;
    let samples: Vec<Sample> = (0..src.h)
        .step_by(step)
        .flat_map(|j| (0..src.w).step_by(step).map(move |i| (i, j)))
        .map(|(i, j)| Sample {
            xn: (i as f64 + 0.5 - cxs) / ss,
            yn: (j as f64 + 0.5 - cys) / ss,
            s: f64::from(src.data[j * src.w + i]),
        })
        .collect();
    let total = samples.len() as f64;
    // Leaked level at a sample under parameters `p`, with its gradient in normalised
    // leaked coordinates.
    let look = |p: &[f64; 9], sm: &Sample, grad: bool| -> Option<(f64, f64, f64, f64, f64, f64)> {
        let d = p[6] * sm.xn + p[7] * sm.yn + 1.0;
        if d <= 1e-6 {
            return None;
        }
        let (un, vn) = ((p[0] * sm.xn + p[1] * sm.yn + p[2]) / d, (p[3] * sm.xn + p[4] * sm.yn + p[5]) / d);
        let (x, y) = ((un * sl + cxl - 0.5) as f32, (vn * sl + cyl - 0.5) as f32);
        let v = f64::from(leak.sample(x, y)?);
        if !grad {
            return Some((v, 0.0, 0.0, un, vn, d));
        }
        let gx = f64::from(leak.sample(x + 1.0, y)? - leak.sample(x - 1.0, y)?) * 0.5 * sl;
        let gy = f64::from(leak.sample(x, y + 1.0)? - leak.sample(x, y - 1.0)?) * 0.5 * sl;
        Some((v, gx, gy, un, vn, d))
    };
    // Tone map from the start: least squares of source on leaked.
    let tone = |p: &[f64; 9], keep: Option<(f64, f64, f64)>| -> Option<(f64, f64)> {
        let (mut n, mut sx, mut sy, mut sxx, mut sxy) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for sm in &samples {
            let Some((v, ..)) = look(p, sm, false) else { continue };
            if let Some((a, b, cut)) = keep {
                if (a * v + b - sm.s).abs() > cut {
                    continue;
                }
            }
            n += 1.0;
            sx += v;
            sy += sm.s;
            sxx += v * v;
            sxy += v * sm.s;
        }
        let var = sxx - sx * sx / n.max(1.0);
        (n >= 16.0 && var > 1e-6).then(|| {
            let a = (sxy - sx * sy / n) / var;
            (a, (sy - a * sx) / n)
        })
    };
    let (mut a, mut b) = tone(&p, None)?;
    // Residual scale: robust (median absolute residual), so overlays do not set it.
    let sigma_of = |p: &[f64; 9], a: f64, b: f64| -> Option<f64> {
        let mut r: Vec<f64> =
            samples.iter().filter_map(|sm| look(p, sm, false).map(|l| (a * l.0 + b - sm.s).abs())).collect();
        if (r.len() as f64) < MIN_COVERED * total || r.len() < 16 {
            return None;
        }
        let mid = r.len() / 2;
        let (_, m, _) = r.select_nth_unstable_by(mid, f64::total_cmp);
        Some((1.4826 * *m).max(2.5))
    };
    let mut cut = 3.0 * sigma_of(&p, a, b)?;
    // The first tone map saw every pixel, overlays too: fit it again on the ones that agree.
    for _ in 0..3 {
        if let Some((na, nb)) = tone(&p, Some((a, b, cut))) {
            a = na;
            b = nb;
        }
        cut = 3.0 * sigma_of(&p, a, b)?;
    }
    let cost = |p: &[f64; 9], a: f64, b: f64, cut: f64| -> f64 {
        // Truncated quadratic: an outlier costs the same wherever it is; a sample that leaves
        // the picture costs as much as an outlier, so the fit cannot win by looking away.
        samples
            .iter()
            .map(|sm| match look(p, sm, false) {
                Some(l) => (a * l.0 + b - sm.s).powi(2).min(cut * cut),
                None => cut * cut,
            })
            .sum()
    };
    let mut current = cost(&p, a, b, cut);
    let mut lambda = 1e-3;
    for _ in 0..iterations {
        let mut jtj = [[0f64; 10]; 10];
        let mut jtr = [0f64; 10];
        for sm in &samples {
            let Some((v, gx, gy, un, vn, d)) = look(&p, sm, true) else { continue };
            let r = a * v + b - sm.s;
            if r.abs() > cut {
                continue;
            }
            let (x, y) = (sm.xn, sm.yn);
            let (gx, gy) = (a * gx / d, a * gy / d);
            let jac = [
                gx * x,
                gx * y,
                gx,
                gy * x,
                gy * y,
                gy,
                -(gx * un + gy * vn) * x,
                -(gx * un + gy * vn) * y,
                v,
                1.0,
            ];
            for r_ in 0..10 {
                jtr[r_] += jac[r_] * r;
                for c in r_..10 {
                    jtj[r_][c] += jac[r_] * jac[c];
                }
            }
        }
        for r_ in 0..10 {
            for c in 0..r_ {
                jtj[r_][c] = jtj[c][r_];
            }
        }
        let mut improved = false;
        for _ in 0..6 {
            let mut m = jtj;
            for (k, row) in m.iter_mut().enumerate() {
                row[k] += lambda * jtj[k][k].max(1e-9);
            }
            let Some(delta) = solve(m, jtr.map(|v| -v)) else {
                lambda *= 10.0;
                continue;
            };
            let mut q = p;
            for k in 0..8 {
                q[k] += delta[k];
            }
            let (qa, qb) = (a + delta[8], b + delta[9]);
            let c = cost(&q, qa, qb, cut);
            if c < current {
                let moved = Homography(q).corner_distance(&Homography(p), 2.0, 2.0) * sl;
                p = q;
                a = qa;
                b = qb;
                lambda = (lambda * 0.3).max(1e-7);
                improved = moved > 1e-3;
                break;
            }
            lambda *= 10.0;
        }
        if !improved {
            break;
        }
        // Re-estimate the tone map and the residual scale on the pixels that agree.
        if let Some((na, nb)) = tone(&p, Some((a, b, cut))) {
            a = na;
            b = nb;
        }
        cut = 3.0 * sigma_of(&p, a, b)?;
        current = cost(&p, a, b, cut);
    }
    let hn = Homography(p);
    let out = nl.inverse()?.then_after(&hn.then_after(&ns));
    // Quality: NCC over the pixels the fit kept, which must cover enough of the source.
    let mut ncc = Ncc::default();
    for sm in &samples {
        if let Some((v, ..)) = look(&p, sm, false) {
            if (a * v + b - sm.s).abs() <= cut {
                ncc.add(sm.s as f32, v as f32);
            }
        }
    }
    let valid = out.0.iter().all(|v| v.is_finite()) && a.abs() > 1e-3;
    (valid && ncc.count() >= MIN_COVERED * total && ncc.count() >= 16.0).then(|| (out, ncc.value()))
}

/// How well `h` registers `src` onto `leak`, judged as [`refine`] judges its result (the
/// NCC over the pixels that agree after a robust tone fit), without moving `h`.
pub fn quality(src: &Gray, leak: &Gray, h: Homography, step: usize) -> Option<f64> {
    refine(src, leak, h, step, 0).map(|(_, q)| q)
}

/// Solves a small dense linear system by Gaussian elimination with partial pivoting.
#[allow(clippy::needless_range_loop)]
pub(crate) fn solve<const N: usize>(mut m: [[f64; N]; N], mut v: [f64; N]) -> Option<[f64; N]> {
    for col in 0..N {
        let piv = (col..N).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[piv][col].abs() < 1e-14 {
            return None;
        }
        m.swap(col, piv);
        v.swap(col, piv);
        for r in col + 1..N {
            let f = m[r][col] / m[col][col];
            for c in col..N {
                m[r][c] -= f * m[col][c];
            }
            v[r] -= f * v[col];
        }
    }
    let mut x = [0f64; N];
    for r in (0..N).rev() {
        let s: f64 = (r + 1..N).map(|c| m[r][c] * x[c]).sum();
        x[r] = (v[r] - s) / m[r][r];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A smooth, textured picture with no symmetry.
    pub(crate) fn textured(w: usize, h: usize) -> Gray {
        let mut g = Gray::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let (xf, yf) = (x as f32, y as f32);
                g.data[y * w + x] = 120.0
                    + 40.0 * (xf * 0.11).sin() * (yf * 0.07).cos()
                    + 30.0 * ((xf + 2.0 * yf) * 0.05).sin()
                    + 20.0 * ((xf * 0.7 + 0.3 * yf).sqrt() * 0.9).cos()
                    + 0.25 * xf
                    - 0.1 * yf;
            }
        }
        g
    }

    /// `src` seen through `h` on a `w` x `h` canvas of level `bg`.
    pub(crate) fn render(src: &Gray, h: &Homography, size: (usize, usize), bg: f32) -> Gray {
        let inv = h.inverse().expect("invertible");
        let mut out = Gray::new(size.0, size.1);
        for j in 0..size.1 {
            for i in 0..size.0 {
                out.data[j * size.0 + i] =
                    inv.map_pixel(i, j).and_then(|(x, y)| src.sample(x, y)).unwrap_or(bg);
            }
        }
        out
    }

    #[test]
    fn solves_a_linear_system() {
        let m = [[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]];
        let x = solve(m, [1.0, 2.0, 3.0]).unwrap();
        for (r, row) in m.iter().enumerate() {
            let v: f64 = row.iter().zip(&x).map(|(a, b)| a * b).sum();
            assert!((v - [1.0, 2.0, 3.0][r]).abs() < 1e-12);
        }
    }

    #[test]
    fn refinement_recovers_a_keystone_from_a_near_guess() {
        let src = textured(160, 120);
        let truth = Homography([0.9, 0.05, 8.0, -0.03, 0.95, 6.0, 3e-4, -2e-4, 1.0]);
        let leak = render(&src, &truth, (170, 125), 16.0);
        let guess = Homography([0.92, 0.0, 6.0, 0.0, 0.93, 7.5, 0.0, 0.0, 1.0]);
        let (h, ncc) = refine(&src, &leak, guess, 1, 60).expect("fits");
        assert!(ncc > 0.99, "{ncc}");
        let err = h.corner_distance(&truth, 160.0, 120.0);
        assert!(err < 0.25, "corner error {err} px");
    }

    #[test]
    fn coarse_oriented_finds_mirrors_and_rotations() {
        let src = textured(128, 96);
        // Known gap, open in issue 10: quarter and half turns of this smooth synthetic
        // picture are not yet recovered (90°: wrong answer; 180°: 4.6 px off).
        for (angle, mirror) in [(0.0, true), (7.0, false), (-12.0, true)] {
            let t = Homography::about_centre(128.0, 96.0, f64::to_radians(angle), mirror);
            let shrink = Homography([0.8, 0.0, 14.0, 0.0, 0.8, 10.0, 0.0, 0.0, 1.0]);
            let truth = shrink.then_after(&t);
            let leak = render(&src, &truth, (128, 96), 0.0);
            let found = coarse_oriented(&src, &leak, 1);
            let (h, ncc) = found[0];
            let err = h.corner_distance(&truth, 128.0, 96.0);
            assert!(err < 1.5 && ncc > 0.98, "{angle} {mirror}: corner error {err}, ncc {ncc}");
        }
    }
}
