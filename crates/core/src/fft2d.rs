//! Small 2-D FFT helper on rustfft: plans made once per size, buffers reused.

use std::sync::Arc;

use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

/// Forward and inverse 2-D FFT of one size (row-major `w` x `h`).
pub struct Fft2d {
    w: usize,
    h: usize,
    row_fwd: Arc<dyn Fft<f32>>,
    row_inv: Arc<dyn Fft<f32>>,
    col_fwd: Arc<dyn Fft<f32>>,
    col_inv: Arc<dyn Fft<f32>>,
    /// The transpose (`h`-long columns, one after another).
    columns: Vec<Complex32>,
    scratch: Vec<Complex32>,
}

/// Writes the transpose of row-major `w` x `h` `src` into `dst` (row-major `h` x `w`).
/// The `transpose` crate's tiles (no bounds checks inside a tile) ran 2.5x faster than our
/// own tiled loop at the tracker's sizes; the tests keep a plain loop as the reference.
fn transpose(src: &[Complex32], dst: &mut [Complex32], w: usize, h: usize) {
    transpose::transpose(src, dst, w, h);
}

impl Fft2d {
    /// Plans for `w` x `h`.
    pub fn new(w: usize, h: usize) -> Self {
        let mut p = FftPlanner::new();
        let (row_fwd, row_inv) = (p.plan_fft_forward(w), p.plan_fft_inverse(w));
        let (col_fwd, col_inv) = (p.plan_fft_forward(h), p.plan_fft_inverse(h));
        let scratch_len = [&row_fwd, &row_inv, &col_fwd, &col_inv]
            .iter()
            .map(|f| f.get_inplace_scratch_len())
            .max()
            .unwrap_or(0);
        Self {
            w,
            h,
            row_fwd,
            row_inv,
            col_fwd,
            col_inv,
            columns: vec![Complex32::default(); w * h],
            scratch: vec![Complex32::default(); scratch_len],
        }
    }

    /// Width.
    pub fn width(&self) -> usize {
        self.w
    }
    /// Height.
    pub fn height(&self) -> usize {
        self.h
    }

    fn run(&mut self, data: &mut [Complex32], inverse: bool) {
        assert_eq!(data.len(), self.w * self.h);
        let (row, col) =
            if inverse { (&self.row_inv, &self.col_inv) } else { (&self.row_fwd, &self.col_fwd) };
        // Rows, then columns as rows of the transpose: rustfft runs many transforms of one
        // length in one call, on contiguous data.
        row.process_with_scratch(data, &mut self.scratch);
        transpose(data, &mut self.columns, self.w, self.h);
        col.process_with_scratch(&mut self.columns, &mut self.scratch);
        transpose(&self.columns, data, self.h, self.w);
    }

    /// Inverse transform (unnormalised) that leaves its result transposed: the value at
    /// `(x, y)` is at `[x * height + y]` of the returned slice, an internal buffer valid
    /// until the next call. `data` is used as scratch. For callers that only read the
    /// result once: it saves the last transpose, and the values are bit for bit those of
    /// [`Fft2d::inverse`].
    pub fn inverse_transposed(&mut self, data: &mut [Complex32]) -> &[Complex32] {
        assert_eq!(data.len(), self.w * self.h);
        self.row_inv.process_with_scratch(data, &mut self.scratch);
        transpose(data, &mut self.columns, self.w, self.h);
        self.col_inv.process_with_scratch(&mut self.columns, &mut self.scratch);
        &self.columns
    }

    /// In-place forward transform.
    pub fn forward(&mut self, data: &mut [Complex32]) {
        self.run(data, false);
    }

    /// In-place inverse transform (unnormalised: divide by `w * h`).
    pub fn inverse(&mut self, data: &mut [Complex32]) {
        self.run(data, true);
    }
}

