//! Time alignment: which source frame each leaked frame shows, by NCC of thumbnails under
//! the registered geometry.

use super::*;

pub(super) fn nearest(times: &[f64], t: f64) -> usize {
    (0..times.len()).min_by(|&a, &b| (times[a] - t).abs().total_cmp(&(times[b] - t).abs())).unwrap_or(0)
}

/// How leaked time maps to source time: `source = rate * leaked + offset`. A copy cut and
/// re-timed has rate 1; a sped-up copy or a slow-motion replay another rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct TimeMap {
    pub(super) rate: f64,
    pub(super) offset: f64,
}

impl TimeMap {
    pub(super) fn source_time(&self, leaked: f64) -> f64 {
        self.rate * leaked + self.offset
    }

    /// How many `probes` (leaked time, source time) it puts within `tol` of their time.
    fn agrees_with(&self, probes: &[(f64, f64)], tol: f64) -> usize {
        probes.iter().filter(|&&(l, s)| (self.source_time(l) - s).abs() <= tol).count()
    }
}

/// The slowest and fastest play a fitted time map may have.
const RATES: std::ops::RangeInclusive<f64> = 0.25..=4.0;

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// Fits the time map to probes (leaked time, time of the source frame that looks most like
/// it), some of them wrong (a still scene matches many frames). A constant offset (the
/// median) is the answer unless a line through the probes (Theil–Sen: the median of the
/// slopes between probes at least `8 * tol` apart, then the median intercept) agrees with
/// clearly more of them within `tol`: more by two and by a tenth of the probes.
pub(super) fn fit_time_map(probes: &[(f64, f64)], tol: f64) -> TimeMap {
    let offset = median(probes.iter().map(|&(l, s)| s - l).collect()).unwrap_or(0.0);
    let constant = TimeMap { rate: 1.0, offset };
    let slopes: Vec<f64> = probes
        .iter()
        .enumerate()
        .flat_map(|(i, a)| probes[i + 1..].iter().map(move |b| (a, b)))
        .filter(|(a, b)| (b.0 - a.0).abs() >= 8.0 * tol)
        .map(|(a, b)| (b.1 - a.1) / (b.0 - a.0))
        .collect();
    let Some(rate) = median(slopes).filter(|r| RATES.contains(r)) else { return constant };
    let Some(offset) = median(probes.iter().map(|&(l, s)| s - rate * l).collect()) else { return constant };
    let line = TimeMap { rate, offset };
    let (on_line, on_constant) = (line.agrees_with(probes, tol), constant.agrees_with(probes, tol));
    if on_line >= on_constant + 2.max(probes.len() / 10) {
        line
    } else {
        constant
    }
}

/// The thumbnails as time alignment compares them under one geometry. The leaked picture
/// covers a rectangle of the source thumbnail grid; over it, each warped leaked thumbnail
/// is kept as a zero-mean, unit-norm vector and each source thumbnail is summarised by its
/// inverse norm about its mean, so that the NCC of any pair is one dot product (the
/// source's mean drops out against a zero-mean vector) and nothing per source frame is
/// copied.
pub(super) struct TimeIndex<'a> {
    pub(super) src: &'a [Thumb],
    pub(super) x_range: std::ops::Range<usize>,
    pub(super) y_range: std::ops::Range<usize>,
    pub(super) src_inv_norm: Vec<f32>,
    pub(super) leak: Vec<Vec<f32>>,
}

impl<'a> TimeIndex<'a> {
    pub(super) fn new(src: &'a Clip, leak: &Clip, g: &Homography) -> Self {
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
    pub(super) fn ncc(&self, a: usize, k: usize) -> f32 {
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
pub(super) fn dot(a: &[u16], b: &[f32]) -> f32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_re_timed_copy_keeps_rate_one_and_a_replay_gets_its_rate() {
        let dt = 0.04;
        let tol = 1.5 * dt;
        // A copy cut 1.2 s in: source = leaked + 1.2, a quarter of the probes wrong (a
        // still scene's look-alikes).
        let cut: Vec<(f64, f64)> = (0..24)
            .map(|k| {
                let l = k as f64 * 0.2;
                (l, if k % 4 == 3 { (k * 37 % 50) as f64 * 0.1 } else { l + 1.2 })
            })
            .collect();
        let m = fit_time_map(&cut, tol);
        assert!(m.rate == 1.0 && (m.offset - 1.2).abs() < 1e-9, "{m:?}");
        // A slow-motion replay at half speed from 0.5 s, and a copy sped up 1.25x, with the
        // source frame times on a 25 fps grid and wrong probes among them.
        for (rate, start) in [(0.5, 0.5), (1.25, 0.0)] {
            let probes: Vec<(f64, f64)> = (0..24)
                .map(|k| {
                    let l = k as f64 * 0.17;
                    let s = ((rate * l + start) / dt).round() * dt;
                    (l, if k % 5 == 2 { 4.0 - s } else { s })
                })
                .collect();
            let m = fit_time_map(&probes, tol);
            assert!((m.rate - rate).abs() < 0.01 && (m.offset - start).abs() < dt, "{m:?}");
        }
        // Probes that agree on nothing keep the constant offset; so do too few.
        let noise: Vec<(f64, f64)> =
            (0..24).map(|k| (k as f64 * 0.2, (k * 7919 % 97) as f64 * 0.05)).collect();
        assert_eq!(fit_time_map(&noise, tol).rate, 1.0);
        assert_eq!(fit_time_map(&[(0.0, 0.3)], tol), TimeMap { rate: 1.0, offset: 0.3 });
        assert_eq!(fit_time_map(&[], tol), TimeMap { rate: 1.0, offset: 0.0 });
    }
}
