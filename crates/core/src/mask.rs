//! Watson-style perceptual masking per block of the working grid.
//!
//! Three factors decide how much mark a block can hide: frequency sensitivity (static,
//! [`crate::dct::BAND_THRESHOLDS`]), luminance masking (darker blocks show less, so they
//! get less; saturated highlights too, where the mark would clip) and contrast masking
//! (texture hides a mark, flat sky and walls do not: amplitude grows as the block's AC
//! energy to the power 0.7, from a small floor). Neighbouring blocks are blended so the
//! mark's strength has no hard steps at block edges.

/// Parameters of the mask. Defaults are tuned for 8-bit video.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskParams {
    /// Block standard deviation (in 8-bit levels) at which contrast masking gives 1.
    pub contrast_ref: f32,
    /// Exponent of contrast masking (Watson: 0.7).
    pub contrast_exp: f32,
    /// Smallest contrast factor: flat areas get almost nothing.
    pub floor: f32,
    /// Largest contrast factor.
    pub ceiling: f32,
    /// Mean luma at which luminance masking gives 1.
    pub luma_ref: f32,
    /// Exponent of luminance masking (Watson: 0.649).
    pub luma_exp: f32,
}

impl Default for MaskParams {
    fn default() -> Self {
        Self {
            contrast_ref: 6.0,
            contrast_exp: 0.7,
            floor: 0.1,
            ceiling: 4.0,
            luma_ref: 110.0,
            luma_exp: 0.649,
        }
    }
}

impl MaskParams {
    /// Checks ranges.
    ///
    /// # Errors
    /// [`crate::Error::InvalidConfig`] (setting `mask`) when a parameter is out of range.
    pub fn validate(&self) -> crate::Result<()> {
        let ok = self.contrast_ref > 0.0
            && (0.0..=2.0).contains(&self.contrast_exp)
            && self.floor > 0.0
            && self.ceiling >= self.floor
            && self.luma_ref > 0.0
            && (0.0..=2.0).contains(&self.luma_exp);
        if ok {
            Ok(())
        } else {
            Err(crate::Error::InvalidConfig {
                setting: "mask",
                reason: format!("parameters out of range: {self:?}"),
            })
        }
    }

    /// Mask value of one block from its mean and standard deviation.
    pub fn block_value(&self, mean: f32, std: f32) -> f32 {
        let contrast = (std / self.contrast_ref).powf(self.contrast_exp).clamp(self.floor, self.ceiling);
        let lum = (mean / self.luma_ref).clamp(0.05, 1.0).powf(self.luma_exp);
        // Highlights near 255 would clip the mark: fade it out over the top 20 levels.
        let top = ((255.0 - mean) / 20.0).clamp(0.1, 1.0);
        contrast * lum * top
    }
}

/// Pixel positions in a block row, centred: the regressors of the block's plane.
const CENTRED: [f32; 8] = [-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5];
/// Variance per pixel a plane explains, per unit of squared gradient sum: the sum over a
/// block of a centred coordinate squared is 8 x 42 = 336, over 64 pixels.
const PLANE_NORM: f32 = 1.0 / (336.0 * 64.0);

/// Standard deviation of a block's 64 pixels about their best-fitting plane: texture,
/// without the gradient. A smooth ramp (a defocused background, a sky, a lit wall) hides
/// nothing, however steep; counting it as contrast put a visible mottle on smooth HD areas.
pub fn texture_std(px: &[f64; 64]) -> f64 {
    let mean = px.iter().sum::<f64>() / 64.0;
    let c = |k: usize| k as f64 - 3.5;
    let gx = (0..64).map(|k| px[k] * c(k % 8)).sum::<f64>();
    let gy = (0..64).map(|k| px[k] * c(k / 8)).sum::<f64>();
    let (bx, by) = (gx / 336.0, gy / 336.0);
    let var = (0..64).map(|k| (px[k] - mean - bx * c(k % 8) - by * c(k / 8)).powi(2)).sum::<f64>() / 64.0;
    var.sqrt()
}

