//! The keyed pilot search: the pilot's tile, its correlation with the folded residual over
//! scales, shapes, mirrors and cyclic shifts, and the cache of key-independent folds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rustfft::num_complex::Complex32;
use tracemark_core::layout::{PILOT, TILE_PX};
use tracemark_core::MasterKey;

use super::lattice::{lattice_shapes, LATTICE_SCALE_SPAN};
use super::sampling::{fold_resampled, fold_splatted, AxisFold, Linear};
use super::views::{FIT_EDGES, WINDOW_CANDIDATES};
use crate::fft2d::Fft2d;
use crate::image::Gray;

/// The pilot's reference tile in pixels: what a unit-mask mark's pilot looks like. The
/// search does not know the copy's layout, so it looks for the pilot as v1-v4 draw it (a
/// v5 pilot, every band at one amplitude, correlates with it at 0.984).
pub(super) fn pilot_tile(key: &MasterKey) -> Vec<f32> {
    signed_tile(key, |_| 0.0)
}

/// A candidate export's whole mark in pixels: the pilot and the codeword's slots signed by
/// its bits, as [`pilot_tile`] draws the pilot alone. Four times the pilot's energy.
pub(super) fn mark_tile(key: &MasterKey, codeword: &[i8]) -> Vec<f32> {
    signed_tile(key, |bit| f32::from(codeword[bit]))
}

/// The tile with every pilot slot at +1 and each codeword slot at `bit_sign` of its bit.
fn signed_tile(key: &MasterKey, bit_sign: impl Fn(usize) -> f32) -> Vec<f32> {
    let layout = tracemark_core::layout::TileLayout::new(key);
    let weights = tracemark_core::dct::band_weights();
    tracemark_core::layout::tile_image(&layout.block_patterns(weights, |slot| {
        if slot.role == PILOT {
            1.0
        } else {
            bit_sign(usize::from(slot.role))
        }
    }))
}

/// The scales (and shapes) one pilot search tries: coarse steps over a range, then fine
/// steps around the best coarse scale.
#[derive(Clone, Copy, Debug)]
pub(super) struct ScaleSearch {
    /// Coarse scales are `(1 + coarse_step)^k` for `k` in this range.
    coarse: (i32, i32),
    pub(super) coarse_step: f64,
    /// Fine scales: the best coarse one times `1 + fine_step * k`, `0 < |k| <= fine_half`.
    pub(super) fine_half: i32,
    pub(super) fine_step: f64,
    /// Whether shapes from the mark's lattice (rotation, stretch) join the search.
    pub(super) lattice: bool,
    /// Whether the views searched are windows of the picture ([`pip_windows`](super::views::pip_windows)).
    pub(super) windows: bool,
    /// The mirrors tried, in pairs (one inverse transform per pair).
    pub(super) mirrors: &'static [Mirror],
    /// How many of the best coarse peaks (distinct: not the same shape, mirror and a
    /// neighbouring scale) are refined and read. A faint pilot can lose the top place to
    /// the highest of the search's null peaks and still be second or third; its reading
    /// then names the export where the best peak alone would not. Each read peak's
    /// candidates count in the family.
    pub(super) peaks: usize,
}

impl ScaleSearch {
    pub(super) fn coarse_scales(&self) -> impl Iterator<Item = f64> + '_ {
        (self.coarse.0..=self.coarse.1).map(|k| (1.0 + self.coarse_step).powi(k))
    }

    /// The coarse scales `shape` is tried at: all of them for the plain shape; for a
    /// lattice's, those within [`LATTICE_SCALE_SPAN`] of its lattice's scale or of half of it.
    pub(super) fn coarse_scales_of(&self, shape: &Shape) -> impl Iterator<Item = f64> + '_ {
        let lattice = shape.lattice_scale;
        self.coarse_scales().filter(move |&s| {
            lattice.is_none_or(|l| [l, l / 2.0].iter().any(|&c| (s / c).ln().abs() <= LATTICE_SCALE_SPAN))
        })
    }

    /// The most coarse scales a lattice shape is tried at: those in two spans.
    pub(super) fn most_lattice_scales(&self) -> usize {
        2 * ((2.0 * LATTICE_SCALE_SPAN / self.coarse_step.ln_1p()).floor() as usize + 1)
    }

    pub(super) fn fine_scales(&self, around: f64) -> impl Iterator<Item = f64> + '_ {
        (-self.fine_half..=self.fine_half)
            .filter(|&k| k != 0)
            .map(move |k| around * (1.0 + self.fine_step * f64::from(k)))
    }

    /// The most (scale, shape, mirror, shift) hypotheses a search of `views` views can
    /// try: what a planned search that was skipped counts for.
    pub(super) fn most_hypotheses(&self, views: usize) -> f64 {
        let coarse = (self.coarse.1 - self.coarse.0 + 1) as usize;
        let lattice = if self.lattice { MAX_LATTICE_SHAPES * self.most_lattice_scales() } else { 0 };
        let scales = coarse + lattice + 2 * self.fine_half as usize;
        // A window search also refines its best windows: fine scales, fitted rectangles,
        // and reads of the fitted window at fine scales.
        let pairs = FIT_EDGES * (FIT_EDGES + 1) / 2;
        let fine = 2 * self.fine_half as usize;
        let scales = scales + (self.peaks - 1) * fine;
        let fitting = if self.windows { WINDOW_CANDIDATES * (pairs * pairs + 2 * fine + 2) } else { 0 };
        ((views * scales + fitting) * self.mirrors.len() * TILE_PX * TILE_PX) as f64
    }
}

