//! The leaked frames on an analysis grid: resized, whitened (the picture taken away, the
//! mark's noise-like residual kept) and moved back by the picture's motion, in buffers
//! reused from frame to frame.

use tracemark_core::motion::Tracking;

use crate::image::{Downscaler, Gray};
use crate::register;

/// Buffers one frame needs on one analysis grid, made once and reused for every frame.
#[derive(Default)]
pub(super) struct FrameScratch {
    /// The area downscaler and the (plane width, plane height, width, height) it is for.
    down: Option<((usize, usize, usize, usize), Downscaler)>,
    /// The downscaled plane, when it is then upscaled to the grid.
    small: Gray,
    med: Gray,
    lanes: Vec<Vec<f32>>,
    resid: Gray,
    /// Squared residual, and its 9-row and 9x9 window sums along one row.
    squares: Vec<f32>,
    down_sum: Vec<f32>,
    /// The 9-row sums carried from row to row (a row enters, a row leaves), in f64 so the
    /// running sum does not drift.
    running: Vec<f64>,
    /// Sums of 2 and 4 neighbouring columns, on the way to the 9-column sums.
    pairs: Vec<f32>,
    quads: Vec<f32>,
    window_sum: Vec<f32>,
    /// The frame on the grid, and its whitened residual (the outputs).
    pub(super) picture: Gray,
    pub(super) white: Gray,
    /// Both moved back by the picture's motion since the first frame as each tracking
    /// measures it ([`Tracking::index`]), when it moved.
    pub(super) moved_picture: [Gray; Tracking::ALL.len()],
    pub(super) moved_white: [Gray; Tracking::ALL.len()],
    pub(super) moved: [bool; Tracking::ALL.len()],
}

/// `out(q) = src(q + d)`, bilinear, zero where a tap falls outside `src`.
pub(super) fn shift_into(src: &Gray, (dx, dy): (f64, f64), out: &mut Gray) {
    let (w, h) = (src.w, src.h);
    out.reshape(w, h);
    let (ix, iy) = (dx.floor(), dy.floor());
    let (fx, fy) = ((dx - ix) as f32, (dy - iy) as f32);
    let (ix, iy) = (ix as i64, iy as i64);
    // Output columns whose taps x + ix and x + ix + 1 are both inside.
    let x0 = (-ix).clamp(0, w as i64) as usize;
    let x1 = (w as i64 - 1 - ix).clamp(x0 as i64, w as i64) as usize;
    for y in 0..h {
        let row = &mut out.data[y * w..][..w];
        let sy = y as i64 + iy;
        if sy < 0 || sy + 1 >= h as i64 || x0 >= x1 {
            row.fill(0.0);
            continue;
        }
        let (sy, sx) = (sy as usize, (x0 as i64 + ix) as usize);
        let r0 = &src.data[sy * w + sx..][..x1 - x0 + 1];
        let r1 = &src.data[(sy + 1) * w + sx..][..x1 - x0 + 1];
        row[..x0].fill(0.0);
        row[x1..].fill(0.0);
        for (n, o) in row[x0..x1].iter_mut().enumerate() {
            *o = register::bilinear(r0, r1, n, n + 1, fx, fy);
        }
    }
}

/// Where a whitened residual is clipped, in units of its local RMS. What a still picture's
/// edges and texture leave after the median are heavy-tailed and the same in every frame,
/// so they add up frame after frame as the mark does; the mark and the codec's noise are
/// small and near Gaussian. Clipping keeps the sign of the one and caps the other (vtest's
/// broadcast chain read blind, eight exports at 48.3 dB: mean score 7.69 unclipped, 7.82 at
/// 2, 8.12 at 1.2, 8.09 at 0.7; moving clips within +-0.3 either way).
pub(super) const WHITE_CLIP: f32 = 1.0;

