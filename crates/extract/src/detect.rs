//! Reading the mark from residual images on the working grid.
//!
//! A *residual* is what is left of a frame once the picture itself is removed: the leaked
//! frame minus the registered source (informed), or minus a denoised copy of itself (blind).
//! Each whole 8x8 block of the residual is projected on the band's DCT basis images; the
//! projections, weighted by how much mark the block should hold against how noisy it is,
//! are summed per tile slot over every block and every frame ([`SlotSums`]). From the sums
//! come the pilot statistic, the soft codeword bits, and the scores of candidate exports.

use tracemark_core::dct::{self, BAND};
use tracemark_core::layout::{TileLayout, PILOT, SLOTS, TILE_BLOCKS};
use tracemark_core::mask::{self, MaskParams};
use tracemark_core::payload::{Codebook, MarkId, CODE_BITS};
use tracemark_core::MasterKey;

/// Per-slot sums of weighted projections, accumulated over blocks and frames.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotSums {
    /// One sum per tile slot.
    pub x: Vec<f64>,
    /// Frames accumulated.
    pub frames: u64,
}

impl Default for SlotSums {
    fn default() -> Self {
        Self { x: vec![0.0; SLOTS], frames: 0 }
    }
}

impl SlotSums {
    /// Adds another set of sums (e.g. from another thread).
    pub fn merge(&mut self, other: &SlotSums) {
        for (a, b) in self.x.iter_mut().zip(&other.x) {
            *a += b;
        }
        self.frames += other.frames;
    }
}

/// Scratch for [`Detector::accumulate`], reused across frames.
#[derive(Debug, Default)]
pub struct DetectScratch {
    mask_raw: Vec<f32>,
    mask: Vec<f32>,
}

/// The key's detector: knows the tile layout, the chips and the codebook.
#[derive(Clone, Debug)]
pub struct Detector {
    layout: TileLayout,
    codebook: Codebook,
    basis: [[f32; 64]; 9],
    weights: [f32; 9],
    mask: MaskParams,
}

impl Detector {
    /// The detector for marks made with `key`.
    pub fn new(key: &MasterKey) -> Self {
        Self {
            layout: TileLayout::new(key),
            codebook: Codebook::new(key),
            basis: dct::band_basis(),
            weights: dct::band_weights(),
            mask: MaskParams::default(),
        }
    }

    /// The codebook (for scoring registry candidates).
    pub fn codebook(&self) -> &Codebook {
        &self.codebook
    }

    /// Accumulates one residual image (`w` x `h`, row-major) whose pixel (0, 0) sits at
    /// working-grid position (`phase_x`, `phase_y`) of the mark's tile (both multiples of 8
    /// within 0..128). `host` is the picture the mask is computed from (same size).
    #[allow(clippy::too_many_arguments)]
    pub fn accumulate(
        &self,
        resid: &[f32],
        host: &[f32],
        w: usize,
        h: usize,
        phase: (usize, usize),
        sums: &mut SlotSums,
        scratch: &mut DetectScratch,
    ) {
        let (bx, by) = (w / 8, h / 8);
        if bx == 0 || by == 0 {
            return;
        }
        scratch.mask_raw.resize(bx * by, 0.0);
        scratch.mask.resize(bx * by, 0.0);
        mask::compute(&self.mask, host, w, bx, by, &mut scratch.mask_raw, &mut scratch.mask);
        let (pbx, pby) = (phase.0 / 8, phase.1 / 8);
        for j in 0..by {
            for i in 0..bx {
                let mut proj = [0f32; 9];
                let mut energy = 0f32;
                for y in 0..8 {
                    let row = &resid[(j * 8 + y) * w + i * 8..(j * 8 + y) * w + i * 8 + 8];
                    for (x, &r) in row.iter().enumerate() {
                        energy += r * r;
                        for (p, b) in proj.iter_mut().zip(&self.basis) {
                            *p += r * b[y * 8 + x];
                        }
                    }
                }
                // Expected mark amplitude over noise power: the matched-filter weight.
                let m = scratch.mask[j * bx + i];
                let noise = energy / 64.0 + 0.25;
                let wgt = f64::from(m / noise);
                let tb = ((j + pby) % TILE_BLOCKS) * TILE_BLOCKS + (i + pbx) % TILE_BLOCKS;
                let slots = &mut sums.x[tb * BAND.len()..(tb + 1) * BAND.len()];
                for ((x, p), wk) in slots.iter_mut().zip(&proj).zip(&self.weights) {
                    *x += wgt * f64::from(p * wk);
                }
            }
        }
    }

    /// Marks one accumulated frame (call after the frame's blocks are in).
    pub fn end_frame(&self, sums: &mut SlotSums) {
        sums.frames += 1;
    }

    /// Normalised pilot correlation: about N(0, 1) (sub-Gaussian with variance proxy 1)
    /// when no mark of this key is present, large and positive when one is.
    pub fn pilot_z(&self, sums: &SlotSums) -> f64 {
        let (mut num, mut den) = (0.0, 0.0);
        for (s, &x) in self.layout.slots.iter().zip(&sums.x) {
            if s.role == PILOT {
                num += f64::from(s.chip) * x;
                den += x * x;
            }
        }
        if den > 0.0 {
            num / den.sqrt()
        } else {
            0.0
        }
    }

    /// Soft codeword bits: positive favours +1.
    pub fn soft_bits(&self, sums: &SlotSums) -> Vec<f64> {
        let mut soft = vec![0.0; CODE_BITS];
        for (s, &x) in self.layout.slots.iter().zip(&sums.x) {
            if s.role != PILOT {
                soft[s.role as usize] += f64::from(s.chip) * x;
            }
        }
        soft
    }

    /// Score of one candidate: the normalised correlation of its codeword with the soft
    /// bits. Whatever the video, if the candidate's codeword is unrelated to it this is a
    /// Rademacher sum with unit variance, so `P(score >= z) <= exp(-z^2 / 2)`.
    pub fn score(&self, soft: &[f64], id: MarkId) -> f64 {
        let cw = self.codebook.codeword(id);
        let norm = soft.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        soft.iter().zip(&cw).map(|(s, &c)| s * f64::from(c)).sum::<f64>() / norm
    }

    /// Blind decoding: the most likely id and its score.
    pub fn decode(&self, soft: &[f64]) -> (MarkId, f64) {
        let id = self.codebook.decode(soft);
        (id, self.score(soft, id))
    }
}

/// Hoeffding's bound on the upper tail of a unit-variance Rademacher sum.
pub fn tail_bound(z: f64) -> f64 {
    if z <= 0.0 {
        1.0
    } else {
        (-z * z / 2.0).exp()
    }
}

/// `z` such that `tail_bound(z) = p`.
pub fn z_for_tail(p: f64) -> f64 {
    (-2.0 * p.ln()).sqrt()
}
