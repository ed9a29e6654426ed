//! The copy's channel: the small linear filter that turns the tone-fitted source into the
//! leaked picture (the codec's and the scaler's blur, a hair of misregistration), fitted
//! on each registered pair by least squares.
//!
//! A copy coded hard loses most of the source's fine detail and noise. Leaked minus
//! source then holds that lost detail with the opposite sign, as strong as the mark or
//! stronger on a noisy picture, in the very frequencies the mark lives in. Leaked minus the
//! *filtered* source holds only the mark as the copy kept it and the codec's own error.
//! The mark cannot bias the fit: it is a keyed, sign-random pattern, uncorrelated with the
//! source it is fitted on.

use tracemark_core::layout::TILE_PX;

use crate::register_projective::solve;

/// Filter radius: taps from -R to R on each axis.
const R: usize = 1;
/// Taps of the filter.
const TAPS: usize = (2 * R + 1) * (2 * R + 1);
/// Unknowns of the fit: the taps and a constant.
const UNKNOWNS: usize = TAPS + 1;
/// Every this many rows and columns a pixel enters the fit: some 1,800 equations for 10
/// unknowns in a region (every second pixel read city at crf 38 no better).
const FIT_STEP: usize = 3;
/// About the side of the regions fitted each with its own channel, in working-grid pixels.
pub(super) const CHANNEL_REGION: usize = TILE_PX;
/// Fewest equations for a fit; with fewer the plain (tone-fitted) source is subtracted.
const MIN_EQUATIONS: usize = 20 * UNKNOWNS;

/// A fitted channel: `leaked(p) ~ sum_k taps[k] * toned(p + d_k) + constant`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Channel {
    taps: [f32; TAPS],
    constant: f32,
}

impl Channel {
    /// The channel that changes nothing.
    pub(super) fn identity() -> Self {
        let mut taps = [0f32; TAPS];
        taps[TAPS / 2] = 1.0;
        Self { taps, constant: 0.0 }
    }

    /// Fits the channel from `toned` (the source after the tone curve, `w` x `h`) to
    /// `leaked` (on the same grid) over the pixels of `rows` x `cols` that are `usable`
    /// and at least [`R`] from the border. The identity when too few pixels are usable
    /// or the equations are singular.
    pub(super) fn fit(
        toned: &[f32],
        leaked: &[f32],
        usable: &[bool],
        w: usize,
        h: usize,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) -> Self {
        let (y0, y1) = (rows.start.max(R), rows.end.min(h.saturating_sub(R)));
        let (x0, x1) = (cols.start.max(R), cols.end.min(w.saturating_sub(R)));
        let mut ata = [[0f64; UNKNOWNS]; UNKNOWNS];
        let mut atb = [0f64; UNKNOWNS];
        let mut n = 0usize;
        let mut x = [0f64; UNKNOWNS];
        x[TAPS] = 1.0;
        for y in (y0..y1).step_by(FIT_STEP) {
            for c in (x0..x1).step_by(FIT_STEP) {
                let p = y * w + c;
                if !usable[p] {
                    continue;
                }
                let mut k = 0;
                for dy in 0..=2 * R {
                    let row = &toned[(y + dy - R) * w + c - R..][..2 * R + 1];
                    for &v in row {
                        x[k] = f64::from(v);
                        k += 1;
                    }
                }
                let b = f64::from(leaked[p]);
                for i in 0..UNKNOWNS {
                    let xi = x[i];
                    atb[i] += xi * b;
                    for (a, &xj) in ata[i][i..].iter_mut().zip(&x[i..]) {
                        *a += xi * xj;
                    }
                }
                n += 1;
            }
        }
        if n < MIN_EQUATIONS {
            return Self::identity();
        }
        // The lower triangle from the upper one.
        for i in 1..UNKNOWNS {
            let (upper, lower) = ata.split_at_mut(i);
            for (j, row) in upper.iter().enumerate() {
                lower[0][j] = row[i];
            }
        }
        match solve(ata, atb) {
            Some(s) => {
                let mut taps = [0f32; TAPS];
                for (t, v) in taps.iter_mut().zip(&s) {
                    *t = *v as f32;
                }
                Self { taps, constant: s[TAPS] as f32 }
            }
            None => Self::identity(),
        }
    }