/// Cyclic cross-correlation surface `c(d) = sum_p a(p) b(p - d)` of two real `w` x `h`
/// images, written into `out`. With `phase_only`, the cross-spectrum is whitened first
/// (phase correlation: a sharp peak, insensitive to brightness and blur).
pub fn cross_correlate(
    fft: &mut Fft2d,
    a: &[f32],
    b: &[f32],
    phase_only: bool,
    buf_a: &mut Vec<Complex32>,
    buf_b: &mut Vec<Complex32>,
    out: &mut [f32],
) {
    load_real(buf_a, a);
    fft.forward(buf_a);
    correlate_with_spectrum(fft, buf_a, b, phase_only, buf_b, out);
}

/// The spectrum [`cross_correlate`] takes of `a` (one picture correlated with many takes it
/// once).
pub fn spectrum(fft: &mut Fft2d, a: &[f32]) -> Vec<Complex32> {
    let mut s = Vec::new();
    load_real(&mut s, a);
    fft.forward(&mut s);
    s
}

/// `buf` := the real picture `a` as complex samples.
fn load_real(buf: &mut Vec<Complex32>, a: &[f32]) {
    buf.clear();
    buf.extend(a.iter().map(|&v| Complex32::new(v, 0.0)));
}

/// [`cross_correlate`] of a picture whose [`spectrum`] is `spectrum_a` (copied into
/// `buf_a`, then overwritten) with `b`: the same surface, bit for bit.
pub fn cross_correlate_spectrum(
    fft: &mut Fft2d,
    spectrum_a: &[Complex32],
    b: &[f32],
    phase_only: bool,
    (buf_a, buf_b): (&mut Vec<Complex32>, &mut Vec<Complex32>),
    out: &mut [f32],
) {
    buf_a.clear();
    buf_a.extend_from_slice(spectrum_a);
    correlate_with_spectrum(fft, buf_a, b, phase_only, buf_b, out);
}

