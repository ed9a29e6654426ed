//! Projective geometry between a source picture and a leaked picture.
//!
//! Coordinates are *continuous picture coordinates*: pixel `i` covers `[i, i + 1)`, so the
//! centre of pixel (`i`, `j`) is (`i + 0.5`, `j + 0.5`). This is the convention of
//! [`Geometry`], and it makes a change of resolution a pure scaling. A [`Homography`] maps
//! source coordinates to leaked coordinates; mirrors, rotations, keystones, stretches,
//! crops, bars and picture-in-picture windows are all special cases.

use crate::image::Gray;
use crate::register::Geometry;

/// A 3x3 projective map, row-major, normalised so that the last entry is 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Homography(pub [f64; 9]);

impl Homography {
    /// The identity map.
    pub const IDENTITY: Homography = Homography([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);

    /// The axis-aligned map of a [`Geometry`] (scale and offset per axis).
    pub fn from_geometry(g: &Geometry) -> Self {
        Homography([g.sx, 0.0, g.tx, 0.0, g.sy, g.ty, 0.0, 0.0, 1.0])
    }

    /// A similarity about the centre of a `w` x `h` picture: `(x, y)` goes to the point
    /// `angle` radians around the centre (counter-clockwise on screen, where y points
    /// down, is a negative angle), mirrored left-right first when `mirror` is set.
    pub fn about_centre(w: f64, h: f64, angle: f64, mirror: bool) -> Self {
        Self::turn(angle, mirror, (w / 2.0, h / 2.0), (w / 2.0, h / 2.0))
    }

    /// `p` goes to `to + R M (p - from)`: `M` the left-right mirror when `mirror` is set,
    /// `R` a turn by `angle` radians (as in [`Homography::about_centre`]).
    pub fn turn(angle: f64, mirror: bool, from: (f64, f64), to: (f64, f64)) -> Self {
        let (c, s) = (angle.cos(), angle.sin());
        let m = if mirror { -1.0 } else { 1.0 };
        let (a, b, d, e) = (c * m, -s, s * m, c);
        Homography([
            a,
            b,
            to.0 - a * from.0 - b * from.1,
            d,
            e,
            to.1 - d * from.0 - e * from.1,
            0.0,
            0.0,
            1.0,
        ])
    }

    /// `self ∘ other`: first `other`, then `self`.
    pub fn then_after(&self, other: &Homography) -> Homography {
        let (a, b) = (&self.0, &other.0);
        let mut m = [0.0; 9];
        for r in 0..3 {
            for c in 0..3 {
                m[r * 3 + c] = (0..3).map(|k| a[r * 3 + k] * b[k * 3 + c]).sum();
            }
        }
        Homography(m).normalised()
    }

    /// The inverse map, `None` when singular.
    pub fn inverse(&self) -> Option<Homography> {
        let m = &self.0;
        let det = m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6])
            + m[2] * (m[3] * m[7] - m[4] * m[6]);
        if !det.is_finite() || det.abs() < 1e-15 {
            return None;
        }
        let inv = [
            m[4] * m[8] - m[5] * m[7],
            m[2] * m[7] - m[1] * m[8],
            m[1] * m[5] - m[2] * m[4],
            m[5] * m[6] - m[3] * m[8],
            m[0] * m[8] - m[2] * m[6],
            m[2] * m[3] - m[0] * m[5],
            m[3] * m[7] - m[4] * m[6],
            m[1] * m[6] - m[0] * m[7],
            m[0] * m[4] - m[1] * m[3],
        ];
        let h = Homography(inv.map(|v| v / det));
        (h.0[8].abs() > 1e-15).then(|| h.normalised())
    }

    fn normalised(self) -> Homography {
        let d = self.0[8];
        if d.abs() > 1e-15 {
            Homography(self.0.map(|v| v / d))
        } else {
            self
        }
    }

    /// Maps a point; `None` behind the projection's horizon.
    #[inline]
    pub fn map(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        let m = &self.0;
        let d = m[6] * x + m[7] * y + m[8];
        if d <= 1e-9 {
            return None;
        }
        Some(((m[0] * x + m[1] * y + m[2]) / d, (m[3] * x + m[4] * y + m[5]) / d))
    }

    /// Where source pixel (`i`, `j`)'s centre falls, in the sample coordinates of
    /// [`Gray::sample`] (pixel centres at whole numbers).
    #[inline]
    pub fn map_pixel(&self, i: usize, j: usize) -> Option<(f32, f32)> {
        self.map(i as f64 + 0.5, j as f64 + 0.5).map(|(x, y)| ((x - 0.5) as f32, (y - 0.5) as f32))
    }

    /// The same map for pictures downscaled by `src_factor` (source) and `leak_factor`
    /// (leaked), each in original pixels per picture pixel (as [`Geometry::rescaled`]).
    pub fn rescaled(&self, src_factor: f64, leak_factor: f64) -> Homography {
        let to_leak = Homography([1.0 / leak_factor, 0.0, 0.0, 0.0, 1.0 / leak_factor, 0.0, 0.0, 0.0, 1.0]);
        let from_src = Homography([src_factor, 0.0, 0.0, 0.0, src_factor, 0.0, 0.0, 0.0, 1.0]);
        to_leak.then_after(&self.then_after(&from_src))
    }

    /// The axis-aligned geometry this map is, when it is one (no rotation, shear, mirror
    /// or perspective).
    pub fn as_geometry(&self) -> Option<Geometry> {
        let m = &self.0;
        (m[1] == 0.0 && m[3] == 0.0 && m[6] == 0.0 && m[7] == 0.0 && m[0] > 0.0 && m[4] > 0.0)
            .then_some(Geometry { sx: m[0], sy: m[4], tx: m[2], ty: m[5] })
    }

    /// The axis-aligned geometry closest to this map over a `w` x `h` source: scale and
    /// offset fitted to where the picture's corners go (for summaries and old readers).
    pub fn nearest_geometry(&self, w: f64, h: f64) -> Geometry {
        let c = self.corners(w, h);
        let Some(c) = c else { return Geometry::IDENTITY };
        let sx = ((c[1].0 - c[0].0) + (c[3].0 - c[2].0)) / (2.0 * w);
        let sy = ((c[2].1 - c[0].1) + (c[3].1 - c[1].1)) / (2.0 * h);
        let (mx, my) = (c.iter().map(|p| p.0).sum::<f64>() / 4.0, c.iter().map(|p| p.1).sum::<f64>() / 4.0);
        Geometry { sx, sy, tx: mx - sx * w / 2.0, ty: my - sy * h / 2.0 }
    }

    /// Where the four corners of a `w` x `h` source go: top-left, top-right, bottom-left,
    /// bottom-right.
    pub fn corners(&self, w: f64, h: f64) -> Option<[(f64, f64); 4]> {
        Some([self.map(0.0, 0.0)?, self.map(w, 0.0)?, self.map(0.0, h)?, self.map(w, h)?])
    }

    /// Largest distance between where this map and `other` send a corner of a `w` x `h`
    /// source (infinite when either sends one behind the horizon).
    pub fn corner_distance(&self, other: &Homography, w: f64, h: f64) -> f64 {
        match (self.corners(w, h), other.corners(w, h)) {
            (Some(a), Some(b)) => a
                .iter()
                .zip(&b)
                .map(|(p, q)| ((p.0 - q.0).powi(2) + (p.1 - q.1).powi(2)).sqrt())
                .fold(0.0, f64::max),
            _ => f64::INFINITY,
        }
    }

    /// Leaked pixels per source pixel along each source axis at the centre of a `w` x `h`
    /// source (the lengths of the mapped unit steps).
    pub fn local_scale(&self, w: f64, h: f64) -> (f64, f64) {
        let (cx, cy) = (w / 2.0, h / 2.0);
        let len = |a: Option<(f64, f64)>, b: Option<(f64, f64)>| match (a, b) {
            (Some(a), Some(b)) => ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt(),
            _ => 1.0,
        };
        let c = self.map(cx, cy);
        (len(c, self.map(cx + 1.0, cy)), len(c, self.map(cx, cy + 1.0)))
    }

    /// Whether the map mirrors the picture (its linear part reverses orientation).
    pub fn is_mirrored(&self) -> bool {
        let m = &self.0;
        m[0] * m[4] - m[1] * m[3] < 0.0
    }

    /// Rotation of the picture's horizontal axis in degrees (positive: clockwise on
    /// screen), measured at the source centre.
    pub fn rotation_degrees(&self, w: f64, h: f64) -> f64 {
        let (cx, cy) = (w / 2.0, h / 2.0);
        // A mirror image is measured after undoing the left-right mirror.
        let step = if self.is_mirrored() { -1.0 } else { 1.0 };
        match (self.map(cx, cy), self.map(cx + step, cy)) {
            (Some(a), Some(b)) => (b.1 - a.1).atan2(b.0 - a.0).to_degrees(),
            _ => 0.0,
        }
    }
}