/// The whole picture: 1% steps anchored at 1 (an unscaled copy is the common case), from
/// 0.5 to 2 mark pixels per analysis pixel, then 0.1% steps around the best; rotations and
/// stretches from the lattice.
pub(super) const WHOLE_PICTURE: ScaleSearch = ScaleSearch {
    coarse: (-70, 70),
    coarse_step: 0.01,
    fine_half: 10,
    fine_step: 0.001,
    lattice: true,
    windows: false,
    mirrors: &Mirror::ALL,
    peaks: 3,
};

/// A search for one candidate's whole mark ([`Pilot::whole_mark`]): the whole picture's,
/// its best peak read. With four times the pilot's energy the true peak stands far clearer
/// of the null peaks, so the runners-up are not worth their reads.
pub(super) const WHOLE_MARK: ScaleSearch = ScaleSearch { peaks: 1, ..WHOLE_PICTURE };

/// A window of the picture that may hold a picture-in-picture: the mark shrunk to between
/// 0.42 and 1 of its size in 2% steps (a window is a third of the picture, so the coarser
/// step misaligns its edges no more than 1% does the whole picture's), then 0.2% steps.
/// Smaller, the mark's 8x8 blocks are under 3.4 pixels: an inset holding the mark at 0.375
/// (3-pixel blocks) was not read even cut out by hand after x264 at crf 23. Unflipped or
/// flipped left-right (a flip upside down is the whole picture's mistake, not an inset's).
pub(super) const PICTURE_IN_PICTURE: ScaleSearch = ScaleSearch {
    coarse: (-44, 0),
    coarse_step: 0.02,
    fine_half: 10,
    fine_step: 0.002,
    lattice: false,
    windows: true,
    mirrors: &[Mirror::ALL[0], Mirror::ALL[1]],
    peaks: 1,
};

/// At most this many lattice shapes are searched (each counted in the hypotheses).
pub(super) const MAX_LATTICE_SHAPES: usize = 8;

/// A shape the whole-picture search tries: the plain one, at every scale, or one the mark's
/// lattice suggests, near the scale its lattice was seen at.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    /// Rotation and stretch, mark to analysis pixels, at scale 1.
    pub(super) map: Linear,
    /// Analysis pixels per mark pixel of the lattice; `None` for the plain shape.
    pub(super) lattice_scale: Option<f64>,
}

impl Shape {
    pub(super) const PLAIN: Shape = Shape { map: Linear::IDENTITY, lattice_scale: None };

    /// This shape as the picture transposed shows it (conjugation by the swap of axes).
    pub(super) fn transposed(self) -> Shape {
        let m = self.map.0;
        Shape { map: Linear([[m[1][1], m[1][0]], [m[0][1], m[0][0]]]), ..self }
    }
}

/// A mirror of the leaked picture relative to the mark: copies are flipped left-right
/// (most often) or upside down, and both at once is a half turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Mirror {
    /// Flipped left-right.
    pub(crate) horizontal: bool,
    /// Flipped upside down.
    pub(crate) vertical: bool,
}

impl Mirror {
    /// Every mirror the blind search tries, the unflipped picture first.
    pub(super) const ALL: [Mirror; 4] = [
        Mirror { horizontal: false, vertical: false },
        Mirror { horizontal: true, vertical: false },
        Mirror { horizontal: false, vertical: true },
        Mirror { horizontal: true, vertical: true },
    ];