/// Whitened, locally normalised residual of one analysis image, into `out`, clipped at
/// [`WHITE_CLIP`].
pub(super) fn whiten_into(img: &Gray, s: &mut FrameScratch, out: &mut Gray) {
    img.median3_into(&mut s.lanes, &mut s.med);
    let (w, h) = (img.w, img.h);
    s.resid.reshape(w, h);
    for (o, (a, b)) in s.resid.data.iter_mut().zip(img.data.iter().zip(&s.med.data)) {
        *o = a - b;
    }
    // Local RMS over 9x9 windows (clamped at the edges): squares summed down 9 rows (a
    // running sum: one row in, one out), then across 9 columns as sums of 2, 4 and 8, whole
    // rows at a time (every pass vectorises).
    let r = &s.resid;
    s.squares.clear();
    s.squares.extend(r.data.iter().map(|v| v * v));
    s.down_sum.resize(w, 0.0);
    s.window_sum.resize(w, 0.0);
    s.running.clear();
    s.running.resize(w, 0.0);
    for yy in 0..h.min(4) {
        for (c, &q) in s.running.iter_mut().zip(&s.squares[yy * w..][..w]) {
            *c += f64::from(q);
        }
    }
    out.reshape(w, h);
    for y in 0..h {
        let (y0, y1) = (y.saturating_sub(4), (y + 5).min(h));
        // Rows y0..y1 are in: y + 4 enters, y - 5 leaves.
        if y + 4 < h {
            for (c, &q) in s.running.iter_mut().zip(&s.squares[(y + 4) * w..][..w]) {
                *c += f64::from(q);
            }
        }
        if y >= 5 {
            for (c, &q) in s.running.iter_mut().zip(&s.squares[(y - 5) * w..][..w]) {
                *c -= f64::from(q);
            }
        }
        let col = &mut s.down_sum;
        for (c, &v) in col.iter_mut().zip(&s.running) {
            *c = v as f32;
        }
        let win = &mut s.window_sum;
        for x in (0..w.min(4)).chain(w.saturating_sub(4).max(4)..w) {
            win[x] = col[x.saturating_sub(4)..(x + 5).min(w)].iter().sum();
        }
        if w > 8 {
            let (pairs, quads) = (&mut s.pairs, &mut s.quads);
            pairs.clear();
            pairs.extend(col.iter().zip(&col[1..]).map(|(a, b)| a + b));
            quads.clear();
            quads.extend(pairs.iter().zip(&pairs[2..]).map(|(a, b)| a + b));
            // Column x's window starts at x - 4: eight columns from there, and one more.
            for (((o, a), b), c) in win[4..w - 4].iter_mut().zip(quads.iter()).zip(&quads[4..]).zip(&col[8..])
            {
                *o = a + b + c;
            }
        }
        let rows = (y1 - y0) as f32;
        let (resid, o) = (&r.data[y * w..][..w], &mut out.data[y * w..][..w]);
        // Rounding can leave a sum of squares a hair below zero.
        let white = |v: f32, mean_square: f32| {
            (v / (mean_square.max(0.0).sqrt() + 1.0)).clamp(-WHITE_CLIP, WHITE_CLIP)
        };
        let inner = if w > 8 { 4..w - 4 } else { 0..0 };
        // Whole windows: one count for the row (a multiply, where a divide per pixel
        // was a fifth of the whitening).
        let per_window = 1.0 / (rows * 9.0);
        for ((o, &v), &sum) in o[inner.clone()].iter_mut().zip(&resid[inner.clone()]).zip(&win[inner.clone()])
        {
            *o = white(v, sum * per_window);
        }
        for x in (0..w).filter(|x| !inner.contains(x)) {
            let n = rows * ((x + 5).min(w) - x.saturating_sub(4)) as f32;
            o[x] = white(resid[x], win[x] / n);
        }
    }
}

/// Resizes a plane to `w` x `h` into `s.picture`: area averaging where it shrinks,
/// bilinear where it grows.
pub(super) fn resize_into(p: &tracemark_core::Plane, w: usize, h: usize, s: &mut FrameScratch) {
    let (dw, dh) = (w.min(p.width()), h.min(p.height()));
    let key = (p.width(), p.height(), dw, dh);
    if s.down.as_ref().is_none_or(|(k, _)| *k != key) {
        s.down = Some((key, Downscaler::new(p.width(), p.height(), dw, dh)));
    }
    let down = &mut s.down.as_mut().expect("just made").1;
    if (dw, dh) == (w, h) {
        s.picture.reshape(w, h);
        down.run(p, &mut s.picture.data);
    } else {
        s.small.reshape(dw, dh);
        down.run(p, &mut s.small.data);
        register::scaled_into(&s.small, w as f64 / dw as f64, h as f64 / dh as f64, &mut s.picture);
        debug_assert_eq!((s.picture.w, s.picture.h), (w, h));
    }
}