/// Where every source pixel samples the leaked picture under a homography: the top-left
/// neighbour's index and the bilinear weights, with the arithmetic of [`Gray::sample`].
/// Made once per registration, so warping a frame is a gather.
pub struct PixelMap {
    /// Source picture size.
    pub src_size: (usize, usize),
    /// Leaked picture width (the index stride).
    leak_w: usize,
    /// Per source pixel: leaked index of the top-left neighbour (`u32::MAX`: not covered),
    /// the right and lower neighbour offsets, and the weights.
    taps: Vec<(u32, u8, u8, f32, f32)>,
    /// Bounding ranges of the covered source pixels.
    pub x_range: std::ops::Range<usize>,
    /// Covered rows.
    pub y_range: std::ops::Range<usize>,
    covered: usize,
}

const UNCOVERED: u32 = u32::MAX;

impl PixelMap {
    /// The map of a `src_size` source grid sampling a `leak_size` picture under `h`.
    pub fn new(src_size: (usize, usize), leak_size: (usize, usize), h: &Homography) -> Self {
        let (w, hh) = src_size;
        let (lw, lh) = leak_size;
        let mut taps = vec![(UNCOVERED, 0, 0, 0.0, 0.0); w * hh];
        let (mut x0r, mut x1r, mut y0r, mut y1r, mut covered) = (w, 0, hh, 0, 0);
        for j in 0..hh {
            for i in 0..w {
                let Some((x, y)) = h.map_pixel(i, j) else { continue };
                if !(x >= 0.0 && y >= 0.0 && x <= (lw - 1) as f32 && y <= (lh - 1) as f32) {
                    continue;
                }
                let (xi, yi) =
                    ((x as usize).min(lw.saturating_sub(2)), (y as usize).min(lh.saturating_sub(2)));
                let (dx, dy) = (u8::from(xi + 1 < lw), u8::from(yi + 1 < lh));
                taps[j * w + i] = ((yi * lw + xi) as u32, dx, dy, x - xi as f32, y - yi as f32);
                x0r = x0r.min(i);
                x1r = x1r.max(i + 1);
                y0r = y0r.min(j);
                y1r = y1r.max(j + 1);
                covered += 1;
            }
        }
        let (x_range, y_range) = if covered > 0 { (x0r..x1r, y0r..y1r) } else { (0..0, 0..0) };
        Self { src_size, leak_w: lw, taps, x_range, y_range, covered }
    }

