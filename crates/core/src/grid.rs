//! The canonical working grid and resampling between it and the picture.
//!
//! Pictures up to [`MAX_NATIVE_HEIGHT`] lines are marked at their own resolution. Taller
//! ones are marked on a grid of [`HD_WORK_HEIGHT`] lines (same aspect), so a mark made on a
//! 1080p export is the same mark on the 720p, 576i, 480p or 360p copy a channel airs. The
//! residual is then interpolated back onto the full-resolution luma.

/// Tallest picture marked at its own resolution.
pub const MAX_NATIVE_HEIGHT: usize = 576;
/// Working-grid height for taller pictures.
pub const HD_WORK_HEIGHT: usize = 360;

/// Geometry of a picture and its working grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    /// Picture width.
    pub frame_w: usize,
    /// Picture height.
    pub frame_h: usize,
    /// Working-grid width.
    pub work_w: usize,
    /// Working-grid height.
    pub work_h: usize,
    /// Picture pixels per working-grid pixel (1 for native).
    pub scale: f64,
}

impl Grid {
    /// The canonical grid of a `w` x `h` picture.
    pub fn for_frame(w: usize, h: usize) -> Self {
        if h <= MAX_NATIVE_HEIGHT {
            return Self { frame_w: w, frame_h: h, work_w: w, work_h: h, scale: 1.0 };
        }
        let scale = h as f64 / HD_WORK_HEIGHT as f64;
        let work_w = ((w as f64 / scale).round() as usize).max(1);
        Self { frame_w: w, frame_h: h, work_w, work_h: HD_WORK_HEIGHT, scale }
    }

    /// A grid with an explicit working size (used by the detector after registration).
    pub fn with_work_size(frame_w: usize, frame_h: usize, work_w: usize, work_h: usize) -> Self {
        Self { frame_w, frame_h, work_w, work_h, scale: frame_h as f64 / work_h as f64 }
    }

    /// A displacement in picture pixels, in working-grid pixels (each axis by its own ratio:
    /// the working width is rounded).
    pub fn to_work(&self, (x, y): (f64, f64)) -> (f64, f64) {
        (x * self.work_w as f64 / self.frame_w as f64, y * self.work_h as f64 / self.frame_h as f64)
    }

    /// Whether the working grid is the picture itself.
    pub fn is_native(&self) -> bool {
        self.work_w == self.frame_w && self.work_h == self.frame_h
    }

    /// Whole 8x8 blocks across.
    pub fn blocks_x(&self) -> usize {
        self.work_w / crate::dct::N
    }

    /// Whole 8x8 blocks down.
    pub fn blocks_y(&self) -> usize {
        self.work_h / crate::dct::N
    }
}

/// Precomputed weights of an area (box) filter from `src` samples to `dst` samples: for
/// every output sample, the input samples it covers and their coverage.
#[derive(Clone, Debug, Default)]
pub struct AreaTaps {
    /// Start index into `taps` for each output sample (len = dst + 1).
    pub offsets: Vec<usize>,
    /// (input index, weight) pairs; weights of one output sum to 1.
    pub taps: Vec<(u32, f32)>,
}

impl AreaTaps {
    /// Taps for `src` -> `dst` samples (`dst <= src`).
    pub fn new(src: usize, dst: usize) -> Self {
        let ratio = src as f64 / dst as f64;
        let mut offsets = Vec::with_capacity(dst + 1);
        let mut taps = Vec::new();
        for o in 0..dst {
            offsets.push(taps.len());
            let (a, b) = (o as f64 * ratio, (o + 1) as f64 * ratio);
            let mut i = a.floor() as usize;
            while (i as f64) < b && i < src {
                let cover = (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0);
                if cover > 1e-9 {
                    taps.push((i as u32, (cover / ratio) as f32));
                }
                i += 1;
            }
        }
        offsets.push(taps.len());
        Self { offsets, taps }
    }

    /// Taps of output sample `o`.
    pub fn of(&self, o: usize) -> &[(u32, f32)] {
        &self.taps[self.offsets[o]..self.offsets[o + 1]]
    }
}

/// Precomputed linear-interpolation positions from a coarse axis (`src`) to a fine one
/// (`dst`), pixel centres aligned.
#[derive(Clone, Debug, Default)]
pub struct LinearTaps {
    /// For each output sample: the left input index and the weight of the right one.
    pub taps: Vec<(u32, f32)>,
}