/// Computes the mask of every whole block of a working-grid image (rows `w` apart: floats,
/// or the bytes of a picture on its native grid) into `mask` (`bx * by`), using `raw` as
/// scratch of the same size. Contrast is measured about each block's plane
/// ([`texture_std`]).
pub fn compute<T: Copy + Into<f32>>(
    params: &MaskParams,
    img: &[T],
    w: usize,
    bx: usize,
    by: usize,
    raw: &mut [f32],
    mask: &mut [f32],
) {
    for j in 0..by {
        let rows = &img[j * 8 * w..];
        let out = &mut raw[j * bx..(j + 1) * bx];
        let mut i0 = 0;
        while i0 + LANES <= bx {
            block_stats::<LANES, T>(params, &rows[i0 * 8..], w, &mut out[i0..i0 + LANES]);
            i0 += LANES;
        }
        for i in i0..bx {
            block_stats::<1, T>(params, &rows[i * 8..], w, &mut out[i..=i]);
        }
    }
    smooth(raw, bx, by, mask);
}

/// Blocks side by side whose sums run together: each sum is still added pixel by pixel in
/// the block's own order (the result is bit for bit one block at a time, see
/// `compute_one_by_one`), but the blocks' sums are independent chains the processor
/// overlaps, where one block's 64 dependent additions wait on each other.
const LANES: usize = 16;

/// The raw mask of the `N` blocks side by side whose top-left pixel is `rows[0]` (rows of
/// `w`), into `out`.
#[inline(always)]
fn block_stats<const N: usize, T: Copy + Into<f32>>(
    params: &MaskParams,
    rows: &[T],
    w: usize,
    out: &mut [f32],
) {
    let (mut s, mut s2, mut gx, mut gy) = ([0f32; N], [0f32; N], [0f32; N], [0f32; N]);
    for (y, &cy) in CENTRED.iter().enumerate() {
        let row = &rows[y * w..][..N * 8];
        let (mut r, mut rx) = ([0f32; N], [0f32; N]);
        for (x, &c) in CENTRED.iter().enumerate() {
            for l in 0..N {
                let p: f32 = row[l * 8 + x].into();
                r[l] += p;
                s2[l] += p * p;
                rx[l] += p * c;
            }
        }
        for l in 0..N {
            s[l] += r[l];
            gx[l] += rx[l];
            gy[l] += r[l] * cy;
        }
    }
    for (l, o) in out.iter_mut().enumerate() {
        let mean = s[l] / 64.0;
        let var = (s2[l] / 64.0 - mean * mean - (gx[l] * gx[l] + gy[l] * gy[l]) * PLANE_NORM).max(0.0);
        *o = params.block_value(mean, var.sqrt());
    }
}