    /// [`Channel::at`] for the pixels `cols` of row `y`, into `out`.
    pub(super) fn apply_row(
        &self,
        toned: &[f32],
        w: usize,
        h: usize,
        y: usize,
        cols: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        debug_assert_eq!(out.len(), cols.len());
        if y < R || y + R >= h || w < 2 * R + 1 {
            for (o, x) in out.iter_mut().zip(cols) {
                *o = self.at(toned, w, h, x, y);
            }
            return;
        }
        // Border columns one by one; the inside a tap at a time over the whole run, which
        // vectorises.
        let (inner0, inner1) = (cols.start.max(R), cols.end.min(w - R).max(cols.start.max(R)));
        for x in cols.clone().filter(|&x| x < inner0 || x >= inner1) {
            out[x - cols.start] = self.at(toned, w, h, x, y);
        }
        let inner = &mut out[inner0 - cols.start..inner1 - cols.start];
        inner.fill(self.constant);
        let mut k = 0;
        for dy in 0..=2 * R {
            let row = &toned[(y + dy - R) * w..][..w];
            for dx in 0..=2 * R {
                let t = self.taps[k];
                k += 1;
                for (o, &v) in inner.iter_mut().zip(&row[inner0 + dx - R..inner1 + dx - R]) {
                    *o += t * v;
                }
            }
        }
    }

    /// The channel's picture at pixel (`x`, `y`) of `toned` (taps outside the picture
    /// read the nearest border pixel).
    #[inline]
    pub(super) fn at(&self, toned: &[f32], w: usize, h: usize, x: usize, y: usize) -> f32 {
        let mut acc = self.constant;
        let inside = x >= R && y >= R && x + R < w && y + R < h;
        let mut k = 0;
        for dy in 0..=2 * R {
            if inside {
                let row = &toned[(y + dy - R) * w + x - R..][..2 * R + 1];
                for &v in row {
                    acc += self.taps[k] * v;
                    k += 1;
                }
            } else {
                let yy = (y + dy).saturating_sub(R).min(h - 1);
                for dx in 0..=2 * R {
                    let xx = (x + dx).saturating_sub(R).min(w - 1);
                    acc += self.taps[k] * toned[yy * w + xx];
                    k += 1;
                }
            }
        }
        acc
    }
}

/// The pixels of `0..len` a channel reads to give the outputs at `range` on that axis.
pub(super) fn reach(range: &std::ops::Range<usize>, len: usize) -> std::ops::Range<usize> {
    range.start.saturating_sub(R)..(range.end + R).min(len)
}

