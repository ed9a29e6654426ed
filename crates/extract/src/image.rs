//! Float grey images and the few operations registration needs.

use tracemark_core::grid::{downscale_area, downscale_rows_taps, AreaTaps};
use tracemark_core::Plane;

/// An area downscale from planes of one size to images of another, with its taps and
/// between-pass buffer made once and reused for every frame.
#[derive(Clone, Debug)]
pub struct Downscaler {
    src: (usize, usize),
    dst: (usize, usize),
    hx: AreaTaps,
    vy: AreaTaps,
    tmp: Vec<f32>,
}

impl Downscaler {
    /// Downscales `src_w` x `src_h` planes to `dst_w` x `dst_h` (not larger than the plane).
    pub fn new(src_w: usize, src_h: usize, dst_w: usize, dst_h: usize) -> Self {
        assert!(dst_w <= src_w && dst_h <= src_h, "Downscaler never upscales");
        let same = (src_w, src_h) == (dst_w, dst_h);
        Self {
            src: (src_w, src_h),
            dst: (dst_w, dst_h),
            hx: if same { AreaTaps::default() } else { AreaTaps::new(src_w, dst_w) },
            vy: if same { AreaTaps::default() } else { AreaTaps::new(src_h, dst_h) },
            tmp: if same { Vec::new() } else { vec![0.0; (src_h * dst_w).max(src_w)] },
        }
    }

    /// Output size.
    pub fn size(&self) -> (usize, usize) {
        self.dst
    }

    /// Writes the downscaled `p` (which must have the source size) into `out` (`dst_w * dst_h`).
    pub fn run(&mut self, p: &Plane, out: &mut [f32]) {
        assert_eq!((p.width(), p.height()), self.src, "plane size changed");
        let (w, h) = self.dst;
        assert_eq!(out.len(), w * h);
        if self.src == self.dst {
            for (d, row) in out.chunks_exact_mut(w).zip(p.rows()) {
                for (o, &v) in d.iter_mut().zip(row) {
                    *o = f32::from(v);
                }
            }
        } else {
            downscale_area(p, &self.hx, &self.vy, &mut self.tmp, out, w);
        }
    }

    /// [`Downscaler::run`] for a float image of the source size (row-major, `src_w * src_h`).
    pub fn run_f32(&mut self, img: &[f32], out: &mut [f32]) {
        assert_eq!(img.len(), self.src.0 * self.src.1, "image size changed");
        let (w, h) = self.dst;
        assert_eq!(out.len(), w * h);
        if self.src == self.dst {
            out.copy_from_slice(img);
        } else {
            downscale_rows_taps(img.chunks_exact(self.src.0), &self.hx, &self.vy, &mut self.tmp, out, w);
        }
    }
}

/// A row-major grey image of f32 samples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gray {
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
    /// Samples, `w * h`.
    pub data: Vec<f32>,
}

impl Gray {
    /// A zero image.
    pub fn new(w: usize, h: usize) -> Self {
        Self { w, h, data: vec![0.0; w * h] }
    }

    /// Area-downscales (or copies) a plane to `w` x `h` (never upscales: `w`, `h` must not
    /// exceed the plane's size).
    pub fn from_plane(p: &Plane, w: usize, h: usize) -> Self {
        let mut out = Self::new(w, h);
        Downscaler::new(p.width(), p.height(), w, h).run(p, &mut out.data);
        out
    }

    /// Sample at (`x`, `y`) in pixel-centre coordinates (pixel i has centre i), bilinear;
    /// `None` outside.
    #[inline]
    pub fn sample(&self, x: f32, y: f32) -> Option<f32> {
        if !(x >= 0.0 && y >= 0.0 && x <= (self.w - 1) as f32 && y <= (self.h - 1) as f32) {
            return None;
        }
        let (x0, y0) =
            ((x as usize).min(self.w.saturating_sub(2)), (y as usize).min(self.h.saturating_sub(2)));
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        let at = |xx: usize, yy: usize| self.data[yy.min(self.h - 1) * self.w + xx.min(self.w - 1)];
        let top = at(x0, y0) + (at(x0 + 1, y0) - at(x0, y0)) * fx;
        let bot = at(x0, y0 + 1) + (at(x0 + 1, y0 + 1) - at(x0, y0 + 1)) * fx;
        Some(top + (bot - top) * fy)
    }

    /// 3x3 median (edges replicated), whole rows at once: each output row sorts the three
    /// pixels of every column once, then the median of nine is the median of the largest
    /// low, the median middle and the smallest high of three neighbouring columns (Paeth's
    /// network regrouped: 18 min/max a pixel instead of 38 and nine row copies; every
    /// step is lane by lane and vectorises).
    pub fn median3(&self) -> Gray {
        let mut out = Gray::new(self.w, self.h);
        self.median3_into(&mut Vec::new(), &mut out);
        out
    }

