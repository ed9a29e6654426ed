//! The embedder: adds one export's mark to frames.
//!
//! Per frame: the luma is brought onto the working grid (area downscale for HD), a
//! perceptual mask is computed per 8x8 block, the global strength is solved so the mark
//! meets the configured PSNR, and each block gets `strength * mask * pattern`, where the
//! pattern (the keyed chips times codeword signs times Watson-weighted DCT basis images of
//! the band) is precomputed once per export for the whole periodic tile. For HD the residual
//! is interpolated back to full resolution before it is added. The per-frame loop does not
//! allocate once the scratch has seen the frame size.

use crate::dct::{self, BAND};
use crate::frame::Frame;
use crate::grid::{self, AreaTaps, Grid, LinearTaps};
use crate::key::MasterKey;
use crate::layout::{self, Scheme, TileLayout, PILOT, TILE_BLOCKS, TILE_PX};
use crate::mask::{self, MaskParams};
use crate::payload::{Codebook, MarkId, CODE_BITS};
use crate::pipeline::{FrameAt, FrameTransform};
use crate::{Error, Result};

/// Settings of the embedder. Build with [`EmbedConfig::new`] and `with_*`; checked by
/// [`EmbedConfig::validate`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmbedConfig {
    /// Luma PSNR of the marked frame against the unmarked one that the strength is solved
    /// for (frames with little texture may end up above it: the strength is also capped).
    pub target_psnr_db: f64,
    /// Perceptual mask parameters.
    pub mask: MaskParams,
    /// Whether the mark stays fixed or moves with the picture.
    pub scheme: Scheme,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self { target_psnr_db: 46.0, mask: MaskParams::default(), scheme: Scheme::default() }
    }
}

impl EmbedConfig {
    /// Default settings (46 dB).
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the PSNR target.
    pub fn with_target_psnr_db(mut self, db: f64) -> Self {
        self.target_psnr_db = db;
        self
    }
    /// Sets the layout scheme.
    pub fn with_scheme(mut self, scheme: Scheme) -> Self {
        self.scheme = scheme;
        self
    }
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !(30.0..=70.0).contains(&self.target_psnr_db) {
            return Err(Error::InvalidConfig {
                setting: "target_psnr_db",
                reason: format!("{} dB is outside 30..=70 dB", self.target_psnr_db),
            });
        }
        self.mask.validate()
    }
    /// Target per-pixel RMS of the mark in 8-bit levels.
    pub fn target_rms(&self) -> f64 {
        255.0 / 10f64.powf(self.target_psnr_db / 20.0)
    }
}

/// Per-frame numbers, for tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EmbedStats {
    /// Global strength used.
    pub strength: f32,
    /// RMS of the mark on the working grid, before rounding and clipping.
    pub mark_rms: f32,
}

/// Rounds to the nearest level (ties to even) and saturates. Adding 1.5 * 2^23 leaves the
/// rounded integer in the low mantissa bits: plain float and bit operations that vectorise,
/// where `f32::round` is a libm call and a saturating `as u8` cast stays scalar.
#[inline(always)]
fn to_pixel(v: f32) -> u8 {
    (v.clamp(0.0, 255.0) + 12_582_912.0).to_bits() as u8
}

/// Adds `mark` to the pixels of `row` (as far as both go), rounded and saturated.
#[inline(never)]
fn add_to_row(row: &mut [u8], mark: &[f32]) {
    for (px, &d) in row.iter_mut().zip(mark) {
        *px = to_pixel(f32::from(*px) + d);
    }
}

/// Adds the working-grid residual `resid` (`size`) to the luma, interpolated by the taps
/// (`ux` across, `uy` down). Separable bilinear: every working row is widened once
/// (`wide`, work height x picture width), then each picture row is a blend of two wide rows
/// (contiguous, vectorisable).
fn add_interpolated(
    frame: &mut Frame,
    resid: &[f32],
    (ww, wh): (usize, usize),
    (ux, uy): (&LinearTaps, &LinearTaps),
    wide: &mut [f32],
) {
    let fw = frame.width();
    // Same-scale taps (a native grid moved by a fraction) read consecutive pairs with one
    // fraction: those runs go as slices (vectorised), the clamped ends tap by tap.
    let run = same_fraction_run(&ux.taps, ww);
    for (wr, rr) in wide.chunks_exact_mut(fw).zip(resid.chunks_exact(ww)) {
        widen_row(rr, &ux.taps, run.clone(), wr);
    }
    for (y, &(i0, fy)) in uy.taps.iter().enumerate() {
        let i0 = i0 as usize;
        let w0 = &wide[i0 * fw..(i0 + 1) * fw];
        let w1 = &wide[(i0 + 1).min(wh - 1) * fw..][..fw];
        for ((px, &a), &b) in frame.y.row_mut(y).iter_mut().zip(w0).zip(w1) {
            *px = to_pixel(f32::from(*px) + a + (b - a) * fy);
        }
    }
}

