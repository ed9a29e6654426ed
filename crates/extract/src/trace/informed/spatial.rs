//! Spatial registration: the homography from a source thumbnail to the leaked one, its
//! refinement on the working grid, and how each registered pair is warped onto one grid.

use super::*;

/// Leaked pixels per reading pixel for a source→leaked scale of (`sx`, `sy`): the largest
/// whole number that keeps the leaked picture at least as fine as the source's working
/// grid. A little slack so that a 720p copy of a 1080p source reads at 2, not 1.
pub(super) fn reading_factor(sx: f64, sy: f64, grid: &Grid) -> f64 {
    (sx.min(sy) * grid.scale + 0.02).floor().max(1.0)
}

/// Below this NCC of the best axis-aligned thumbnail registration, mirrored, rotated and
/// turned pictures are searched too (they cost a few tenths of a second; an ordinary copy
/// matches far better than this).
pub(super) const ORIENTATION_SEARCH_BELOW: f64 = 0.9;

/// A projective thumbnail registration that beats the axis-aligned one by less than this
/// robust NCC may be fitting noise, a logo or a ticker rather than a tilt: the axis-aligned
/// map is read too and the pilot decides. At 128 px the projective fit of an axis-aligned
/// copy gained up to 0.0017 (the public gauntlet's broadcast chains, logos, picture-in-
/// picture); real tilts and keystones gained 0.0009 to 0.3, rotations of 4 degrees 0.02
/// and more.
pub(super) const PROJECTIVE_CLEAR_GAIN: f64 = 0.003;

/// A thumbnail registration: the map chosen and the axis-aligned map when a projective
/// one was chosen over it by less than [`PROJECTIVE_CLEAR_GAIN`].
pub(super) struct ThumbRegistration {
    pub(super) map: Homography,
    pub(super) axis_alternative: Option<Homography>,
}

/// Radius of the square whose mean [`Gray::detail`] takes out of a thumbnail before maps
/// are compared on detail: 5x5 pixels of a 128-pixel thumbnail.
const DETAIL_RADIUS: usize = 2;

/// Below this NCC of thumbnail detail under the chosen map, mirrored, rotated and turned
/// pictures are searched too, however well the map matches on the robust NCC. That NCC
/// keeps the pixels that agree, down to 4% of the picture, so a wrong map can score 0.91
/// on a copy turned by 8 degrees (the shading of a shrunken source lines up with a part of
/// it). On detail the wrong maps of the copies that failed scored 0.03-0.18; the public
/// gauntlet's true maps 0.35 (a 30% picture-in-picture of vtest, where a needless search
/// costs 12 s) to 1.0.
const DETAIL_SEARCH_BELOW: f64 = 0.3;

/// An oriented map replaces the axis-aligned one on detail alone when its detail is better
/// by this much (the true map against a wrong one differed by 0.7 and more; maps a pixel
/// or two apart, or read at the wrong time of a moving picture, by up to 0.1); on the
/// robust NCC, as before, unless its detail is worse.
const DETAIL_MARGIN: f64 = 0.2;

/// Below this NCC of detail for either map detail says nothing (a picture without texture
/// at thumbnail size): the robust NCC decides as before.
const DETAIL_TELLS: f64 = 0.3;

