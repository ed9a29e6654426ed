//! Time alignment: which source frame each leaked frame shows, by NCC of thumbnails under
//! the registered geometry.

use super::*;

pub(super) fn nearest(times: &[f64], t: f64) -> usize {
    (0..times.len()).min_by(|&a, &b| (times[a] - t).abs().total_cmp(&(times[b] - t).abs())).unwrap_or(0)
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