/// The longest range of outputs whose taps read consecutive inputs `(j, j + 1)`, `j + 1`
/// inside the row of `len`, all with the same fraction (empty when there is none longer
/// than a few taps).
fn same_fraction_run(taps: &[(u32, f32)], len: usize) -> std::ops::Range<usize> {
    let (mut best, mut start) = (0..0, 0);
    for o in 1..=taps.len() {
        let continues = o < taps.len()
            && taps[o].0 == taps[o - 1].0 + 1
            && taps[o].1.to_bits() == taps[o - 1].1.to_bits()
            && (taps[o].0 as usize) + 1 < len;
        if !continues {
            if o - start > best.len() && (taps[start].0 as usize) + 1 < len {
                best = start..o;
            }
            start = o;
        }
    }
    if best.len() >= 16 {
        best
    } else {
        0..0
    }
}

/// One row of [`add_interpolated`]'s horizontal pass: `out[o] = a + (b - a) * f` for the
/// tap `(j, f)` of `o`, `a = row[j]`, `b = row[min(j + 1, last)]`; outputs in `run` (see
/// [`same_fraction_run`]) as slices.
fn widen_row(row: &[f32], taps: &[(u32, f32)], run: std::ops::Range<usize>, out: &mut [f32]) {
    let last = row.len() - 1;
    let tap = |o: usize| {
        let (j, f) = taps[o];
        let j = j as usize;
        let (a, b) = (row[j], row[(j + 1).min(last)]);
        a + (b - a) * f
    };
    for (o, v) in out.iter_mut().enumerate().take(run.start) {
        *v = tap(o);
    }
    if !run.is_empty() {
        let (j, f) = (taps[run.start].0 as usize, taps[run.start].1);
        let n = run.len();
        let (a, b) = (&row[j..j + n], &row[j + 1..j + 1 + n]);
        for ((v, &a), &b) in out[run.clone()].iter_mut().zip(a).zip(b) {
            *v = a + (b - a) * f;
        }
    }
    for (o, v) in out.iter_mut().enumerate().skip(run.end) {
        *v = tap(o);
    }
}

/// `out(q) = src(q + start)` (bilinear, `start` >= 0, taps past the last row or column
/// repeat it) over `ow` x `oh`: the working image as the moved tile's blocks see it.
fn shift_onto_blocks(
    src: &[f32],
    (w, h): (usize, usize),
    start: (f64, f64),
    (ow, oh): (usize, usize),
    out: &mut [f32],
) {
    let (x0, y0) = (start.0.floor() as usize, start.1.floor() as usize);
    let (fx, fy) = ((start.0 - x0 as f64) as f32, (start.1 - y0 as f64) as f32);
    // Columns whose right tap is inside the row go as slices (vectorised); the rest repeat
    // the last column.
    let inner = ow.min((w - 1).saturating_sub(x0));
    for (y, o) in out.chunks_exact_mut(ow).take(oh).enumerate() {
        let r0 = &src[(y + y0).min(h - 1) * w..][..w];
        let r1 = &src[(y + y0 + 1).min(h - 1) * w..][..w];
        let (o_in, o_edge) = o.split_at_mut(inner);
        if inner > 0 {
            let (a0, b0) = (&r0[x0..x0 + inner], &r0[x0 + 1..x0 + 1 + inner]);
            let (a1, b1) = (&r1[x0..x0 + inner], &r1[x0 + 1..x0 + 1 + inner]);
            for (o, ((&a0, &b0), (&a1, &b1))) in o_in.iter_mut().zip(a0.iter().zip(b0).zip(a1.iter().zip(b1)))
            {
                let top = a0 + (b0 - a0) * fx;
                let bottom = a1 + (b1 - a1) * fx;
                *o = top + (bottom - top) * fy;
            }
        }
        for (x, o) in (inner..).zip(o_edge) {
            let (a, b) = ((x + x0).min(w - 1), (x + x0 + 1).min(w - 1));
            let top = r0[a] + (r0[b] - r0[a]) * fx;
            let bottom = r1[a] + (r1[b] - r1[a]) * fx;
            *o = top + (bottom - top) * fy;
        }
    }
}

/// Adds the mark of one export. Cheap to share between threads (`Sync`).
#[derive(Clone, Debug)]
pub struct Embedder {
    mark_id: MarkId,
    config: EmbedConfig,
    layout: TileLayout,
    codeword: [i8; CODE_BITS],
    /// Unit-energy pattern of every block of the tile, row-major 8x8.
    pattern: Vec<[f32; 64]>,
    /// The same pattern as one `TILE_PX` x `TILE_PX` image (row-major), for a mark that
    /// does not sit on whole blocks of the working grid.
    tile: Vec<f32>,
}