/// `range` cut into equal runs of about [`CHANNEL_REGION`] (at least one).
pub(super) fn regions(range: std::ops::Range<usize>) -> impl Iterator<Item = std::ops::Range<usize>> {
    let len = range.len();
    let n = ((len + CHANNEL_REGION / 2) / CHANNEL_REGION).max(1);
    (0..n).map(move |k| range.start + k * len / n..range.start + (k + 1) * len / n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Uniform values in [-1, 1) from a fixed seed.
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0).collect()
    }

    /// A textured picture: smooth shapes plus fine grain, levels 20..235.
    fn textured(w: usize, h: usize, seed: u64) -> Vec<f32> {
        let grain = noise(seed, w * h);
        (0..w * h)
            .map(|p| {
                let (x, y) = ((p % w) as f32, (p / w) as f32);
                128.0
                    + 50.0 * (x * 0.09).sin() * (y * 0.05).cos()
                    + 30.0 * ((x + y) * 0.21).sin()
                    + 25.0 * grain[p]
            })
            .collect()
    }

    /// `img` through a 3x3 filter (`taps` row-major), borders clamped.
    fn filtered(img: &[f32], w: usize, h: usize, taps: &[f32; 9], gain: f32, offset: f32) -> Vec<f32> {
        let mut out = vec![0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0f32;
                for (k, t) in taps.iter().enumerate() {
                    let yy = (y + k / 3).saturating_sub(1).min(h - 1);
                    let xx = (x + k % 3).saturating_sub(1).min(w - 1);
                    acc += t * img[yy * w + xx];
                }
                out[y * w + x] = gain * acc + offset;
            }
        }
        out
    }

    fn correlation(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
        let na: f64 = a.iter().map(|&x| f64::from(x).powi(2)).sum();
        let nb: f64 = b.iter().map(|&x| f64::from(x).powi(2)).sum();
        dot / (na * nb).sqrt()
    }

    #[test]
    fn rows_applied_at_once_match_the_pixel_reference() {
        let (w, h) = (37, 11);
        let toned = textured(w, h, 1);
        let coeffs = noise(2, UNKNOWNS);
        let mut taps = [0f32; TAPS];
        taps.copy_from_slice(&coeffs[..TAPS]);
        let ch = Channel { taps, constant: 3.0 * coeffs[TAPS] };
        for y in 0..h {
            for cols in [0..w, 0..1, 3..20, w - 2..w, 5..5] {
                let mut out = vec![f32::NAN; cols.len()];
                ch.apply_row(&toned, w, h, y, cols.clone(), &mut out);
                for (x, o) in cols.zip(&out) {
                    let r = ch.at(&toned, w, h, x, y);
                    assert!((o - r).abs() <= 1e-3 * r.abs().max(1.0), "({x}, {y}): {o} vs {r}");
                }
            }
        }
    }

    #[test]
    fn a_fitted_channel_takes_the_blurred_source_away_and_keeps_the_mark() {
        let (w, h) = (160, 120);
        let src = textured(w, h, 3);
        // A codec-like blur, a contrast change, and a faint sign-random mark.
        let blur = [0.05, 0.1, 0.05, 0.1, 0.4, 0.1, 0.05, 0.1, 0.05];
        let mark: Vec<f32> = noise(4, w * h).iter().map(|v| v.signum()).collect();
        let leaked: Vec<f32> =
            filtered(&src, w, h, &blur, 0.9, 6.0).iter().zip(&mark).map(|(l, m)| l + m).collect();
        let usable = vec![true; w * h];
        let ch = Channel::fit(&src, &leaked, &usable, w, h, 0..h, 0..w);
        let mut predicted = vec![0f32; w * h];
        for y in 0..h {
            ch.apply_row(&src, w, h, y, 0..w, &mut predicted[y * w..][..w]);
        }
        let resid: Vec<f32> = leaked.iter().zip(&predicted).map(|(l, p)| l - p).collect();
        let plain: Vec<f32> = leaked.iter().zip(&src).map(|(l, s)| l - s).collect();
        let (fitted, unfitted) = (correlation(&resid, &mark), correlation(&plain, &mark));
        assert!(fitted > 0.99, "mark in the fitted residual: {fitted}");
        assert!(unfitted < 0.3, "the plain difference is mostly lost detail: {unfitted}");
        for (t, b) in ch.taps.iter().zip(&blur) {
            assert!((t - 0.9 * b).abs() < 0.01, "taps {:?}", ch.taps);
        }
    }

    #[test]
    fn too_few_usable_pixels_leave_the_source_as_it_is() {
        let (w, h) = (64, 64);
        let src = textured(w, h, 5);
        let mut usable = vec![false; w * h];
        usable[..w * 4].fill(true);
        let ch = Channel::fit(&src, &src, &usable, w, h, 0..h, 0..w);
        assert_eq!(ch, Channel::identity());
    }

    #[test]
    fn regions_cover_a_range_in_runs_near_the_tile() {
        for len in [0, 1, 40, 127, 128, 200, 719, 1920] {
            let runs: Vec<_> = regions(7..7 + len).collect();
            assert!(!runs.is_empty());
            assert_eq!(runs[0].start, 7);
            assert_eq!(runs.last().unwrap().end, 7 + len);
            for pair in runs.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
            if len >= CHANNEL_REGION {
                assert!(
                    runs.iter()
                        .all(|r| r.len() * 3 >= CHANNEL_REGION * 2 && r.len() * 2 <= CHANNEL_REGION * 3),
                    "{len}: {runs:?}"
                );
            }
        }
    }
}