/// Registers a leaked thumbnail against a source thumbnail: the axis-aligned search
/// (scale, crop, bars, picture-in-picture), a projective refinement of it (small tilts,
/// keystones), and when neither fits well the search over mirrors and rotations. Maps are
/// fitted and refined on the robust NCC; whether to search orientations and which map to
/// keep are judged on the thumbnails' detail too, which a wrong map does not line up.
/// The map is in thumbnail pixels.
pub(super) fn register_thumbs(src: &Gray, leak: &Gray) -> Option<ThumbRegistration> {
    let axis = register::coarse(src, leak, 3)
        .into_iter()
        .map(|(g, _)| register::refine(src, leak, g, 1))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(g, _)| Homography::from_geometry(&g));
    let mut best = axis.and_then(|h| register_projective::quality(src, leak, h, 1).map(|q| (h, q)));
    let mut axis_alternative = None;
    if let Some((h, q)) = best {
        if let Some((p, pq)) = register_projective::refine(src, leak, h, 1, 40) {
            if pq > q && p.corner_distance(&h, src.w as f64, src.h as f64) > 0.3 {
                best = Some((p, pq));
                if pq < q + PROJECTIVE_CLEAR_GAIN {
                    axis_alternative = Some(h);
                }
            }
        }
    }
    let (src_detail, leak_detail) = (src.detail(DETAIL_RADIUS), leak.detail(DETAIL_RADIUS));
    let on_detail =
        |h: Homography| register_projective::quality(&src_detail, &leak_detail, h, 1).unwrap_or(-1.0);
    let best_detail = best.map_or(-1.0, |b| on_detail(b.0));
    if best.is_none_or(|b| b.1 < ORIENTATION_SEARCH_BELOW) || best_detail < DETAIL_SEARCH_BELOW {
        // Of the best oriented candidates on the robust NCC, the one whose detail lines up
        // best, when detail tells them apart.
        let found: Vec<(Homography, f64, f64)> = register_projective::coarse_oriented(src, leak, 3)
            .into_iter()
            .map(|(h, q)| (h, q, on_detail(h)))
            .collect();
        let sharpest = found.iter().max_by(|a, b| a.2.total_cmp(&b.2).then(a.1.total_cmp(&b.1)));
        let oriented = sharpest.filter(|c| c.2 >= DETAIL_TELLS).or(found.first());
        if let Some(&(h, q, detail)) = oriented {
            let replace = match best {
                None => true,
                Some(b) => {
                    let tells = detail.max(best_detail) >= DETAIL_TELLS;
                    // A robust NCC can rise by fitting a part of the picture only: a decent
                    // axis-aligned answer gives way only to a clearly better one, and not
                    // to one whose detail lines up worse.
                    let on_ncc = q > b.1 + if b.1 >= 0.8 { 0.1 } else { 0.01 };
                    (tells && detail > best_detail + DETAIL_MARGIN)
                        || (on_ncc && !(tells && detail < best_detail))
                }
            };
            if replace {
                best = Some((h, q));
                axis_alternative = None;
            }
        }
    }
    best.map(|(map, _)| ThumbRegistration { map, axis_alternative })
}

/// Refines a working-grid registration on one pair of frames at reading resolution. An
/// axis-aligned map is refined as such (and kept unless a projective fit is materially
/// different and better); any other map is refined projectively.
pub(super) fn refine_work(src: &Gray, leak: &Gray, h: &Homography) -> (Homography, f64) {
    if let Some(g) = h.as_geometry() {
        let (g, v) = register::refine_robust(src, leak, g, 2);
        let axis = Homography::from_geometry(&g);
        let (q0, projective) = rayon::join(
            || register_projective::quality(src, leak, axis, 2),
            || register_projective::refine(src, leak, axis, 2, 30),
        );
        if let (Some(q0), Some((p, q))) = (q0, projective) {
            if q > q0 + 0.002 && p.corner_distance(&axis, src.w as f64, src.h as f64) > 0.5 {
                return (p, q);
            }
        }
        return (axis, v);
    }
    match register_projective::refine(src, leak, *h, 2, 40) {
        Some((p, q)) => (p, q),
        None => (*h, 0.0),
    }
}

/// NCC of a leaked thumbnail mapped onto a source thumbnail, on every `step`-th pixel.
pub(super) fn thumb_match(src: &Gray, leak: &Gray, g: &Geometry, step: usize) -> f64 {
    register::ncc_at(src, leak, g, step).value()
}