/// Working memory of one frame in flight; sized on first use and reused.
#[derive(Debug, Default)]
pub struct EmbedScratch {
    grid: Option<Grid>,
    hx: AreaTaps,
    vy: AreaTaps,
    ux: LinearTaps,
    uy: LinearTaps,
    tmp: Vec<f32>,
    work: Vec<f32>,
    resid: Vec<f32>,
    /// The residual's rows interpolated to picture width.
    wide: Vec<f32>,
    /// Interpolation from the working grid with a fraction of a pixel of motion.
    moved_x: LinearTaps,
    moved_y: LinearTaps,
    mask_raw: Vec<f32>,
    mask: Vec<f32>,
    /// The working image moved so the moved tile's block corners sit on multiples of 8
    /// ([`Scheme::mask_moves_with_tile`]).
    moved_work: Vec<f32>,
}

impl EmbedScratch {
    fn prepare(&mut self, w: usize, h: usize) -> Grid {
        if let Some(g) = self.grid.filter(|g| g.frame_w == w && g.frame_h == h) {
            return g;
        }
        let g = Grid::for_frame(w, h);
        let nblocks = g.blocks_x() * g.blocks_y();
        if !g.is_native() {
            self.hx = AreaTaps::new(w, g.work_w);
            self.vy = AreaTaps::new(h, g.work_h);
            self.ux = LinearTaps::new(g.work_w, w);
            self.uy = LinearTaps::new(g.work_h, h);
            self.tmp = vec![0.0; h * g.work_w];
        }
        self.wide = vec![0.0; g.work_h * w];
        self.work = vec![0.0; g.work_w * g.work_h];
        self.resid = vec![0.0; g.work_w * g.work_h];
        self.mask_raw = vec![0.0; nblocks];
        self.mask = vec![0.0; nblocks];
        self.moved_work = vec![0.0; g.blocks_x() * 8 * g.blocks_y() * 8];
        self.grid = Some(g);
        g
    }
}

impl Embedder {
    /// The embedder of mark `mark_id` under `key`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `config` is out of range.
    ///
    /// ```
    /// use tracemark_core::{EmbedConfig, Embedder, Frame, MarkId, MasterKey};
    /// let key = MasterKey::generate(); // a unit's key: `MasterKey::load(path)?`
    /// let embedder = Embedder::new(&key, MarkId(0x1234), EmbedConfig::new())?;
    /// let mut frame = Frame::new(320, 240);
    /// for (y, row) in frame.y.rows_mut().enumerate() {
    ///     for (x, p) in row.iter_mut().enumerate() {
    ///         *p = ((x * 7 + y * 13) % 200 + 30) as u8; // some texture to hide the mark in
    ///     }
    /// }
    /// let before = frame.clone();
    /// let stats = embedder.embed(&mut frame, &mut embedder.new_scratch());
    /// assert!(stats.mark_rms > 0.0 && frame != before);
    /// assert!(Embedder::new(&key, MarkId(1), EmbedConfig::new().with_target_psnr_db(99.0)).is_err());
    /// # Ok::<(), tracemark_core::Error>(())
    /// ```
    pub fn new(key: &MasterKey, mark_id: MarkId, config: EmbedConfig) -> Result<Self> {
        config.validate()?;
        let layout = TileLayout::new(key);
        let codeword = Codebook::new(key).codeword(mark_id);
        let pattern = layout.block_patterns(config.scheme.band_weights(), |slot| {
            if slot.role == PILOT {
                1.0
            } else {
                f32::from(codeword[slot.role as usize])
            }
        });
        let tile = layout::tile_image(&pattern);
        Ok(Self { mark_id, config, layout, codeword, pattern, tile })
    }

    /// The mark id this embedder writes.
    pub fn mark_id(&self) -> MarkId {
        self.mark_id
    }

    /// The configuration.
    pub fn config(&self) -> &EmbedConfig {
        &self.config
    }

    /// A scratch area for [`Embedder::embed`].
    pub fn new_scratch(&self) -> EmbedScratch {
        EmbedScratch::default()
    }

    /// Global strength for a frame whose blocks have mask values `mask` on a grid of
    /// `pixels` working pixels: meets the PSNR target, capped so a frame with little texture
    /// does not get a louder mark per block than a busy one would.
    fn strength(&self, mask: &[f32], pixels: usize) -> f32 {
        let sum_m2: f64 = mask.iter().map(|&m| f64::from(m) * f64::from(m)).sum();
        let target = self.config.target_rms();
        if sum_m2 <= 0.0 {
            return 0.0;
        }
        // A block with mask m carries energy (strength * m)^2 over 64 pixels.
        let psnr_strength = (target * target * pixels as f64 / sum_m2).sqrt();
        psnr_strength.min(16.0 * target) as f32
    }

