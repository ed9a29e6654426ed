//! Planar 8-bit YUV frames with row strides.
//!
//! Everything past the video I/O edge sees [`Frame`]: three 8-bit planes in 4:2:0 layout
//! (the layout libx264 writes for broadcast-compatible output). Pixel-format conversion
//! happens once, in the decoder.

/// One 8-bit image plane. Rows are `stride` bytes apart; only the first `width` bytes of a
/// row are picture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plane {
    data: Vec<u8>,
    width: usize,
    height: usize,
    stride: usize,
}

impl Plane {
    /// A plane filled with `value`, with the stride rounded up to 32 bytes.
    pub fn new(width: usize, height: usize, value: u8) -> Self {
        let stride = width.div_ceil(32) * 32;
        Self { data: vec![value; stride * height], width, height, stride }
    }

    /// Wraps existing bytes. Returns `None` when `data` is too short for the geometry or the
    /// stride is smaller than the width.
    pub fn from_vec(data: Vec<u8>, width: usize, height: usize, stride: usize) -> Option<Self> {
        if stride < width || data.len() < stride * height {
            return None;
        }
        Some(Self { data, width, height, stride })
    }

    /// Picture width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }
    /// Picture height in rows.
    pub fn height(&self) -> usize {
        self.height
    }
    /// Distance between rows in bytes.
    pub fn stride(&self) -> usize {
        self.stride
    }
    /// All rows, [`Plane::stride`] bytes apart (the bytes past the width included).
    pub fn samples(&self) -> &[u8] {
        &self.data
    }
    /// Row `y` (picture bytes only).
    pub fn row(&self, y: usize) -> &[u8] {
        let start = y * self.stride;
        &self.data[start..start + self.width]
    }
    /// Row `y`, mutable (picture bytes only).
    pub fn row_mut(&mut self, y: usize) -> &mut [u8] {
        let start = y * self.stride;
        &mut self.data[start..start + self.width]
    }
    /// Iterates over picture rows.
    pub fn rows(&self) -> impl Iterator<Item = &[u8]> {
        self.data.chunks(self.stride).take(self.height).map(|r| &r[..self.width])
    }
    /// Iterates over picture rows, mutably.
    pub fn rows_mut(&mut self) -> impl Iterator<Item = &mut [u8]> {
        let w = self.width;
        self.data.chunks_mut(self.stride).take(self.height).map(move |r| &mut r[..w])
    }
    /// Pixel at (`x`, `y`).
    pub fn get(&self, x: usize, y: usize) -> u8 {
        self.data[y * self.stride + x]
    }
    /// Changes the geometry, reusing the allocation when it is large enough.
    pub fn reshape(&mut self, width: usize, height: usize) {
        let stride = width.div_ceil(32) * 32;
        self.width = width;
        self.height = height;
        self.stride = stride;
        self.data.resize(stride * height, 0);
    }
    /// Copies picture bytes from rows of another buffer with its own stride.
    pub fn copy_from_strided(&mut self, src: &[u8], src_stride: usize) {
        let w = self.width;
        for (y, row) in self.rows_mut().enumerate() {
            row.copy_from_slice(&src[y * src_stride..y * src_stride + w]);
        }
    }
}

/// A decoded picture: luma and two 4:2:0 chroma planes, plus its presentation timestamp in
/// the source stream's time base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Luma.
    pub y: Plane,
    /// Blue-difference chroma, `ceil(w/2) x ceil(h/2)`.
    pub u: Plane,
    /// Red-difference chroma, `ceil(w/2) x ceil(h/2)`.
    pub v: Plane,
    /// Presentation timestamp in the source stream's time base, when known.
    pub pts: Option<i64>,
}

impl Frame {
    /// A mid-grey frame of the given size.
    pub fn new(width: usize, height: usize) -> Self {
        let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
        Self {
            y: Plane::new(width, height, 128),
            u: Plane::new(cw, ch, 128),
            v: Plane::new(cw, ch, 128),
            pts: None,
        }
    }