impl LinearTaps {
    /// Taps for `src` -> `dst` samples.
    pub fn new(src: usize, dst: usize) -> Self {
        let mut t = Self::default();
        t.refill(src, dst, 0.0);
        t
    }

    /// Refills (reusing the memory) with the taps for `src` -> `dst` samples of a signal
    /// moved by `shift` input samples: output `o` reads input position
    /// `(o + 0.5) * src / dst - 0.5 - shift`, clamped to the ends.
    pub fn refill(&mut self, src: usize, dst: usize, shift: f64) {
        let ratio = src as f64 / dst as f64;
        self.taps.clear();
        self.taps.extend((0..dst).map(|o| {
            let u = ((o as f64 + 0.5) * ratio - 0.5 - shift).clamp(0.0, (src - 1) as f64);
            let i = (u.floor() as usize).min(src.saturating_sub(2));
            (i as u32, (u - i as f64) as f32)
        }));
    }
}

/// Area-downscales an 8-bit plane into `out` (`dst_w` x `dst_h` floats) using `tmp`
/// (`src_h` x `dst_w` floats) between the separable passes. Whole-number factors (1080 to
/// 360, 720 to 360, 1920 to 128) take an integer fast path; [`downscale_area_taps`] is the
/// general one.
pub fn downscale_area(
    src: &crate::Plane,
    hx: &AreaTaps,
    vy: &AreaTaps,
    tmp: &mut [f32],
    out: &mut [f32],
    dst_w: usize,
) {
    let dst_h = out.len() / dst_w.max(1);
    let (w, h) = (src.width(), src.height());
    let whole = dst_w > 0 && dst_h > 0 && w % dst_w == 0 && h % dst_h == 0;
    if whole && w / dst_w <= 64 && h / dst_h <= 64 {
        downscale_integer(src, w / dst_w, h / dst_h, out, dst_w);
    } else {
        downscale_area_taps(src, hx, vy, tmp, out, dst_w);
    }
}

/// Box average over `kx` x `ky` blocks (each at most 64). Rows are summed in u16 lanes (at
/// most 64 x 255 per lane), a chunk of outputs at a time, then each block's columns in u32:
/// exact sums, which vectorise far better than float adds. The common widths have their
/// column sums unrolled (1080p to 360 lines is 3: 2.6x faster than the loop over any width).
pub(crate) fn downscale_integer(src: &crate::Plane, kx: usize, ky: usize, out: &mut [f32], dst_w: usize) {
    #[inline(always)]
    fn block_sums(acc: &[u16], out: &mut [f32], scale: f32, kx: usize) {
        for (o, block) in out.iter_mut().zip(acc.chunks_exact(kx)) {
            *o = block.iter().map(|&v| u32::from(v)).sum::<u32>() as f32 * scale;
        }
    }
    // A constant width: the block sum unrolls.
    fn blocks_of<const KX: usize>(acc: &[u16], out: &mut [f32], scale: f32) {
        block_sums(acc, out, scale, KX);
    }
    match kx {
        2 => box_rows(src, 2, ky, out, dst_w, blocks_of::<2>),
        3 => box_rows(src, 3, ky, out, dst_w, blocks_of::<3>),
        4 => box_rows(src, 4, ky, out, dst_w, blocks_of::<4>),
        6 => box_rows(src, 6, ky, out, dst_w, blocks_of::<6>),
        8 => box_rows(src, 8, ky, out, dst_w, blocks_of::<8>),
        _ => box_rows(src, kx, ky, out, dst_w, |acc, out, scale| block_sums(acc, out, scale, kx)),
    }
}

/// [`downscale_integer`]'s row sums; `blocks` sums a chunk's columns `kx` at a time into
/// its outputs, times the scale.
#[inline(always)]
fn box_rows(
    src: &crate::Plane,
    kx: usize,
    ky: usize,
    out: &mut [f32],
    dst_w: usize,
    blocks: impl Fn(&[u16], &mut [f32], f32),
) {
    const CHUNK: usize = 64;
    let scale = 1.0 / (kx * ky) as f32;
    let mut acc = [0u16; CHUNK * 64];
    for (oy, orow) in out.chunks_exact_mut(dst_w).enumerate() {
        for ox0 in (0..dst_w).step_by(CHUNK) {
            let n = CHUNK.min(dst_w - ox0);
            let acc = &mut acc[..n * kx];
            acc.fill(0);
            for y in oy * ky..(oy + 1) * ky {
                for (a, &p) in acc.iter_mut().zip(&src.row(y)[ox0 * kx..]) {
                    *a += u16::from(p);
                }
            }
            blocks(acc, &mut orow[ox0..ox0 + n], scale);
        }
    }
}