    pub(super) fn is_identity(self) -> bool {
        !self.horizontal && !self.vertical
    }

    /// `img` flipped by this mirror (a copy; pixel-exact).
    pub(super) fn apply(self, img: &Gray) -> Gray {
        let mut out = Gray::new(img.w, img.h);
        for y in 0..img.h {
            let sy = if self.vertical { img.h - 1 - y } else { y };
            for x in 0..img.w {
                let sx = if self.horizontal { img.w - 1 - x } else { x };
                out.data[y * img.w + x] = img.data[sy * img.w + sx];
            }
        }
        out
    }

    /// The folded tile of the mirrored picture, up to a cyclic shift: folding commutes
    /// with a flip once the flip is taken modulo the tile. (The search does this on the
    /// spectrum, see [`PilotSearch::correlate_mirrored`].)
    #[cfg(test)]
    pub(super) fn reflect_folded(self, folded: &[f32], out: &mut [f32]) {
        for v in 0..TILE_PX {
            let sv = if self.vertical { (TILE_PX - v) % TILE_PX } else { v };
            for u in 0..TILE_PX {
                let su = if self.horizontal { (TILE_PX - u) % TILE_PX } else { u };
                out[v * TILE_PX + u] = folded[sv * TILE_PX + su];
            }
        }
    }
}

/// The pilot's reference tile and its conjugated spectrum: made once per key and shared by
/// every thread's [`PilotSearch`].
pub(super) struct Pilot {
    #[cfg(test)]
    pub(super) tile: Vec<f32>,
    conj_spectrum: Vec<Complex32>,
}

impl Pilot {
    pub(super) fn new(key: &MasterKey) -> Self {
        Self::from_tile(pilot_tile(key))
    }

    /// A search template of a candidate's whole mark ([`mark_tile`]).
    pub(super) fn whole_mark(key: &MasterKey, codeword: &[i8]) -> Self {
        Self::from_tile(mark_tile(key, codeword))
    }

    fn from_tile(tile: Vec<f32>) -> Self {
        let mut conj_spectrum: Vec<Complex32> = tile.iter().map(|&v| Complex32::new(v, 0.0)).collect();
        Fft2d::new(TILE_PX, TILE_PX).forward(&mut conj_spectrum);
        conj_spectrum.iter_mut().for_each(|c| *c = c.conj());
        Self {
            #[cfg(test)]
            tile,
            conj_spectrum,
        }
    }
}

/// Which of an accumulation's sets of views a search looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum ViewSet {
    /// The plain sums ([`BlindAccumulation::views`](super::BlindAccumulation::views)).
    Plain,
    /// The sums moved back by a [`Tracking`](tracemark_core::motion::Tracking) (its index).
    Moved(usize),
    /// Windows of the finest plain view ([`pip_windows`](super::views::pip_windows)).
    Windows,
    /// The plain sums (`None`) or those moved back by a tracking (`Some` of its index),
    /// transposed ([`Analysis::transposed`](super::views::Analysis::transposed)).
    Transposed(Option<usize>),
}

/// One folded spectrum of a search: the view (of which set), the map and the way of folding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct FoldKey {
    views: ViewSet,
    view: usize,
    map: [[u64; 2]; 2],
    splat: bool,
}

/// What every key's search of an accumulation computes alike, kept for the next key
/// ([`BlindAccumulation::keep_folds`](super::BlindAccumulation::keep_folds)): the spectra
/// of the coarse hypotheses (`None` for one too small to fold) and each view's lattice
/// shapes. Fine hypotheses (around each key's own best coarse one) are not kept: they
/// would grow with every key.
#[derive(Default)]
pub(super) struct FoldCache {
    spectra: Mutex<HashMap<FoldKey, Option<Arc<[Complex32]>>>>,
    shapes: Mutex<HashMap<(ViewSet, usize), Vec<Shape>>>,
}

impl FoldCache {
    fn get(&self, key: &FoldKey) -> Option<Option<Arc<[Complex32]>>> {
        locked(&self.spectra).get(key).cloned()
    }

    fn keep(&self, key: FoldKey, spectrum: Option<Arc<[Complex32]>>) {
        locked(&self.spectra).insert(key, spectrum);
    }