    /// Marks `frame` in place (luma only), as the first frame of a clip (no motion yet).
    pub fn embed(&self, frame: &mut Frame, s: &mut EmbedScratch) -> EmbedStats {
        self.embed_at(frame, (0.0, 0.0), s)
    }

    /// Marks `frame` in place (luma only) whose content has moved by `motion` picture
    /// pixels since the first frame ([`crate::motion::MotionTracker::track`]). Under
    /// a scheme that follows motion the tile moves as far; under [`Scheme::Fixed`] `motion` is
    /// ignored.
    pub fn embed_at(&self, frame: &mut Frame, motion: (f64, f64), s: &mut EmbedScratch) -> EmbedStats {
        let (w, h) = (frame.width(), frame.height());
        let g = s.prepare(w, h);
        let (bx, by) = (g.blocks_x(), g.blocks_y());
        if bx == 0 || by == 0 {
            return EmbedStats::default();
        }
        let offset = self.config.scheme.tile_offset(&g, motion);
        // From v3 on a moved tile is scaled by the mask of its own blocks (as many as the grid
        // has; `Scheme::mask_moves_with_tile`), so each block's strength travels with the
        // picture under it and the encoder sees one mark, moved; otherwise by the grid's blocks.
        let mask_moves = offset != (0.0, 0.0) && self.config.scheme.mask_moves_with_tile();
        if !g.is_native() {
            grid::downscale_area(&frame.y, &s.hx, &s.vy, &mut s.tmp, &mut s.work, g.work_w);
        } else if mask_moves {
            for (d, row) in s.work.chunks_exact_mut(w).zip(frame.y.rows()) {
                for (o, &p) in d.iter_mut().zip(row) {
                    *o = f32::from(p);
                }
            }
        }
        // `phase`: where the first mask block starts on the working grid.
        let phase = if mask_moves {
            let start = (offset.0.rem_euclid(8.0), offset.1.rem_euclid(8.0));
            shift_onto_blocks(&s.work, (g.work_w, g.work_h), start, (bx * 8, by * 8), &mut s.moved_work);
            mask::compute(&self.config.mask, &s.moved_work, bx * 8, bx, by, &mut s.mask_raw, &mut s.mask);
            (offset.0.floor().rem_euclid(8.0) as usize, offset.1.floor().rem_euclid(8.0) as usize)
        } else if g.is_native() {
            // The picture's bytes are the working image: no float copy of it to write and read.
            let (img, stride) = (frame.y.samples(), frame.y.stride());
            mask::compute(&self.config.mask, img, stride, bx, by, &mut s.mask_raw, &mut s.mask);
            (0, 0)
        } else {
            mask::compute(&self.config.mask, &s.work, g.work_w, bx, by, &mut s.mask_raw, &mut s.mask);
            (0, 0)
        };
        let strength = self.strength(&s.mask, g.work_w * g.work_h);
        if offset != (0.0, 0.0) {
            self.add_moved(frame, &g, strength, offset, phase, s);
        } else if g.is_native() {
            // A picture row's mark is laid out first, then added in one pass over the row
            // (the add, bytes to floats and back, vectorises over a whole row; eight pixels of
            // a block at a time stayed scalar). The sums are the same, bit for bit.
            let line = &mut s.wide[..bx * 8];
            for j in 0..by {
                let mrow = &s.mask[j * bx..][..bx];
                let prow = &self.pattern[(j % TILE_BLOCKS) * TILE_BLOCKS..][..TILE_BLOCKS];
                for y in 0..8 {
                    for ((o, &m), i) in line.chunks_exact_mut(8).zip(mrow).zip(0..) {
                        let a = strength * m;
                        for (o, &pv) in o.iter_mut().zip(&prow[i % TILE_BLOCKS][y * 8..y * 8 + 8]) {
                            *o = a * pv;
                        }
                    }
                    add_to_row(frame.y.row_mut(j * 8 + y), line);
                }
            }
        } else {
            let ww = g.work_w;
            s.resid.fill(0.0);
            for j in 0..by {
                for i in 0..bx {
                    let a = strength * s.mask[j * bx + i];
                    let p = &self.pattern[(j % TILE_BLOCKS) * TILE_BLOCKS + i % TILE_BLOCKS];
                    for y in 0..8 {
                        let d = &mut s.resid[(j * 8 + y) * ww + i * 8..(j * 8 + y) * ww + i * 8 + 8];
                        for (o, &pv) in d.iter_mut().zip(&p[y * 8..y * 8 + 8]) {
                            *o = a * pv;
                        }
                    }
                }
            }
            add_interpolated(frame, &s.resid, (ww, g.work_h), (&s.ux, &s.uy), &mut s.wide);
        }
        let sum_m2: f32 = s.mask.iter().map(|m| m * m).sum();
        let mark_rms = strength * (sum_m2 / (g.work_w * g.work_h) as f32).sqrt();
        EmbedStats { strength, mark_rms }
    }