/// General area downscale by precomputed taps (any ratio).
pub fn downscale_area_taps(
    src: &crate::Plane,
    hx: &AreaTaps,
    vy: &AreaTaps,
    tmp: &mut [f32],
    out: &mut [f32],
    dst_w: usize,
) {
    downscale_rows_taps(src.rows(), hx, vy, tmp, out, dst_w);
}

/// [`downscale_area_taps`] over any rows of samples (bytes of a plane, floats of an image
/// already downscaled once). `tmp` holds `rows` x `dst_w` floats.
pub fn downscale_rows_taps<'a, T: Copy + Into<f32> + 'a>(
    rows: impl Iterator<Item = &'a [T]>,
    hx: &AreaTaps,
    vy: &AreaTaps,
    tmp: &mut [f32],
    out: &mut [f32],
    dst_w: usize,
) {
    for (y, row) in rows.enumerate() {
        let t = &mut tmp[y * dst_w..(y + 1) * dst_w];
        for (o, v) in t.iter_mut().enumerate() {
            let taps = &hx.taps[hx.offsets[o]..hx.offsets[o + 1]];
            let mut acc = 0f32;
            for &(i, w) in taps {
                acc += row[i as usize].into() * w;
            }
            *v = acc;
        }
    }
    for (o, orow) in out.chunks_exact_mut(dst_w).enumerate() {
        orow.fill(0.0);
        for &(i, w) in vy.of(o) {
            let t = &tmp[i as usize * dst_w..(i as usize + 1) * dst_w];
            for (d, s) in orow.iter_mut().zip(t) {
                *d += s * w;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids() {
        assert!(Grid::for_frame(768, 576).is_native());
        let g = Grid::for_frame(1920, 1080);
        assert_eq!((g.work_w, g.work_h, g.scale), (640, 360, 3.0));
        let g = Grid::for_frame(1280, 720);
        assert_eq!((g.work_w, g.work_h, g.scale), (640, 360, 2.0));
        assert_eq!(Grid::for_frame(176, 144).blocks_x(), 22);
    }

    #[test]
    fn integer_fast_path_agrees_with_taps() {
        // Every unrolled block width (2, 3, 4, 6, 8) and others (5, 15).
        for (w, h, dw, dh) in [
            (1920, 1080, 640, 360),
            (1280, 720, 640, 360),
            (96, 64, 32, 32),
            (1920, 1080, 128, 72),
            (96, 64, 24, 16),
            (96, 64, 16, 8),
            (96, 64, 12, 8),
            (100, 60, 20, 12),
        ] {
            let mut p = crate::Plane::new(w, h, 0);
            for (y, row) in p.rows_mut().enumerate() {
                for (x, v) in row.iter_mut().enumerate() {
                    *v = ((x * 31 + y * 17 + x * y) % 256) as u8;
                }
            }
            let (hx, vy) = (AreaTaps::new(w, dw), AreaTaps::new(h, dh));
            let mut tmp = vec![0f32; h * dw];
            let (mut fast, mut slow) = (vec![0f32; dw * dh], vec![0f32; dw * dh]);
            downscale_area(&p, &hx, &vy, &mut tmp, &mut fast, dw);
            downscale_area_taps(&p, &hx, &vy, &mut tmp, &mut slow, dw);
            for (a, b) in fast.iter().zip(&slow) {
                assert!((a - b).abs() < 1e-3, "{w}x{h}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn area_taps_preserve_mean() {
        for (s, d) in [(1080, 360), (1920, 640), (720, 360), (1000, 333), (405, 405)] {
            let t = AreaTaps::new(s, d);
            let total: f64 = t.taps.iter().map(|&(_, w)| f64::from(w)).sum();
            assert!((total - d as f64).abs() < 1e-3, "{s}->{d}: {total}");
            for o in 0..d {
                let sum: f32 = t.of(o).iter().map(|x| x.1).sum();
                assert!((sum - 1.0).abs() < 1e-4);
            }
        }
    }
}