    /// [`lattice_shapes`] of view `view` of `views`, found once.
    pub(super) fn lattice_shapes(&self, views: ViewSet, view: usize, acc: &Gray) -> Vec<Shape> {
        let kept = locked(&self.shapes).get(&(views, view)).cloned();
        kept.unwrap_or_else(|| {
            let shapes = lattice_shapes(acc);
            locked(&self.shapes).insert((views, view), shapes.clone());
            shapes
        })
    }

    pub(super) fn len(&self) -> usize {
        locked(&self.spectra).len()
    }
}

/// Locks `m`, also after a panic in another thread: the maps only ever hold finished
/// values, so a poisoned lock holds nothing half-written.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a hypothesis's spectrum may be kept: the cache, and which view it folds.
#[derive(Clone, Copy)]
pub(super) struct Cached<'c> {
    pub(super) cache: &'c FoldCache,
    pub(super) views: ViewSet,
    pub(super) view: usize,
}

/// Searches the pilot's correlation peak over geometries: one FFT plan and its buffers,
/// reused for every hypothesis a thread tries.
pub(super) struct PilotSearch<'p> {
    pilot: &'p Pilot,
    fft: Fft2d,
    folded: Vec<f32>,
    /// Rows the separable fold of a map without rotation reuses.
    axis: AxisFold,
    /// Spectrum of the folded tile.
    spectrum: Vec<Complex32>,
    pub(super) product: Vec<Complex32>,
    surface: Vec<f32>,
    /// Fold by splatting the picture onto the grid ([`fold_splatted`]) instead of
    /// resampling it.
    splat: bool,
}

impl<'p> PilotSearch<'p> {
    pub(super) fn new(pilot: &'p Pilot) -> Self {
        let n = TILE_PX * TILE_PX;
        Self {
            pilot,
            fft: Fft2d::new(TILE_PX, TILE_PX),
            folded: vec![0f32; n],
            axis: AxisFold::default(),
            spectrum: vec![Complex32::default(); n],
            product: vec![Complex32::default(); n],
            surface: vec![0f32; n],
            splat: false,
        }
    }

    /// A search that folds by splatting (see [`PilotSearch::splat`]).
    pub(super) fn splatting(pilot: &'p Pilot) -> Self {
        Self { splat: true, ..Self::new(pilot) }
    }

    /// [`PilotSearch::fold_spectrum`] through `cached`: a spectrum an earlier key's
    /// search folded is copied instead of folded again, and a new one is kept.
    fn fold_spectrum_cached(&mut self, acc: &Gray, map: Linear, cached: Option<Cached>) -> bool {
        let Some(cached) = cached else { return self.fold_spectrum(acc, map) };
        let key = FoldKey {
            views: cached.views,
            view: cached.view,
            map: map.0.map(|r| r.map(f64::to_bits)),
            splat: self.splat,
        };
        if let Some(kept) = cached.cache.get(&key) {
            return kept.map(|spectrum| self.spectrum.copy_from_slice(&spectrum)).is_some();
        }
        let fits = self.fold_spectrum(acc, map);
        cached.cache.keep(key, fits.then(|| self.spectrum.as_slice().into()));
        fits
    }

    /// Folds `acc` resampled by `map` and takes its spectrum; `false` when the image is
    /// too small for half a tile.
    pub(super) fn fold_spectrum(&mut self, acc: &Gray, map: Linear) -> bool {
        let (w, h) = if self.splat {
            fold_splatted(acc, map, &mut self.folded)
        } else {
            fold_resampled(acc, map, &mut self.folded, &mut self.axis)
        };
        if w < TILE_PX / 2 || h < TILE_PX / 2 {
            return false;
        }
        for (c, &v) in self.spectrum.iter_mut().zip(&self.folded) {
            *c = Complex32::new(v, 0.0);
        }
        self.fft.forward(&mut self.spectrum);
        // The surface is free until the correlation fills it.
        whiten_spectrum(&mut self.spectrum, &mut self.surface);
        true
    }

    /// Best pilot peak of `acc` resampled by `map` over the mirrors: its z, and the
    /// mirror. `None` when the image is too small for a tile.
    pub(super) fn best_mirror(
        &mut self,
        acc: &Gray,
        map: Linear,
        mirrors: &[Mirror],
        cached: Option<Cached>,
    ) -> Option<(f64, Mirror)> {
        if !self.fold_spectrum_cached(acc, map, cached) {
            return None;
        }
        Some(self.best_folded_mirror(mirrors))
    }