/// How every pair of one reading is put on a common grid: the source working grid, the
/// leaked reading size, the warp of the registered geometry between them, and which
/// source pixels take part.
pub(super) struct PairWarp {
    pub(super) src_size: (usize, usize),
    pub(super) leak_size: (usize, usize),
    pub(super) warp: Warp,
    /// For a leaked picture coarser than the working grid, how it sees the source.
    pub(super) view: Option<LeakView>,
    /// Source pixels that are covered and not under an overlay (logo, ticker, black bar):
    /// only these enter the tone fit and the residual.
    pub(super) usable: Vec<bool>,
}

impl PairWarp {
    /// `h_work` maps source working-grid pixels to leaked reading pixels; `src` and `leak`
    /// are the registered pair it was refined on (where overlays are found).
    pub(super) fn new(
        src_size: (usize, usize),
        leak_size: (usize, usize),
        h_work: &Homography,
        src: &Gray,
        leak: &Gray,
    ) -> Self {
        let warp = Warp::new(src_size, leak_size, h_work);
        // A leaked picture coarser than the working grid lost the source's finest detail;
        // the source is compared as the leaked pixels would show it, or that detail is noise.
        let view = match (&warp, h_work.as_geometry()) {
            (Warp::Axis(_), Some(g)) if g.sx < 1.0 && g.sy < 1.0 => {
                Some(LeakView::new(src_size, leak_size, &g))
            }
            // A turned, mirrored or keystoned copy loses the same detail: the source is
            // averaged on a grid of the map's scale at the picture's centre and brought
            // back (a small picture-in-picture registers with a hair of rotation, and
            // compared at full detail its scores fell to half).
            (Warp::Projective(_), _) => {
                let (sx, sy) = h_work.local_scale(src_size.0 as f64, src_size.1 as f64);
                (sx < 1.0 && sy < 1.0).then(|| {
                    let size =
                        ((src_size.0 as f64 * sx).ceil() as usize, (src_size.1 as f64 * sy).ceil() as usize);
                    LeakView::new(src_size, size, &Geometry { sx, sy, tx: 0.0, ty: 0.0 })
                })
            }
            _ => None,
        };
        let usable = overlay_free(src, leak, &warp);
        Self { src_size, leak_size, warp, view, usable }
    }
}

/// Covered source pixels outside overlays. Whole 8x8 blocks (the mark's own) are judged:
/// after a linear tone fit, a block whose mean difference is far above the typical block's
/// shows something else than the source (black bars of a letterbox, a channel logo, a
/// banner) and would otherwise bend the tone curve and flood the residual.
pub(super) fn overlay_free(src: &Gray, leak: &Gray, warp: &Warp) -> Vec<bool> {
    let (w, h) = (src.w, src.h);
    let mut usable = vec![false; w * h];
    let mut seen = vec![f32::NAN; w * h];
    let (mut n, mut ss, mut sl, mut sss, mut ssl) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for j in warp.y_range() {
        for i in warp.x_range() {
            if let Some(v) = warp.sample(leak, i, j) {
                let s = f64::from(src.data[j * w + i]);
                let l = f64::from(v);
                seen[j * w + i] = v;
                usable[j * w + i] = true;
                n += 1.0;
                ss += s;
                sl += l;
                sss += s * s;
                ssl += s * l;
            }
        }
    }
    let var = sss - ss * ss / n.max(1.0);
    if n < 64.0 || var <= 1e-6 {
        return usable;
    }
    let a = (ssl - ss * sl / n) / var;
    let b = (sl - a * ss) / n;
    let (bx, by) = (w / 8, h / 8);
    let mut blocks: Vec<(usize, f64)> = Vec::with_capacity(bx * by);
    for j in 0..by {
        for i in 0..bx {
            let (mut d, mut c) = (0f64, 0f64);
            for y in j * 8..j * 8 + 8 {
                for x in i * 8..i * 8 + 8 {
                    let v = seen[y * w + x];
                    if !v.is_nan() {
                        d += (f64::from(v) - (a * f64::from(src.data[y * w + x]) + b)).abs();
                        c += 1.0;
                    }
                }
            }
            if c > 0.0 {
                blocks.push((j * bx + i, d / c));
            }
        }
    }
    if blocks.len() < 8 {
        return usable;
    }
    let mut sorted: Vec<f64> = blocks.iter().map(|b| b.1).collect();
    sorted.sort_by(f64::total_cmp);
    let typical = sorted[sorted.len() / 2];
    // Far above the typical block and above anything a codec does to a matching block.
    let cut = (4.0 * typical).max(12.0);
    for &(k, d) in &blocks {
        if d > cut {
            let (i, j) = (k % bx, k / bx);
            for y in j * 8..j * 8 + 8 {
                usable[y * w + i * 8..y * w + i * 8 + 8].fill(false);
            }
        }
    }
    usable
}