/// Blends each block with its 4-neighbours (weight 1/2 own, 1/2 neighbours' mean), taking
/// the smaller of the blend and the block's own value twice over so a flat block beside
/// texture stays quiet.
pub(crate) fn smooth(raw: &[f32], bx: usize, by: usize, out: &mut [f32]) {
    for j in 0..by {
        for i in 0..bx {
            let own = raw[j * bx + i];
            let (mut s, mut n) = (0f32, 0f32);
            if i > 0 {
                s += raw[j * bx + i - 1];
                n += 1.0;
            }
            if i + 1 < bx {
                s += raw[j * bx + i + 1];
                n += 1.0;
            }
            if j > 0 {
                s += raw[(j - 1) * bx + i];
                n += 1.0;
            }
            if j + 1 < by {
                s += raw[(j + 1) * bx + i];
                n += 1.0;
            }
            let blend = if n > 0.0 { 0.5 * own + 0.5 * s / n } else { own };
            out[j * bx + i] = blend.min(2.0 * own);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_masks_like_a_flat_block_and_texture_on_a_ramp_counts() {
        let p = MaskParams::default();
        let (w, bx, by) = (16, 2, 1);
        // Left block a steep ramp (20 levels across, 14 down), right block a checker.
        let mut img = vec![0f32; w * 8];
        let mut ramp_checker = [0f64; 64];
        for y in 0..8 {
            for x in 0..16 {
                let ramp = 60.0 + 2.9 * (x % 8) as f32 + 2.0 * y as f32;
                let checker = if (x + y) % 2 == 0 { 12.0 } else { -12.0 };
                img[y * w + x] = if x < 8 { ramp } else { ramp + checker };
                if x >= 8 {
                    ramp_checker[y * 8 + x - 8] = f64::from(img[y * w + x]);
                }
            }
        }
        let (mut raw, mut mask) = (vec![0f32; 2], vec![0f32; 2]);
        compute(&p, &img, w, bx, by, &mut raw, &mut mask);
        let flat = p.block_value(60.0 + 2.9 * 3.5 + 2.0 * 3.5, 0.0);
        assert!((raw[0] - flat).abs() < 1e-3 * flat, "ramp {} vs flat {flat}", raw[0]);
        // The checker's own deviation (12) survives the ramp under it, in both routines.
        assert!((texture_std(&ramp_checker) - 12.0).abs() < 1e-9);
        let checker = p.block_value(raw_mean(&ramp_checker), 12.0);
        assert!((raw[1] - checker).abs() < 1e-3 * checker, "{} vs {checker}", raw[1]);
    }

    /// [`compute`] one block at a time, as it was written first: the reference the
    /// side-by-side sums must match bit for bit.
    fn compute_one_by_one(params: &MaskParams, img: &[f32], w: usize, bx: usize, by: usize, raw: &mut [f32]) {
        for j in 0..by {
            for i in 0..bx {
                let (mut s, mut s2, mut gx, mut gy) = (0f32, 0f32, 0f32, 0f32);
                for y in 0..8 {
                    let row = &img[(j * 8 + y) * w + i * 8..(j * 8 + y) * w + i * 8 + 8];
                    let (mut r, mut rx) = (0f32, 0f32);
                    for (&p, &c) in row.iter().zip(&CENTRED) {
                        r += p;
                        s2 += p * p;
                        rx += p * c;
                    }
                    s += r;
                    gx += rx;
                    gy += r * CENTRED[y];
                }
                let mean = s / 64.0;
                let var = (s2 / 64.0 - mean * mean - (gx * gx + gy * gy) * PLANE_NORM).max(0.0);
                raw[j * bx + i] = params.block_value(mean, var.sqrt());
            }
        }
    }

    #[test]
    fn side_by_side_sums_are_the_one_block_sums_bit_for_bit() {
        let p = MaskParams::default();
        // Widths with and without a partial group of blocks, and pixels past the last
        // whole block (ignored).
        for (bx, by, extra) in [(1, 1, 0), (16, 2, 3), (37, 3, 7), (96, 4, 0)] {
            let w = bx * 8 + extra;
            let mut state = 0x2545_f491_u32 ^ (bx as u32);
            let img: Vec<f32> = (0..w * by * 8)
                .map(|k| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    // Smooth ramps, texture and saturated highlights side by side.
                    let base = (k % w) as f32 * 0.7 + (k / w) as f32 * 0.3;
                    (base + (state % 64) as f32 * ((k / 8 % 4) as f32 * 0.5)).min(255.0)
                })
                .collect();
            let (mut raw, mut mask, mut want) =
                (vec![0f32; bx * by], vec![0f32; bx * by], vec![0f32; bx * by]);
            compute(&p, &img, w, bx, by, &mut raw, &mut mask);
            compute_one_by_one(&p, &img, w, bx, by, &mut want);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&raw), bits(&want), "{bx} x {by} blocks");
            // A picture's bytes, read as they are, give the mask of their floats.
            let bytes: Vec<u8> = img.iter().map(|&v| v as u8).collect();
            let whole: Vec<f32> = bytes.iter().map(|&b| f32::from(b)).collect();
            compute(&p, &bytes, w, bx, by, &mut raw, &mut mask);
            compute_one_by_one(&p, &whole, w, bx, by, &mut want);
            assert_eq!(bits(&raw), bits(&want), "{bx} x {by} blocks of bytes");
        }
    }

    fn raw_mean(px: &[f64; 64]) -> f32 {
        (px.iter().sum::<f64>() / 64.0) as f32
    }

    #[test]
    fn texture_gets_more_than_flat_and_dark_gets_little() {
        let p = MaskParams::default();
        assert!(p.block_value(128.0, 20.0) > 5.0 * p.block_value(128.0, 0.0));
        assert!(p.block_value(10.0, 20.0) < 0.25 * p.block_value(128.0, 20.0));
        assert!(p.block_value(254.0, 20.0) < 0.2 * p.block_value(200.0, 20.0));
        assert!(p.validate().is_ok());
    }
}