    /// The best of `mirrors` for the spectrum folded last: its z, and the mirror.
    fn best_folded_mirror(&mut self, mirrors: &[Mirror]) -> (f64, Mirror) {
        let mut best = (f64::MIN, Mirror::ALL[0]);
        for pair in mirrors.chunks_exact(2) {
            let (za, zb) = self.correlate_mirror_pair(pair[0], pair[1]);
            for (z, m) in [(za.0, pair[0]), (zb.0, pair[1])] {
                if z > best.0 {
                    best = (z, m);
                }
            }
        }
        best
    }

    /// [`PilotSearch::best_mirror`] of each of `pilots` (in order; none when the image is
    /// too small for a tile), from one fold. The search's own pilot becomes the last.
    pub(super) fn best_mirror_each(
        &mut self,
        acc: &Gray,
        map: Linear,
        mirrors: &[Mirror],
        pilots: &'p [Pilot],
        cached: Option<Cached>,
    ) -> Vec<(f64, Mirror)> {
        if !self.fold_spectrum_cached(acc, map, cached) {
            return Vec::new();
        }
        pilots
            .iter()
            .map(|pilot| {
                self.pilot = pilot;
                self.best_folded_mirror(mirrors)
            })
            .collect()
    }

    /// Peak of the pilot correlation of `acc` resampled by `map`: its z over the whole
    /// surface and the integer shift; `None` when the image is too small for a tile.
    pub(super) fn peak(&mut self, acc: &Gray, map: Linear) -> Option<(f64, (usize, usize))> {
        if !self.fold_spectrum(acc, map) {
            return None;
        }
        Some(self.correlate_mirrored(Mirror::ALL[0]))
    }

    /// z and position of the pilot's cyclic correlation peak in the folded tile flipped by
    /// `mirror`. A flip modulo the tile, u -> -u, is k -> -k on the spectrum: one forward
    /// transform serves all four mirrors.
    pub(super) fn correlate_mirrored(&mut self, mirror: Mirror) -> (f64, (usize, usize)) {
        let n = TILE_PX;
        self.mirrored_product(mirror, false);
        self.fft.inverse(&mut self.product);
        let scale = 1.0 / (n * n) as f32;
        for (o, v) in self.surface.iter_mut().zip(&self.product) {
            *o = v.re * scale;
        }
        surface_peak(&self.surface)
    }

    /// [`PilotSearch::correlate_mirrored`] for two mirrors at once, with one inverse
    /// transform: both correlation surfaces are real, so one is carried in the real part
    /// and the other in the imaginary part.
    pub(super) fn correlate_mirror_pair(&mut self, a: Mirror, b: Mirror) -> (Peak, Peak) {
        self.mirrored_product(a, false);
        self.mirrored_product(b, true);
        surface_peaks_of_pair(self.fft.inverse_transposed(&mut self.product))
    }

    /// The folded spectrum flipped by `mirror` times the pilot's conjugate spectrum, into
    /// `product`, or, with `add_imaginary`, added to it times i.
    pub(super) fn mirrored_product(&mut self, mirror: Mirror, add_imaginary: bool) {
        let n = TILE_PX;
        let i = Complex32::new(0.0, 1.0);
        for ky in 0..n {
            let sy = if mirror.vertical { (n - ky) % n } else { ky };
            let (out, pilot) = (&mut self.product[ky * n..][..n], &self.pilot.conj_spectrum[ky * n..][..n]);
            let src = &self.spectrum[sy * n..][..n];
            if add_imaginary {
                if mirror.horizontal {
                    out[0] += i * (src[0] * pilot[0]);
                    for kx in 1..n {
                        out[kx] += i * (src[n - kx] * pilot[kx]);
                    }
                } else {
                    for ((o, &a), &p) in out.iter_mut().zip(src).zip(pilot) {
                        *o += i * (a * p);
                    }
                }
            } else if mirror.horizontal {
                out[0] = src[0] * pilot[0];
                for kx in 1..n {
                    out[kx] = src[n - kx] * pilot[kx];
                }
            } else {
                for ((o, &a), &b) in out.iter_mut().zip(src).zip(pilot) {
                    *o = a * b;
                }
            }
        }
    }

    /// Sub-pixel refinement of a peak (parabola through the neighbours); call right after
    /// [`PilotSearch::peak`] for the same image and scale.
    pub(super) fn subpixel(&self, (dx, dy): (usize, usize)) -> (f64, f64) {
        let at = |x: usize, y: usize| f64::from(self.surface[(y % TILE_PX) * TILE_PX + x % TILE_PX]);
        let para = parabola_vertex;
        (
            dx as f64 + para(at(dx + TILE_PX - 1, dy), at(dx, dy), at(dx + 1, dy)),
            dy as f64 + para(at(dx, dy + TILE_PX - 1), at(dx, dy), at(dx, dy + 1)),
        )
    }
}