    /// Adds the mark with its tile moved by `offset` working-grid pixels: the residual is
    /// built on the working grid with the whole pixels of the move (the tile is periodic),
    /// then interpolated onto the picture with the fraction.
    fn add_moved(
        &self,
        frame: &mut Frame,
        g: &Grid,
        strength: f32,
        offset: (f64, f64),
        phase: (usize, usize),
        s: &mut EmbedScratch,
    ) {
        let (bx, by, ww) = (g.blocks_x(), g.blocks_y(), g.work_w);
        let (ix, iy) = (offset.0.floor(), offset.1.floor());
        let (fx, fy) = (offset.0 - ix, offset.1 - iy);
        // Tile pixel of working pixel x is (x - ix) mod TILE_PX.
        let (sx, sy) = ((-ix).rem_euclid(TILE_PX as f64) as usize, (-iy).rem_euclid(TILE_PX as f64) as usize);
        s.resid.fill(0.0);
        // The mask's blocks start at `phase` (the whole pixels of a move from v3 on, modulo 8): the
        // mark covers them up to the picture's edge (the strip before the first stays
        // unmarked, as the partial blocks at a still grid's edges do).
        let (px, py) = phase;
        // Block k of a row reads the tile row from (px + sx + 8k) mod TILE_PX: with the row
        // turned to start at px + sx, every block's 8 taps are consecutive.
        let turn = (px + sx) % TILE_PX;
        let mut turned = [0f32; TILE_PX];
        for y in py..(py + by * 8).min(g.work_h) {
            let trow = &self.tile[((y + sy) % TILE_PX) * TILE_PX..][..TILE_PX];
            turned[..TILE_PX - turn].copy_from_slice(&trow[turn..]);
            turned[TILE_PX - turn..].copy_from_slice(&trow[..turn]);
            let mrow = &s.mask[((y - py) / 8) * bx..][..bx];
            let out = &mut s.resid[y * ww + px..(y + 1) * ww];
            let n = out.len().min(bx * 8);
            for ((o, &m), k) in out[..n].chunks_mut(8).zip(mrow).zip(0..) {
                let a = strength * m;
                for (o, &t) in o.iter_mut().zip(&turned[(k * 8) % TILE_PX..]) {
                    *o = a * t;
                }
            }
        }
        s.moved_x.refill(ww, g.frame_w, fx);
        s.moved_y.refill(g.work_h, g.frame_h, fy);
        add_interpolated(frame, &s.resid, (ww, g.work_h), (&s.moved_x, &s.moved_y), &mut s.wide);
    }

    #[doc(hidden)]
    /// Scalar reference implementation of [`Embedder::embed`]: f64 throughout, the mark
    /// built coefficient by coefficient with the textbook inverse DCT, resampling computed
    /// from its definition. Slow; for tests of the fast kernel.
    pub fn embed_reference(&self, frame: &mut Frame) -> EmbedStats {
        self.embed_reference_at(frame, (0.0, 0.0))
    }