    /// [`Gray::median3`] into `out` (resized to match), with `lanes` as reusable scratch:
    /// no allocation once both have grown to this width.
    pub fn median3_into(&self, lanes: &mut Vec<Vec<f32>>, out: &mut Gray) {
        let (w, h) = (self.w, self.h);
        out.reshape(w, h);
        if w < 3 || h < 3 {
            *out = self.median3_reference();
            return;
        }
        lanes.resize_with(3, Vec::new);
        for lane in lanes.iter_mut() {
            lane.resize(w, 0.0);
        }
        let [lo, mid, hi] = &mut lanes[..3] else { unreachable!("three lanes") };
        #[inline(always)]
        fn med3(a: f32, b: f32, c: f32) -> f32 {
            a.min(b).max(a.max(b).min(c))
        }
        for y in 0..h {
            let row = |r: usize| &self.data[r * w..][..w];
            let (r0, r1, r2) = (row(y.saturating_sub(1)), row(y), row((y + 1).min(h - 1)));
            let (lo, mid, hi) = (&mut lo[..w], &mut mid[..w], &mut hi[..w]);
            for x in 0..w {
                let (a, b, c) = (r0[x], r1[x], r2[x]);
                let (a, b) = (a.min(b), a.max(b));
                let (b, c) = (b.min(c), b.max(c));
                let (a, b) = (a.min(b), a.max(b));
                (lo[x], mid[x], hi[x]) = (a, b, c);
            }
            let (lo, mid, hi) = (&*lo, &*mid, &*hi);
            let o = &mut out.data[y * w..][..w];
            // Column x's neighbours are x - 1 and x + 1, the edge column repeated.
            let at = |x: usize, d: isize| (x as isize + d).clamp(0, w as isize - 1) as usize;
            let one = |x: usize| {
                let (l, m, r) = (at(x, -1), x, at(x, 1));
                med3(lo[l].max(lo[m]).max(lo[r]), med3(mid[l], mid[m], mid[r]), hi[l].min(hi[m]).min(hi[r]))
            };
            o[0] = one(0);
            o[w - 1] = one(w - 1);
            // Equal-length shifted slices: no bounds checks, so the loop vectorises.
            let n = w - 2;
            let o = &mut o[1..=n];
            let (l0, l1, l2) = (&lo[..n], &lo[1..=n], &lo[2..]);
            let (m0, m1, m2) = (&mid[..n], &mid[1..=n], &mid[2..]);
            let (h0, h1, h2) = (&hi[..n], &hi[1..=n], &hi[2..]);
            for x in 0..n {
                o[x] =
                    med3(l0[x].max(l1[x]).max(l2[x]), med3(m0[x], m1[x], m2[x]), h0[x].min(h1[x]).min(h2[x]));
            }
        }
    }

    /// The `w` x `h` part of the picture whose top left corner is at (`x`, `y`) (clipped to
    /// the picture).
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Gray {
        let (x, y) = (x.min(self.w), y.min(self.h));
        let (w, h) = (w.min(self.w - x), h.min(self.h - y));
        let mut out = Gray::new(w, h);
        for (o, row) in out.data.chunks_exact_mut(w.max(1)).zip(self.data.chunks_exact(self.w.max(1)).skip(y))
        {
            o.copy_from_slice(&row[x..x + w]);
        }
        out
    }

    /// The picture with rows and columns swapped (pixel (x, y) moved to (y, x)): a quarter
    /// turn once flipped.
    pub fn transposed(&self) -> Gray {
        let mut out = Gray::new(self.h, self.w);
        for (y, row) in self.data.chunks_exact(self.w.max(1)).enumerate() {
            for (x, &v) in row.iter().enumerate() {
                out.data[x * self.h + y] = v;
            }
        }
        out
    }

    /// The picture's fine detail: each pixel minus the mean of the square of side
    /// `2 * radius + 1` around it (the square clipped at the picture's edges). Broad shading
    /// lines up with many wrong maps between two pictures; detail only with the true one.
    pub fn detail(&self, radius: usize) -> Gray {
        let (w, h) = (self.w, self.h);
        let mut out = Gray::new(w, h);
        if w == 0 || h == 0 {
            return out;
        }
        // Box sums along rows, then along columns, from running prefix sums.
        let mut across = vec![0f32; w * h];
        let mut prefix = vec![0f64; w.max(h) + 1];
        for (row, o) in self.data.chunks_exact(w).zip(across.chunks_exact_mut(w)) {
            for (x, &v) in row.iter().enumerate() {
                prefix[x + 1] = prefix[x] + f64::from(v);
            }
            for (x, o) in o.iter_mut().enumerate() {
                let (lo, hi) = (x.saturating_sub(radius), (x + radius + 1).min(w));
                *o = ((prefix[hi] - prefix[lo]) / (hi - lo) as f64) as f32;
            }
        }
        for x in 0..w {
            for y in 0..h {
                prefix[y + 1] = prefix[y] + f64::from(across[y * w + x]);
            }
            for y in 0..h {
                let (lo, hi) = (y.saturating_sub(radius), (y + radius + 1).min(h));
                let mean = (prefix[hi] - prefix[lo]) / (hi - lo) as f64;
                out.data[y * w + x] = self.data[y * w + x] - mean as f32;
            }
        }
        out
    }