/// Divides every frequency of a folded tile's spectrum by its own magnitude (plus a tenth
/// of the mean magnitude, so frequencies holding next to nothing are not blown up to full
/// weight): the correlation with the pilot then weighs every frequency alike instead of
/// following the residual's spectrum, which the pictures and the encoders shape (phase-only
/// matched filtering, as tiled watermarks have long been synchronised). The fold is almost
/// all noise, so its magnitude estimates the noise's. On most of the gauntlet's copies of
/// one clip the pilot's peak rose by a quarter or more; the highest null peaks did not.
/// `magnitudes` (as long as `spectrum`) is scratch: each magnitude is taken once, on the
/// search's every hypothesis.
pub(super) fn whiten_spectrum(spectrum: &mut [Complex32], magnitudes: &mut [f32]) {
    for (m, c) in magnitudes.iter_mut().zip(spectrum.iter()) {
        *m = c.norm();
    }
    let mean = magnitudes.iter().sum::<f32>() / spectrum.len().max(1) as f32;
    let floor = WHITENING_FLOOR * mean;
    if floor > 0.0 {
        for (c, &m) in spectrum.iter_mut().zip(magnitudes.iter()) {
            *c /= m + floor;
        }
    }
}

/// The floor [`whiten_spectrum`] adds to every magnitude, relative to their mean.
const WHITENING_FLOOR: f32 = 0.1;

/// Where the parabola through three equally spaced values `l`, `c`, `r` peaks, relative to
/// the middle one, within half a step either side (0 when they are collinear).
pub(super) fn parabola_vertex(l: f64, c: f64, r: f64) -> f64 {
    let d = l - 2.0 * c + r;
    if d.abs() > 1e-12 {
        (0.5 * (l - r) / d).clamp(-0.5, 0.5)
    } else {
        0.0
    }
}

/// A correlation peak: its z and where it is.
pub(super) type Peak = (f64, (usize, usize));

/// z of a correlation surface's highest value over the whole surface, and where it is.
pub(super) fn surface_peak(surface: &[f32]) -> (f64, (usize, usize)) {
    let n = surface.len() as f64;
    let mean = surface.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = surface.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    let (i, v) =
        surface.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
    ((f64::from(v) - mean) / var.sqrt().max(1e-12), (i % TILE_PX, i / TILE_PX))
}

/// [`surface_peak`] of the real and of the imaginary parts of a complex surface, scaled by
/// `1 / TILE_PX²`, given transposed (see [`Fft2d::inverse_transposed`]); bit for bit the
/// same values, summed in the same order. The two surfaces' sums run side by side: each is
/// one long chain of dependent additions, so two at once cost about what one did.
pub(super) fn surface_peaks_of_pair(columns: &[Complex32]) -> (Peak, Peak) {
    let n = TILE_PX;
    assert_eq!(columns.len(), n * n);
    let scale = 1.0 / (n * n) as f32;
    let count = (n * n) as f64;
    // `Sum for f64` folds from -0.0; so do these.
    let (mut sum_re, mut sum_im) = (-0.0f64, -0.0f64);
    let (mut best_re, mut best_im) = ((0, f32::MIN), (0, f32::MIN));
    for y in 0..n {
        for x in 0..n {
            let c = columns[x * n + y];
            let (re, im) = (c.re * scale, c.im * scale);
            sum_re += f64::from(re);
            sum_im += f64::from(im);
            if re > best_re.1 {
                best_re = (y * n + x, re);
            }
            if im > best_im.1 {
                best_im = (y * n + x, im);
            }
        }
    }
    let (mean_re, mean_im) = (sum_re / count, sum_im / count);
    let (mut var_re, mut var_im) = (-0.0f64, -0.0f64);
    for y in 0..n {
        for x in 0..n {
            let c = columns[x * n + y];
            var_re += (f64::from(c.re * scale) - mean_re).powi(2);
            var_im += (f64::from(c.im * scale) - mean_im).powi(2);
        }
    }
    let peak = |(i, v): (usize, f32), mean: f64, var: f64| -> Peak {
        ((f64::from(v) - mean) / (var / count).sqrt().max(1e-12), (i % n, i / n))
    };
    (peak(best_re, mean_re, var_re), peak(best_im, mean_im, var_im))
}
