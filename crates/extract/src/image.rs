//! Float grey images and the few operations registration needs.

use tracemark_core::grid::{downscale_area, AreaTaps};
use tracemark_core::Plane;

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
        if (w, h) == (p.width(), p.height()) {
            for (d, row) in out.data.chunks_exact_mut(w).zip(p.rows()) {
                for (o, &v) in d.iter_mut().zip(row) {
                    *o = f32::from(v);
                }
            }
        } else {
            let (hx, vy) = (AreaTaps::new(p.width(), w), AreaTaps::new(p.height(), h));
            let mut tmp = vec![0.0; p.height() * w];
            downscale_area(p, &hx, &vy, &mut tmp, &mut out.data, w);
        }
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

    /// 3x3 median (edges replicated).
    pub fn median3(&self) -> Gray {
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