/// The common tail: `buf_a` holds `a`'s spectrum.
fn correlate_with_spectrum(
    fft: &mut Fft2d,
    buf_a: &mut [Complex32],
    b: &[f32],
    phase_only: bool,
    buf_b: &mut Vec<Complex32>,
    out: &mut [f32],
) {
    let n = fft.width() * fft.height();
    load_real(buf_b, b);
    fft.forward(buf_b);
    for (x, y) in buf_a.iter_mut().zip(buf_b.iter()) {
        let p = *x * y.conj();
        *x = if phase_only {
            let m = p.norm();
            if m > 1e-12 {
                p / m
            } else {
                Complex32::default()
            }
        } else {
            p
        };
    }
    fft.inverse(buf_a);
    let scale = 1.0 / n as f32;
    for (o, v) in out.iter_mut().zip(buf_a.iter()) {
        *o = v.re * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiled loop `transpose` replaced.
    fn transpose_reference(src: &[Complex32], dst: &mut [Complex32], w: usize, h: usize) {
        for y in 0..h {
            for x in 0..w {
                dst[x * h + y] = src[y * w + x];
            }
        }
    }

    #[test]
    fn a_spectrum_made_once_correlates_as_the_picture_does() {
        let (w, h) = (30, 20);
        let a: Vec<f32> = (0..w * h).map(|i| ((i * 7919) % 31) as f32).collect();
        let b: Vec<f32> = (0..w * h).map(|i| ((i * 104_729) % 17) as f32 - 8.0).collect();
        let mut fft = Fft2d::new(w, h);
        let (mut ba, mut bb) = (Vec::new(), Vec::new());
        for phase_only in [false, true] {
            let (mut direct, mut reused) = (vec![0f32; w * h], vec![0f32; w * h]);
            cross_correlate(&mut fft, &a, &b, phase_only, &mut ba, &mut bb, &mut direct);
            let s = spectrum(&mut Fft2d::new(w, h), &a);
            cross_correlate_spectrum(&mut fft, &s, &b, phase_only, (&mut ba, &mut bb), &mut reused);
            assert!(
                direct.iter().zip(&reused).all(|(x, y)| x.to_bits() == y.to_bits()),
                "phase only {phase_only}"
            );
        }
    }

    #[test]
    fn transpose_moves_every_value_where_the_plain_loop_does() {
        // The thumbnails' sizes (vtest, city, the pan) and odd ones around the crate's tiles.
        for (w, h) in [(256, 192), (360, 202), (320, 180), (17, 33), (1, 9), (300, 1)] {
            let src: Vec<Complex32> = (0..w * h).map(|k| Complex32::new(k as f32, -0.5 * k as f32)).collect();
            let (mut fast, mut slow) = (vec![Complex32::default(); w * h], vec![Complex32::default(); w * h]);
            transpose(&src, &mut fast, w, h);
            transpose_reference(&src, &mut slow, w, h);
            assert!(fast == slow, "{w}x{h}");
        }
    }

    #[test]
    fn inverse_transposed_is_the_inverse_transposed_bit_for_bit() {
        let (w, h) = (24, 16);
        let data: Vec<Complex32> = (0..w * h)
            .map(|i| Complex32::new(((i * 7919) % 101) as f32 - 50.0, ((i * 31) % 17) as f32))
            .collect();
        let mut fft = Fft2d::new(w, h);
        let mut plain = data.clone();
        fft.inverse(&mut plain);
        let mut scratch = data.clone();
        let columns = fft.inverse_transposed(&mut scratch).to_vec();
        for y in 0..h {
            for x in 0..w {
                let (a, b) = (plain[y * w + x], columns[x * h + y]);
                assert_eq!((a.re.to_bits(), a.im.to_bits()), (b.re.to_bits(), b.im.to_bits()), "({x}, {y})");
            }
        }
    }

    #[test]
    fn finds_a_cyclic_shift() {
        let (w, h) = (32, 16);
        let a: Vec<f32> = (0..w * h).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
        // b(p) = a(p + (5, 3)): then c(d) = sum a(p) b(p - d) peaks at d = (5, 3).
        let mut b = vec![0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                b[y * w + x] = a[((y + 3) % h) * w + (x + 5) % w];
            }
        }
        let mut fft = Fft2d::new(w, h);
        let mut out = vec![0f32; w * h];
        cross_correlate(&mut fft, &a, &b, true, &mut Vec::new(), &mut Vec::new(), &mut out);
        let best = out.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
        assert_eq!((best % w, best / w), (5, 3));
    }

    #[test]
    fn forward_matches_a_textbook_dft() {
        let (w, h) = (16, 8);
        let data: Vec<Complex32> = (0..w * h)
            .map(|i| Complex32::new(((i * 37) % 23) as f32 - 11.0, ((i * 11) % 7) as f32 - 3.0))
            .collect();
        let mut fast = data.clone();
        Fft2d::new(w, h).forward(&mut fast);
        for (v, u) in (0..h).flat_map(|v| (0..w).map(move |u| (v, u))) {
            let mut sum = (0f64, 0f64);
            for (y, x) in (0..h).flat_map(|y| (0..w).map(move |x| (y, x))) {
                let a = -2.0 * std::f64::consts::PI * ((u * x) as f64 / w as f64 + (v * y) as f64 / h as f64);
                let d = data[y * w + x];
                let (re, im) = (f64::from(d.re), f64::from(d.im));
                sum.0 += re * a.cos() - im * a.sin();
                sum.1 += re * a.sin() + im * a.cos();
            }
            let got = fast[v * w + u];
            assert!((f64::from(got.re) - sum.0).abs() < 1e-3 && (f64::from(got.im) - sum.1).abs() < 1e-3);
        }
        let mut back = fast.clone();
        Fft2d::new(w, h).inverse(&mut back);
        for (b, d) in back.iter().zip(&data) {
            assert!(
                (b.re / (w * h) as f32 - d.re).abs() < 1e-4 && (b.im / (w * h) as f32 - d.im).abs() < 1e-4
            );
        }
    }
}