    /// Builds a frame from a luma plane only (chroma neutral grey): for still images and tests.
    pub fn from_luma(y: Plane) -> Self {
        let (cw, ch) = (y.width().div_ceil(2), y.height().div_ceil(2));
        Self { y, u: Plane::new(cw, ch, 128), v: Plane::new(cw, ch, 128), pts: None }
    }

    /// Picture width.
    pub fn width(&self) -> usize {
        self.y.width()
    }
    /// Picture height.
    pub fn height(&self) -> usize {
        self.y.height()
    }
    /// Changes the geometry of all planes, reusing allocations.
    pub fn reshape(&mut self, width: usize, height: usize) {
        self.y.reshape(width, height);
        self.u.reshape(width.div_ceil(2), height.div_ceil(2));
        self.v.reshape(width.div_ceil(2), height.div_ceil(2));
    }
}

/// Luma PSNR in dB between two planes of equal size (99.0 when identical, like ffmpeg's cap).
pub fn psnr(a: &Plane, b: &Plane) -> f64 {
    assert_eq!((a.width(), a.height()), (b.width(), b.height()), "plane sizes differ");
    let mut sse = 0u64;
    for (ra, rb) in a.rows().zip(b.rows()) {
        for (&pa, &pb) in ra.iter().zip(rb) {
            let d = i64::from(pa) - i64::from(pb);
            sse += (d * d) as u64;
        }
    }
    if sse == 0 {
        return 99.0;
    }
    let mse = sse as f64 / (a.width() * a.height()) as f64;
    (10.0 * (255.0f64 * 255.0 / mse).log10()).min(99.0)
}

/// Mean SSIM over 8x8 windows with stride 4 (the classic Wang et al. constants).
pub fn ssim(a: &Plane, b: &Plane) -> f64 {
    assert_eq!((a.width(), a.height()), (b.width(), b.height()), "plane sizes differ");
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let (w, h) = (a.width(), a.height());
    let mut total = 0.0;
    let mut n = 0usize;
    let mut y = 0;
    while y + 8 <= h {
        let mut x = 0;
        while x + 8 <= w {
            let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for yy in y..y + 8 {
                for xx in x..x + 8 {
                    let pa = f64::from(a.get(xx, yy));
                    let pb = f64::from(b.get(xx, yy));
                    sa += pa;
                    sb += pb;
                    saa += pa * pa;
                    sbb += pb * pb;
                    sab += pa * pb;
                }
            }
            let m = 64.0;
            let (ma, mb) = (sa / m, sb / m);
            let va = saa / m - ma * ma;
            let vb = sbb / m - mb * mb;
            let cov = sab / m - ma * mb;
            total += ((2.0 * ma * mb + c1) * (2.0 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2));
            n += 1;
            x += 4;
        }
        y += 4;
    }
    if n == 0 {
        1.0
    } else {
        total / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_rows_are_independent_of_padding() {
        let mut p = Plane::new(5, 3, 0);
        assert_eq!(p.stride(), 32);
        p.row_mut(1).copy_from_slice(&[1, 2, 3, 4, 5]);
        assert_eq!(p.row(1), &[1, 2, 3, 4, 5]);
        assert_eq!(p.rows().count(), 3);
        assert_eq!(p.get(4, 1), 5);
    }

    #[test]
    fn odd_frames_get_rounded_up_chroma() {
        let f = Frame::new(721, 405);
        assert_eq!((f.u.width(), f.u.height()), (361, 203));
    }

    #[test]
    fn psnr_and_ssim_of_identical_planes() {
        let mut p = Plane::new(16, 16, 0);
        for (y, row) in p.rows_mut().enumerate() {
            for (x, v) in row.iter_mut().enumerate() {
                *v = (x * 7 + y * 13) as u8;
            }
        }
        assert_eq!(psnr(&p, &p), 99.0);
        assert!((ssim(&p, &p) - 1.0).abs() < 1e-12);
        let mut q = p.clone();
        q.row_mut(0)[0] ^= 1;
        let v = psnr(&p, &q);
        assert!(v > 40.0 && v < 99.0, "{v}");
    }
}