    #[doc(hidden)]
    /// Scalar reference implementation of [`Embedder::embed_at`]: as
    /// [`Embedder::embed_reference`], with the moved tile read pixel by pixel from its
    /// definition (whole pixels of the move by cyclic indexing, the fraction by bilinear
    /// interpolation at each picture pixel).
    pub fn embed_reference_at(&self, frame: &mut Frame, motion: (f64, f64)) -> EmbedStats {
        let (w, h) = (frame.width(), frame.height());
        let g = Grid::for_frame(w, h);
        let (bx, by, ww, wh) = (g.blocks_x(), g.blocks_y(), g.work_w, g.work_h);
        if bx == 0 || by == 0 {
            return EmbedStats::default();
        }
        // Working image: box average of the picture area each working pixel covers.
        let mut work = vec![0f64; ww * wh];
        let (sx, sy) = (w as f64 / ww as f64, h as f64 / wh as f64);
        for v in 0..wh {
            for u in 0..ww {
                let (x0, x1, y0, y1) =
                    (u as f64 * sx, (u + 1) as f64 * sx, v as f64 * sy, (v + 1) as f64 * sy);
                let mut acc = 0.0;
                for y in y0.floor() as usize..(y1.ceil() as usize).min(h) {
                    let cy = (y1.min(y as f64 + 1.0) - y0.max(y as f64)).max(0.0);
                    for x in x0.floor() as usize..(x1.ceil() as usize).min(w) {
                        let cx = (x1.min(x as f64 + 1.0) - x0.max(x as f64)).max(0.0);
                        acc += cx * cy * f64::from(frame.y.get(x, y));
                    }
                }
                work[v * ww + u] = acc / (sx * sy);
            }
        }
        // The mask of 8x8 blocks of the working image whose corners sit at `start` + 8n.
        let block_mask = |start: (f64, f64), nx: usize, ny: usize| {
            // Bilinear, taps past the last row or column repeating it.
            let at = |x: f64, y: f64| {
                let (x0, y0) = (x.floor() as usize, y.floor() as usize);
                let (fx, fy) = (x - x0 as f64, y - y0 as f64);
                let p = |a: usize, b: usize| work[b.min(wh - 1) * ww + a.min(ww - 1)];
                let top = p(x0, y0) + (p(x0 + 1, y0) - p(x0, y0)) * fx;
                let bottom = p(x0, y0 + 1) + (p(x0 + 1, y0 + 1) - p(x0, y0 + 1)) * fx;
                top + (bottom - top) * fy
            };
            let mut raw = vec![0f32; nx * ny];
            for j in 0..ny {
                for i in 0..nx {
                    let px: [f64; 64] = std::array::from_fn(|k| {
                        at(start.0 + (i * 8 + k % 8) as f64, start.1 + (j * 8 + k / 8) as f64)
                    });
                    let mean = px.iter().sum::<f64>() / 64.0;
                    raw[j * nx + i] =
                        self.config.mask.block_value(mean as f32, mask::texture_std(&px) as f32);
                }
            }
            let mut m = vec![0f32; nx * ny];
            mask::smooth(&raw, nx, ny, &mut m);
            m
        };
        let weights = self.config.scheme.band_weights();
        let offset = self.config.scheme.tile_offset(&g, motion);
        let (ix, iy) = (offset.0.floor(), offset.1.floor());
        let frac = (offset.0 - ix, offset.1 - iy);
        let on_tile = offset != (0.0, 0.0) && self.config.scheme.mask_moves_with_tile();
        // The mask of the tile's own blocks when it moves, from v3 on, else of the grid's.
        let (m, phase) = if on_tile {
            let start = (offset.0.rem_euclid(8.0), offset.1.rem_euclid(8.0));
            (block_mask(start, bx, by), (ix.rem_euclid(8.0) as usize, iy.rem_euclid(8.0) as usize))
        } else {
            (block_mask((0.0, 0.0), bx, by), (0, 0))
        };
        let mask_at = |x: usize, y: usize| {
            let (u, v) = (x.checked_sub(phase.0)? / 8, y.checked_sub(phase.1)? / 8);
            (u < bx && v < by).then(|| f64::from(m[v * bx + u]))
        };
        let strength = f64::from(self.strength(&m, ww * wh));
        // Tile pixels are read at (p - whole pixels of the move), modulo the tile.
        let at_tile = |p: usize, whole: f64| (p as f64 - whole).rem_euclid(TILE_PX as f64) as usize;
        let mut resid = vec![0f64; ww * wh];
        // The unit-strength mark of tile block `tb`, from its coefficients.
        let unit_block = |tb: usize| {
            let mut coefs = [0f64; 64];
            for (k, &(fv, fu)) in BAND.iter().enumerate() {
                let slot = self.layout.slots[tb * BAND.len() + k];
                let sign =
                    if slot.role == PILOT { 1.0 } else { f64::from(self.codeword[slot.role as usize]) };
                coefs[fv * 8 + fu] = f64::from(weights[k]) * f64::from(slot.chip) * sign;
            }
            dct::inverse_reference(&coefs)
        };
        if offset != (0.0, 0.0) {
            // The moved tile, pixel by pixel.
            for y in 0..wh {
                for x in 0..ww {
                    let Some(mask) = mask_at(x, y) else { continue };
                    let (tx, ty) = (at_tile(x, ix), at_tile(y, iy));
                    let block = unit_block((ty / 8) * TILE_BLOCKS + tx / 8);
                    resid[y * ww + x] = strength * mask * block[(ty % 8) * 8 + tx % 8];
                }
            }
        } else {
            for j in 0..by {
                for i in 0..bx {
                    let block = unit_block((j % TILE_BLOCKS) * TILE_BLOCKS + i % TILE_BLOCKS);
                    let a = strength * f64::from(m[j * bx + i]);
                    for (k, v) in block.iter().enumerate() {
                        resid[(j * 8 + k / 8) * ww + i * 8 + k % 8] = a * v;
                    }
                }
            }
        }
        for y in 0..h {
            for x in 0..w {
                let r = if g.is_native() && frac == (0.0, 0.0) {
                    resid[y * ww + x]
                } else {
                    // Bilinear, pixel centres aligned, moved by the fraction, clamped at the edges.
                    let u = ((x as f64 + 0.5) / sx - 0.5 - frac.0).clamp(0.0, (ww - 1) as f64);
                    let v = ((y as f64 + 0.5) / sy - 0.5 - frac.1).clamp(0.0, (wh - 1) as f64);
                    let (u0, v0) = ((u.floor() as usize).min(ww - 2), (v.floor() as usize).min(wh - 2));
                    let (fu, fv) = (u - u0 as f64, v - v0 as f64);
                    let at = |a: usize, b: usize| resid[b * ww + a];
                    (1.0 - fv) * ((1.0 - fu) * at(u0, v0) + fu * at(u0 + 1, v0))
                        + fv * ((1.0 - fu) * at(u0, v0 + 1) + fu * at(u0 + 1, v0 + 1))
                };
                let p = &mut frame.y.row_mut(y)[x];
                *p = (f64::from(*p) + r).round().clamp(0.0, 255.0) as u8;
            }
        }
        let sum_m2: f32 = m.iter().map(|v| v * v).sum();
        EmbedStats {
            strength: strength as f32,
            mark_rms: strength as f32 * (sum_m2 / (ww * wh) as f32).sqrt(),
        }
    }
}