    /// Makes this a `w` x `h` image, keeping the allocation (contents unspecified).
    pub fn reshape(&mut self, w: usize, h: usize) {
        self.w = w;
        self.h = h;
        self.data.resize(w * h, 0.0);
    }

    /// Scalar reference for [`Gray::median3`]: sorts each neighbourhood.
    #[doc(hidden)]
    pub fn median3_reference(&self) -> Gray {
        let mut out = Gray::new(self.w, self.h);
        let (w, h) = (self.w as isize, self.h as isize);
        let mut v = [0f32; 9];
        for y in 0..h {
            for x in 0..w {
                let mut n = 0;
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        let (xx, yy) = ((x + dx).clamp(0, w - 1), (y + dy).clamp(0, h - 1));
                        v[n] = self.data[(yy * w + xx) as usize];
                        n += 1;
                    }
                }
                v.sort_unstable_by(f32::total_cmp);
                out.data[(y * w + x) as usize] = v[4];
            }
        }
        out
    }
}

/// Normalised cross-correlation of paired samples.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ncc {
    n: f64,
    sa: f64,
    sb: f64,
    saa: f64,
    sbb: f64,
    sab: f64,
}

impl Ncc {
    /// Adds one pair.
    #[inline]
    pub fn add(&mut self, a: f32, b: f32) {
        let (a, b) = (f64::from(a), f64::from(b));
        self.n += 1.0;
        self.sa += a;
        self.sb += b;
        self.saa += a * a;
        self.sbb += b * b;
        self.sab += a * b;
    }
    /// Pairs added.
    pub fn count(&self) -> f64 {
        self.n
    }
    /// The correlation (0 when undefined).
    pub fn value(&self) -> f64 {
        if self.n < 16.0 {
            return 0.0;
        }
        let va = self.saa - self.sa * self.sa / self.n;
        let vb = self.sbb - self.sb * self.sb / self.n;
        let cov = self.sab - self.sa * self.sb / self.n;
        if va <= 1e-9 || vb <= 1e-9 {
            0.0
        } else {
            cov / (va * vb).sqrt()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_is_each_pixel_less_its_clipped_square_mean() {
        let mut g = Gray::new(19, 11);
        for (n, v) in g.data.iter_mut().enumerate() {
            *v = ((n * 7919) % 251) as f32 + 0.25 * (n % 19) as f32;
        }
        let d = g.detail(2);
        for y in 0..11usize {
            for x in 0..19usize {
                let (mut s, mut c) = (0f64, 0f64);
                for yy in y.saturating_sub(2)..(y + 3).min(11) {
                    for xx in x.saturating_sub(2)..(x + 3).min(19) {
                        s += f64::from(g.data[yy * 19 + xx]);
                        c += 1.0;
                    }
                }
                let want = f64::from(g.data[y * 19 + x]) - s / c;
                assert!((f64::from(d.data[y * 19 + x]) - want).abs() < 1e-3, "({x},{y})");
            }
        }
        // A ramp has no detail away from the edges; a flat picture none anywhere.
        let mut ramp = Gray::new(16, 8);
        for (n, v) in ramp.data.iter_mut().enumerate() {
            *v = 3.0 * (n % 16) as f32 + 5.0 * (n / 16) as f32;
        }
        let d = ramp.detail(2);
        assert!((2..6).all(|y| (2..14).all(|x| d.data[y * 16 + x].abs() < 1e-3)));
        assert!(Gray::new(5, 4).detail(2).data.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn transposed_swaps_rows_and_columns() {
        let mut g = Gray::new(5, 3);
        for (n, v) in g.data.iter_mut().enumerate() {
            *v = n as f32;
        }
        let t = g.transposed();
        assert_eq!((t.w, t.h), (3, 5));
        for y in 0..3 {
            for x in 0..5 {
                assert_eq!(t.data[x * 3 + y], g.data[y * 5 + x], "({x},{y})");
            }
        }
        assert_eq!(t.transposed(), g);
    }

    #[test]
    fn fast_median_agrees_with_reference() {
        let mut x = 12345u32;
        // Narrow pictures (both edge columns next to each other), odd sizes, and a few
        // levels only, so ties are common; the scratch reused across sizes.
        let (mut lanes, mut out) = (Vec::new(), Gray::new(0, 0));
        for (w, h, levels) in [(37, 23, 256), (3, 3, 256), (4, 9, 3), (3, 40, 5), (64, 5, 2), (129, 17, 256)]
        {
            let mut g = Gray::new(w, h);
            for v in g.data.iter_mut() {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *v = ((x >> 16) % levels) as f32 + if x % 7 == 0 { 0.5 } else { 0.0 };
            }
            assert_eq!(g.median3(), g.median3_reference(), "{w}x{h}");
            g.median3_into(&mut lanes, &mut out);
            assert_eq!(out, g.median3_reference(), "{w}x{h}, reused scratch");
        }
        let tiny = Gray { w: 2, h: 2, data: vec![1.0, 5.0, 3.0, 2.0] };
        assert_eq!(tiny.median3(), tiny.median3_reference());
    }
}