/// The source as a coarser leaked picture shows it: area-averaged onto the leaked pixels
/// under the geometry, then interpolated back onto the working grid with the same taps as
/// the leaked picture.
pub(super) struct LeakView {
    pub(super) cols: Vec<Vec<(usize, f32)>>,
    pub(super) rows: Vec<Vec<(usize, f32)>>,
    /// Size of the coarser grid the source is averaged onto.
    pub(super) size: (usize, usize),
    /// Back from that grid onto the working grid.
    pub(super) taps: WarpTaps,
}

impl LeakView {
    pub(super) fn new(src_size: (usize, usize), leak_size: (usize, usize), g: &Geometry) -> Self {
        // Leaked pixel x covers source positions [(x - t) / s, (x + 1 - t) / s).
        let axis = |src_len: usize, leak_len: usize, s: f64, t: f64| -> Vec<Vec<(usize, f32)>> {
            (0..leak_len)
                .map(|x| {
                    let (a, b) = ((x as f64 - t) / s, (x as f64 + 1.0 - t) / s);
                    let lo = a.floor().max(0.0) as usize;
                    let hi = (b.ceil().max(0.0) as usize).min(src_len);
                    let mut taps: Vec<(usize, f32)> = (lo..hi)
                        .map(|i| (i, (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0)))
                        .filter(|&(_, c)| c > 1e-9)
                        .map(|(i, c)| (i, c as f32))
                        .collect();
                    if taps.is_empty() {
                        // Outside the source: the nearest edge pixel (only ever read at the
                        // rim of the covered area, by interpolation).
                        let i = if b <= 0.0 { 0 } else { src_len - 1 };
                        taps.push((i, 1.0));
                    }
                    let total: f32 = taps.iter().map(|t| t.1).sum();
                    taps.iter_mut().for_each(|t| t.1 /= total);
                    taps
                })
                .collect()
        };
        Self {
            cols: axis(src_size.0, leak_size.0, g.sx, g.tx),
            rows: axis(src_size.1, leak_size.1, g.sy, g.ty),
            size: leak_size,
            taps: WarpTaps::new(src_size, leak_size, g),
        }
    }

    /// Writes the source as the leaked pixels see it into `seen` (working-grid size), using
    /// `between` (source rows x the view's columns) and `on_leak` (the view's size).
    pub(super) fn apply(&self, src: &Gray, between: &mut [f32], on_leak: &mut Gray, seen: &mut Gray) {
        let taps = &self.taps;
        let lw = on_leak.w;
        for (row, out) in src.data.chunks_exact(src.w).zip(between.chunks_exact_mut(lw)) {
            for (o, col) in out.iter_mut().zip(&self.cols) {
                *o = col.iter().map(|&(i, w)| row[i] * w).sum();
            }
        }
        for (out, row_taps) in on_leak.data.chunks_exact_mut(lw).zip(&self.rows) {
            out.fill(0.0);
            for &(j, w) in row_taps {
                for (o, &v) in out.iter_mut().zip(&between[j * lw..(j + 1) * lw]) {
                    *o += v * w;
                }
            }
        }
        seen.data.copy_from_slice(&src.data);
        for j in taps.y_range.clone() {
            for i in taps.x_range.clone() {
                seen.data[j * src.w + i] = taps.sample(on_leak, i, j);
            }
        }
    }
}