impl FrameTransform for Embedder {
    type Scratch = EmbedScratch;
    type Error = std::convert::Infallible;
    fn new_scratch(&self) -> EmbedScratch {
        EmbedScratch::default()
    }
    fn motion_tracking(&self) -> Option<crate::motion::Tracking> {
        self.config.scheme.tracking()
    }
    fn apply(
        &self,
        frame: &mut Frame,
        at: FrameAt,
        scratch: &mut EmbedScratch,
    ) -> std::result::Result<(), Self::Error> {
        self.embed_at(frame, at.motion, scratch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The sliced loops of the moved mark and the row-wise still mark against their plain
    //! per-pixel form (the code they replaced), bit for bit.
    use super::*;
    use proptest::prelude::*;

    fn widen_reference(row: &[f32], taps: &[(u32, f32)], out: &mut [f32]) {
        for (o, &(j0, fx)) in out.iter_mut().zip(taps) {
            let j0 = j0 as usize;
            let (a, b) = (row[j0], row[(j0 + 1).min(row.len() - 1)]);
            *o = a + (b - a) * fx;
        }
    }

    fn shift_reference(
        src: &[f32],
        (w, h): (usize, usize),
        start: (f64, f64),
        (ow, oh): (usize, usize),
        out: &mut [f32],
    ) {
        let (x0, y0) = (start.0.floor() as usize, start.1.floor() as usize);
        let (fx, fy) = ((start.0 - x0 as f64) as f32, (start.1 - y0 as f64) as f32);
        for (y, o) in out.chunks_exact_mut(ow).take(oh).enumerate() {
            let r0 = &src[(y + y0).min(h - 1) * w..][..w];
            let r1 = &src[(y + y0 + 1).min(h - 1) * w..][..w];
            for (x, o) in o.iter_mut().enumerate() {
                let (a, b) = ((x + x0).min(w - 1), (x + x0 + 1).min(w - 1));
                let top = r0[a] + (r0[b] - r0[a]) * fx;
                let bottom = r1[a] + (r1[b] - r1[a]) * fx;
                *o = top + (bottom - top) * fy;
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64).map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2000) as f32 / 7.0 - 140.0).collect()
    }

    proptest! {
        #[test]
        fn widened_rows_are_the_per_tap_rows(src in 8usize..400, dst in 8usize..900, native: bool, shift in -40.0f64..40.0, seed in 0u64..1000) {
            // Native grids (the same size, moved by a fraction) have the sliced runs.
            let dst = if native { src } else { dst };
            let row = noise(src, seed);
            let mut taps = LinearTaps::new(src, dst);
            taps.refill(src, dst, shift);
            let (mut fast, mut slow) = (vec![0f32; dst], vec![0f32; dst]);
            widen_row(&row, &taps.taps, same_fraction_run(&taps.taps, src), &mut fast);
            widen_reference(&row, &taps.taps, &mut slow);
            prop_assert_eq!(bits(&fast), bits(&slow));
        }

        #[test]
        fn shifted_blocks_are_the_per_pixel_shift(w in 9usize..120, h in 9usize..60, sx in 0.0f64..20.0, sy in 0.0f64..9.0, seed in 0u64..1000) {
            let src = noise(w * h, seed);
            let (ow, oh) = ((w / 8) * 8, (h / 8) * 8);
            let (mut fast, mut slow) = (vec![0f32; ow * oh], vec![0f32; ow * oh]);
            shift_onto_blocks(&src, (w, h), (sx, sy), (ow, oh), &mut fast);
            shift_reference(&src, (w, h), (sx, sy), (ow, oh), &mut slow);
            prop_assert_eq!(bits(&fast), bits(&slow));
        }
    }

    /// The still mark on a native grid, added row by row, against the block-by-block loop it
    /// replaced.
    #[test]
    fn still_native_mark_is_the_block_by_block_mark() {
        let e = Embedder::new(&MasterKey::from_seed(5), MarkId(77), EmbedConfig::new()).unwrap();
        for (w, h) in [(720usize, 576usize), (333, 250), (768, 203)] {
            let mut frame = Frame::new(w, h);
            for (y, row) in frame.y.rows_mut().enumerate() {
                for (x, p) in row.iter_mut().enumerate() {
                    *p = ((x * 7 + y * 13 + x * y / 5) % 250 + 3) as u8;
                }
            }
            let mut s = e.new_scratch();
            assert!(s.prepare(w, h).is_native(), "{w}x{h}");
            let mut fast = frame.clone();
            let strength = e.embed(&mut fast, &mut s).strength;
            assert!(strength > 0.0 && fast != frame, "{w}x{h}: no mark to compare");
            let (bx, by) = (w / 8, h / 8);
            for j in 0..by {
                for i in 0..bx {
                    let a = strength * s.mask[j * bx + i];
                    let p = &e.pattern[(j % TILE_BLOCKS) * TILE_BLOCKS + i % TILE_BLOCKS];
                    for y in 0..8 {
                        let row = &mut frame.y.row_mut(j * 8 + y)[i * 8..i * 8 + 8];
                        for (px, &pv) in row.iter_mut().zip(&p[y * 8..y * 8 + 8]) {
                            *px = to_pixel(f32::from(*px) + a * pv);
                        }
                    }
                }
            }
            assert_eq!(fast, frame, "{w}x{h}");
        }
    }

    /// The moved tile, as a residual, against the per-pixel form of the code it replaced.
    #[test]
    fn moved_residual_is_the_per_pixel_residual() {
        let e = Embedder::new(&MasterKey::from_seed(5), MarkId(77), EmbedConfig::new()).unwrap();
        for (w, h) in [(720usize, 576usize), (1920, 1080), (330, 250)] {
            let mut frame = Frame::new(w, h);
            for (y, row) in frame.y.rows_mut().enumerate() {
                for (x, p) in row.iter_mut().enumerate() {
                    *p = ((x * 7 + y * 13 + x * y / 5) % 200 + 30) as u8;
                }
            }
            for offset in [(13.25f64, -7.5f64), (-200.6, 31.1), (0.4, 0.0), (129.0, 250.75)] {
                let mut s = e.new_scratch();
                let g = s.prepare(w, h);
                let (bx, by) = (g.blocks_x(), g.blocks_y());
                s.mask.iter_mut().enumerate().for_each(|(i, m)| *m = 0.25 + (i % 7) as f32 * 0.3);
                let phase =
                    (offset.0.floor().rem_euclid(8.0) as usize, offset.1.floor().rem_euclid(8.0) as usize);
                e.add_moved(&mut frame.clone(), &g, 1.7, offset, phase, &mut s);
                // The residual as the per-pixel loop wrote it.
                let ww = g.work_w;
                let (ix, iy) = (offset.0.floor(), offset.1.floor());
                let (sx, sy) =
                    ((-ix).rem_euclid(TILE_PX as f64) as usize, (-iy).rem_euclid(TILE_PX as f64) as usize);
                let mut slow = vec![0f32; ww * g.work_h];
                let (px, py) = phase;
                for y in py..(py + by * 8).min(g.work_h) {
                    let trow = &e.tile[((y + sy) % TILE_PX) * TILE_PX..][..TILE_PX];
                    let mrow = &s.mask[((y - py) / 8) * bx..][..bx];
                    let out = &mut slow[y * ww + px..(y + 1) * ww];
                    for (x, o) in (px..).zip(out.iter_mut().take(bx * 8)) {
                        *o = 1.7 * mrow[(x - px) / 8] * trow[(x + sx) % TILE_PX];
                    }
                }
                assert_eq!(bits(&s.resid), bits(&slow), "{w}x{h} moved {offset:?}");
            }
        }
    }
}
