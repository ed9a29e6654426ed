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
    /// Each block's band projections and residual power, read before any is weighted.
    proj: Vec<[f32; 9]>,
    power: Vec<f32>,
    /// Residual and host moved onto the tile's block grid ([`Detector::accumulate_moved`]).
    moved_resid: Vec<f32>,
    moved_host: Vec<f32>,
}

/// Samples `src` (`w` wide) at `(x + dx, y + dy)` for every pixel of a `w_out` x `h_out`
/// image (bilinear; `0 <= dx, dy < 8` and the picture at least 8 pixels larger than the
/// output on each axis, so no tap leaves it).
fn shift_into(
    src: &[f32],
    w: usize,
    (dx, dy): (f64, f64),
    (w_out, h_out): (usize, usize),
    out: &mut Vec<f32>,
) {
    out.clear();
    let (x0, y0) = (dx.floor() as usize, dy.floor() as usize);
    let (fx, fy) = ((dx - x0 as f64) as f32, (dy - y0 as f64) as f32);
    for y in 0..h_out {
        let r0 = &src[(y + y0) * w + x0..][..w_out + 1];
        let r1 = &src[(y + y0 + 1) * w + x0..][..w_out + 1];
        out.extend((0..w_out).map(|x| crate::register::bilinear(r0, r1, x, x + 1, fx, fy)));
    }
}