    /// Number of source pixels that see the leaked picture.
    pub fn covered(&self) -> usize {
        self.covered
    }

    /// Whether source pixel (`i`, `j`) sees the leaked picture.
    #[inline]
    pub fn covers(&self, i: usize, j: usize) -> bool {
        self.taps[j * self.src_size.0 + i].0 != UNCOVERED
    }

    /// The leaked picture at source pixel index `p`, `None` where it is not covered.
    #[inline]
    pub fn sample_at(&self, leak: &[f32], p: usize) -> Option<f32> {
        let (k, dx, dy, fx, fy) = self.taps[p];
        if k == UNCOVERED {
            return None;
        }
        let k = k as usize;
        let (dx, dy) = (dx as usize, dy as usize * self.leak_w);
        let (a, b, c, d) = (leak[k], leak[k + dx], leak[k + dy], leak[k + dy + dx]);
        let top = a + (b - a) * fx;
        let bot = c + (d - c) * fx;
        Some(top + (bot - top) * fy)
    }

    /// The leaked picture at source pixel (`i`, `j`), `None` where it is not covered.
    #[inline]
    pub fn sample(&self, leak: &Gray, i: usize, j: usize) -> Option<f32> {
        debug_assert_eq!(leak.w, self.leak_w);
        self.sample_at(&leak.data, j * self.src_size.0 + i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Homography, b: &Homography) -> bool {
        a.corner_distance(b, 100.0, 80.0) < 1e-6
    }

    #[test]
    fn inverse_and_composition() {
        let h = Homography([0.9, 0.1, 5.0, -0.05, 1.1, -3.0, 1e-4, -2e-4, 1.0]);
        let inv = h.inverse().expect("invertible");
        assert!(close(&h.then_after(&inv), &Homography::IDENTITY));
        assert!(close(&inv.then_after(&h), &Homography::IDENTITY));
        let (x, y) = h.map(30.0, 40.0).unwrap();
        let (u, v) = inv.map(x, y).unwrap();
        assert!((u - 30.0).abs() < 1e-9 && (v - 40.0).abs() < 1e-9);
    }

    #[test]
    fn geometry_round_trip_and_rescale() {
        let g = Geometry { sx: 0.75, sy: 0.7, tx: 10.3, ty: -4.2 };
        let h = Homography::from_geometry(&g);
        assert_eq!(h.as_geometry(), Some(g));
        let r = h.rescaled(2.0, 3.0).as_geometry().expect("still axis-aligned");
        let gr = g.rescaled(2.0, 3.0);
        assert!((r.sx - gr.sx).abs() < 1e-12 && (r.tx - gr.tx).abs() < 1e-12 && (r.ty - gr.ty).abs() < 1e-12);
        for (i, j) in [(0, 0), (17, 5), (99, 63)] {
            let (a, b) = (h.map_pixel(i, j).unwrap(), g.map(i as f64, j as f64));
            assert!((a.0 - b.0).abs() < 1e-4 && (a.1 - b.1).abs() < 1e-4);
        }
    }

    #[test]
    fn mirror_and_rotation_are_seen() {
        let m = Homography::about_centre(100.0, 80.0, 0.0, true);
        assert!(m.is_mirrored());
        let (x, y) = m.map(10.0, 20.0).unwrap();
        assert!((x - 90.0).abs() < 1e-9 && (y - 20.0).abs() < 1e-9);
        let r = Homography::about_centre(100.0, 80.0, 5f64.to_radians(), false);
        assert!(!r.is_mirrored());
        assert!((r.rotation_degrees(100.0, 80.0) - 5.0).abs() < 1e-9);
        assert!(r.map(50.0, 40.0).is_some_and(|(x, y)| (x - 50.0).abs() < 1e-9 && (y - 40.0).abs() < 1e-9));
    }

    #[test]
    fn pixel_map_samples_like_gray_sample() {
        let mut leak = Gray::new(97, 61);
        for (n, v) in leak.data.iter_mut().enumerate() {
            *v = ((n * 7919) % 251) as f32;
        }
        let h = Homography([0.8, 0.12, 4.0, -0.1, 0.7, 9.0, 2e-4, 1e-4, 1.0]);
        let map = PixelMap::new((120, 80), (97, 61), &h);
        let mut covered = 0;
        for j in 0..80 {
            for i in 0..120 {
                let want = h.map_pixel(i, j).and_then(|(x, y)| leak.sample(x, y));
                assert_eq!(map.sample(&leak, i, j), want, "{i},{j}");
                covered += usize::from(want.is_some());
            }
        }
        assert_eq!(map.covered(), covered);
        assert!(covered > 1000);
    }
}