/// The residual's noise power at block (`i`, `j`) of a `bx` x `by` grid of block powers:
/// the mean over the block and its eight neighbours of those holding any residual (an
/// all-zero block is one the leaked picture does not cover, and says nothing about the
/// noise). One block's 64 pixels give a noisy estimate, and the matched filter's weight
/// divides by it; noise changes slowly across a picture, so nine blocks estimate it better
/// (heavy compression of a noisy source: scores up to 40% higher).
pub(crate) fn local_noise(power: &[f32], bx: usize, by: usize, (i, j): (usize, usize)) -> f32 {
    let (mut sum, mut n) = (0f32, 0u32);
    for row in power[j.saturating_sub(1) * bx..(j + 2).min(by) * bx].chunks_exact(bx) {
        for &p in &row[i.saturating_sub(1)..(i + 2).min(bx)] {
            if p > 0.0 {
                sum += p;
                n += 1;
            }
        }
    }
    if n > 0 {
        sum / n as f32
    } else {
        0.0
    }
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

    /// Accumulates one residual image (`w` x `h`, row-major) of a mark whose tile was moved
    /// by `offset` pixels of this image's grid ([`tracemark_core::layout::Scheme::FollowsMotion`]):
    /// tile pixel `t` is at `t + offset`. The residual is resampled so that its pixel
    /// (0, 0) is a block corner of the tile, then read as [`Detector::accumulate`] reads a
    /// still mark. A zero offset reads exactly as `accumulate` at phase (0, 0).
    #[allow(clippy::too_many_arguments)]
    pub fn accumulate_moved(
        &self,
        resid: &[f32],
        host: &[f32],
        w: usize,
        h: usize,
        offset: (f64, f64),
        sums: &mut SlotSums,
        scratch: &mut DetectScratch,
    ) {
        if offset == (0.0, 0.0) {
            return self.accumulate(resid, host, w, h, (0, 0), sums, scratch);
        }
        if w <= 9 || h <= 9 {
            return;
        }
        let tile = TILE_BLOCKS * 8;
        // Block corners of the moved tile sit at offset + 8n: start at the first one.
        let start = (offset.0.rem_euclid(8.0), offset.1.rem_euclid(8.0));
        let phase = |o: f64, s: f64| ((s - o).round() as i64).rem_euclid(tile as i64) as usize;
        let size = (w - 9, h - 9);
        let (mut r, mut m) =
            (std::mem::take(&mut scratch.moved_resid), std::mem::take(&mut scratch.moved_host));
        shift_into(resid, w, start, size, &mut r);
        shift_into(host, w, start, size, &mut m);
        self.accumulate(
            &r,
            &m,
            size.0,
            size.1,
            (phase(offset.0, start.0), phase(offset.1, start.1)),
            sums,
            scratch,
        );
        (scratch.moved_resid, scratch.moved_host) = (r, m);
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
        self.weighted_blocks(resid, host, (w, h), phase, scratch, |_, first, values| {
            for (x, v) in sums.x[first..first + BAND.len()].iter_mut().zip(values) {
                *x += v;
            }
        });
    }

    /// The pilot's evidence block by block, for a residual read as [`Detector::accumulate`]
    /// reads it: per whole block (row-major, `w / 8` across) the pilot correlation it adds
    /// and the energy it adds to the pilot slots. Summed over a region they give that
    /// region's pilot statistic, `sum num / sqrt(sum energy)`, up to the cross terms of
    /// blocks sharing a slot (which cancel on average where there is no mark).
    #[allow(clippy::too_many_arguments)]
    pub fn pilot_blocks(
        &self,
        resid: &[f32],
        host: &[f32],
        w: usize,
        h: usize,
        phase: (usize, usize),
        scratch: &mut DetectScratch,
        out: &mut Vec<[f64; 2]>,
    ) {
        out.clear();
        out.resize((w / 8) * (h / 8), [0.0; 2]);
        self.weighted_blocks(resid, host, (w, h), phase, scratch, |block, first, values| {
            let o = &mut out[block];
            for (slot, x) in self.layout.slots[first..first + BAND.len()].iter().zip(values) {
                if slot.role == PILOT {
                    o[0] += f64::from(slot.chip) * x;
                    o[1] += x * x;
                }
            }
        });
    }

    /// Calls `f(block, first_slot, values)` for every whole block (row-major index) of a
    /// residual whose pixel (0, 0) sits at tile position `phase`: the index of its first
    /// tile slot, and its projections on the band times the band weights and the
    /// matched-filter weight the mask of
    /// `host` and the noise around the block ([`local_noise`]) give it.
    fn weighted_blocks(
        &self,
        resid: &[f32],
        host: &[f32],
        (w, h): (usize, usize),
        phase: (usize, usize),
        scratch: &mut DetectScratch,
        mut f: impl FnMut(usize, usize, [f64; 9]),
    ) {
        let (bx, by) = (w / 8, h / 8);
        let (pbx, pby) = (phase.0 / 8, phase.1 / 8);
        if bx == 0 || by == 0 {
            return;
        }
        scratch.mask_raw.resize(bx * by, 0.0);
        scratch.mask.resize(bx * by, 0.0);
        mask::compute(&self.mask, host, w, bx, by, &mut scratch.mask_raw, &mut scratch.mask);
        scratch.proj.resize(bx * by, [0.0; 9]);
        scratch.power.resize(bx * by, 0.0);
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
                scratch.proj[j * bx + i] = proj;
                scratch.power[j * bx + i] = energy / 64.0;
            }
        }
        for j in 0..by {
            for i in 0..bx {
                let noise = local_noise(&scratch.power, bx, by, (i, j));
                // Expected mark amplitude over noise power: the matched-filter weight.
                let m = scratch.mask[j * bx + i];
                let wgt = f64::from(m / (noise + 0.25));
                let tb = ((j + pby) % TILE_BLOCKS) * TILE_BLOCKS + (i + pbx) % TILE_BLOCKS;
                let proj = &scratch.proj[j * bx + i];
                let values: [f64; 9] = std::array::from_fn(|k| wgt * f64::from(proj[k] * self.weights[k]));
                f(j * bx + i, tb * BAND.len(), values);
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
    /// Rademacher sum with unit variance, so `P(score >= z) <= tail_bound(z)`.
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

/// Bentkus and Dzindzalieta's constant `1 / (4 P(N(0,1) >= sqrt 2))` = 3.178655…, rounded up.
const GAUSSIAN_BOUND_FACTOR: f64 = 3.17866;

/// An upper bound on the upper tail of a weighted Rademacher sum `sum a_i e_i` with
/// `sum a_i^2 = 1` (every score and pilot statistic here has that form when no mark of the
/// key is present): the smaller of Hoeffding's `exp(-z^2/2)` and Bentkus and Dzindzalieta's
/// `c P(N(0,1) >= z)` with `c = 3.1787`, the best constant there is (Bernoulli 21(2), 2015;
/// equality at `a = (1/sqrt 2, 1/sqrt 2)`, `z = sqrt 2`). The second is about `z / 1.3`
/// times smaller far out, where verdicts are made; both are proven bounds, not fits.
pub fn tail_bound(z: f64) -> f64 {
    if z <= 0.0 {
        return 1.0;
    }
    let hoeffding = (-z * z / 2.0).exp();
    let gaussian = GAUSSIAN_BOUND_FACTOR * normal_upper_tail(z);
    hoeffding.min(gaussian).min(1.0)
}

/// `P(N(0,1) >= z)`, never below the true value: the complementary error function to a
/// relative error under 3e-7 (Numerical Recipes' Chebyshev fit), raised by 1e-5.
pub fn normal_upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2) * (1.0 + 1e-5)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806
                        + t * (0.27886807
                            + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let ans = t * (-z * z + poly).exp();
    if x >= 0.0 {
        ans
    } else {
        2.0 - ans
    }
}

/// `z` such that `tail_bound(z) = p` (bisection: the bound falls monotonically).
pub fn z_for_tail(p: f64) -> f64 {
    if p >= 1.0 {
        return 0.0;
    }
    let (mut lo, mut hi) = (0.0f64, 40.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if tail_bound(mid) > p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracemark_core::layout::Scheme;
    use tracemark_core::{EmbedConfig, Embedder, Frame};

    /// The residual of a moving mark on a textured picture, as floats.
    fn moved_mark(key: &MasterKey, id: MarkId, motion: (f64, f64)) -> (Vec<f32>, Vec<f32>, usize, usize) {
        let (w, h) = (352, 288);
        let mut f = Frame::new(w, h);
        for (y, row) in f.y.rows_mut().enumerate() {
            for (x, p) in row.iter_mut().enumerate() {
                *p = (60 + (x * 37 + y * 91 + (x * y) % 23) % 120) as u8;
            }
        }
        let host: Vec<f32> = f.y.rows().flat_map(|r| r.iter().map(|&v| f32::from(v))).collect();
        let e = Embedder::new(key, id, EmbedConfig::new().with_scheme(Scheme::FollowsMotion)).unwrap();
        e.embed_at(&mut f, motion, &mut e.new_scratch());
        let marked: Vec<f32> = f.y.rows().flat_map(|r| r.iter().map(|&v| f32::from(v))).collect();
        (marked.iter().zip(&host).map(|(m, h)| m - h).collect(), host, w, h)
    }

    #[test]
    fn a_moved_mark_is_read_where_it_moved_to() {
        let (key, id) = (MasterKey::from_seed(3), MarkId(0xfeed_0000_0000_0003));
        let det = Detector::new(&key);
        for motion in [(37.25, -11.5), (-3.0, 130.75), (0.0, 0.0)] {
            let (resid, host, w, h) = moved_mark(&key, id, motion);
            let read = |offset| {
                let mut sums = SlotSums::default();
                det.accumulate_moved(&resid, &host, w, h, offset, &mut sums, &mut DetectScratch::default());
                det.end_frame(&mut sums);
                det.pilot_z(&sums)
            };
            let (right, unmoved) = (read(motion), read((motion.0 + 4.0, motion.1 - 3.0)));
            assert!(right > 20.0, "{motion:?}: pilot z {right} where the mark went");
            assert!(unmoved < 6.0, "{motion:?}: pilot z {unmoved} off by a few pixels");
        }
    }

    #[test]
    fn local_noise_is_the_mean_of_the_covered_neighbours() {
        // 4 x 3 blocks; the right column is not covered (zero).
        let power = [1.0, 2.0, 3.0, 0.0, 4.0, 5.0, 6.0, 0.0, 7.0, 8.0, 9.0, 0.0];
        assert_eq!(local_noise(&power, 4, 3, (1, 1)), 5.0);
        assert_eq!(local_noise(&power, 4, 3, (0, 0)), (1.0 + 2.0 + 4.0 + 5.0) / 4.0);
        // Next to the uncovered column only the covered blocks count.
        assert_eq!(local_noise(&power, 4, 3, (3, 1)), (3.0 + 6.0 + 9.0) / 3.0);
        assert_eq!(local_noise(&[0.0; 4], 2, 2, (1, 1)), 0.0);
        assert_eq!(local_noise(&[2.5], 1, 1, (0, 0)), 2.5);
    }

    #[test]
    fn erfc_matches_reference_values() {
        // math.erfc of CPython (the C library's, correctly rounded to double).
        let reference = [
            (0.5, 0.4795001221869535),
            (1.0, 0.15729920705028513),
            (2.0, 0.004677734981047265),
            (3.0, 2.2090496998585438e-05),
            (4.0, 1.541725790028002e-08),
            (5.0, 1.5374597944280351e-12),
            (7.0, 4.183825607779414e-23),
            (10.0, 2.088487583762545e-45),
            (15.0, 7.212994172451206e-100),
            (20.0, 5.3958656116079005e-176),
            (26.0, 5.663192408856143e-296),
        ];
        for (x, want) in reference {
            let got = erfc(x);
            assert!((got / want - 1.0).abs() < 3e-7, "erfc({x}) = {got}, want {want}");
            assert!(
                normal_upper_tail(x * std::f64::consts::SQRT_2) >= 0.5 * want,
                "not an upper bound at {x}"
            );
        }
        assert!((erfc(-1.0) - (2.0 - 0.15729920705028513)).abs() < 1e-7);
    }

    #[test]
    fn tail_bound_is_the_smaller_proven_bound_and_inverts() {
        // The extremal case of the Gaussian bound: two equal weights, P(S >= sqrt 2) = 1/4.
        assert!((tail_bound(std::f64::consts::SQRT_2) - 0.25).abs() < 1e-4);
        assert!(tail_bound(std::f64::consts::SQRT_2) >= 0.25);
        // Near zero Hoeffding is the smaller; far out the Gaussian one, by about z / 1.3.
        assert_eq!(tail_bound(0.5), (-0.125f64).exp());
        let z = 6.0;
        let ratio = (-z * z / 2.0f64).exp() / tail_bound(z);
        assert!(ratio > 4.0 && ratio < 5.5, "{ratio}");
        assert_eq!(tail_bound(-1.0), 1.0);
        for p in [0.5, 1e-3, 1e-6, 1e-12, 1e-40] {
            let z = z_for_tail(p);
            assert!((tail_bound(z) / p - 1.0).abs() < 1e-6, "p {p}: z {z}");
        }
    }

    #[test]
    fn tail_bound_covers_exact_rademacher_tails() {
        // Exact tails of n equal weights 1/sqrt n (a binomial), the hardest case for a
        // Gaussian bound: the bound must hold at every attainable value.
        for n in [1usize, 2, 3, 4, 5, 8, 16, 64, 256] {
            let mut tail = 0.0;
            let total = 2f64.powi(n as i32);
            let mut binom = vec![1f64; n + 1];
            for k in 1..=n {
                binom[k] = binom[k - 1] * (n + 1 - k) as f64 / k as f64;
            }
            for k in (0..=n).rev() {
                // k heads of n: S = (2k - n) / sqrt n.
                tail += binom[k] / total;
                let s = (2.0 * k as f64 - n as f64) / (n as f64).sqrt();
                assert!(tail <= tail_bound(s) * (1.0 + 1e-9), "n {n}, S >= {s}: {tail} > {}", tail_bound(s));
            }
        }
    }
}
