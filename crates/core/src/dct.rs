//! The 8x8 orthonormal DCT-II and the band of coefficients that carries the mark.

/// Block size.
pub const N: usize = 8;

/// The marked coefficients as (vertical, horizontal) frequency: zigzag positions 1..=9,
/// low and middle frequencies that survive H.264 at broadcast bitrates (not DC).
pub const BAND: [(usize, usize); 9] =
    [(0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0)];

/// Watson's (1993) base luminance thresholds for the band: the visibility of one unit of
/// each coefficient. The mark's amplitude per coefficient is proportional to these.
pub const BAND_THRESHOLDS: [f32; 9] = [1.01, 1.01, 1.16, 1.45, 1.16, 1.66, 1.32, 1.32, 1.66];

fn c(k: usize) -> f64 {
    if k == 0 {
        (1.0 / N as f64).sqrt()
    } else {
        (2.0 / N as f64).sqrt()
    }
}

/// Basis image of coefficient (`v`, `u`), row-major 8x8, unit norm.
pub fn basis(v: usize, u: usize) -> [f64; 64] {
    let mut b = [0.0; 64];
    for y in 0..N {
        for x in 0..N {
            b[y * N + x] = c(v)
                * c(u)
                * (((2 * y + 1) * v) as f64 * std::f64::consts::PI / 16.0).cos()
                * (((2 * x + 1) * u) as f64 * std::f64::consts::PI / 16.0).cos();
        }
    }
    b
}

/// The band's weights: [`BAND_THRESHOLDS`] normalised so a block carrying every band
/// coefficient at unit amplitude has unit energy. The detector reads every layout with
/// them; layouts `tracemark/v1` to `v4` are written with them.
pub fn band_weights() -> [f32; 9] {
    let norm = BAND_THRESHOLDS.iter().map(|t| t * t).sum::<f32>().sqrt();
    BAND_THRESHOLDS.map(|t| t / norm)
}

/// Equal weights of unit total energy: every band coefficient at the same amplitude (layout
/// `tracemark/v5`). Watson's thresholds put the most of the mark in the highest
/// coefficients of the band, the first that downscaling and heavy compression remove.
pub fn even_band_weights() -> [f32; 9] {
    [1.0 / 3.0; 9]
}

/// The band's basis images in f32, computed once.
pub fn band_basis() -> [[f32; 64]; 9] {
    let mut out = [[0f32; 64]; 9];
    for (o, &(v, u)) in out.iter_mut().zip(&BAND) {
        for (d, s) in o.iter_mut().zip(basis(v, u)) {
            *d = s as f32;
        }
    }
    out
}

/// Forward 2-D DCT straight from the definition (scalar reference, O(N^4)).
#[doc(hidden)]
pub fn forward_reference(block: &[f64; 64]) -> [f64; 64] {
    let mut out = [0.0; 64];
    for v in 0..N {
        for u in 0..N {
            let b = basis(v, u);
            out[v * N + u] = block.iter().zip(&b).map(|(p, q)| p * q).sum();
        }
    }
    out
}

/// Inverse 2-D DCT straight from the definition (scalar reference, O(N^4)).
#[doc(hidden)]
pub fn inverse_reference(coefs: &[f64; 64]) -> [f64; 64] {
    let mut out = [0.0; 64];
    for v in 0..N {
        for u in 0..N {
            let k = coefs[v * N + u];
            if k != 0.0 {
                for (o, b) in out.iter_mut().zip(basis(v, u)) {
                    *o += k * b;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basis_is_orthonormal_and_inverse_undoes_forward() {
        for i in 0..64 {
            for j in 0..64 {
                let (a, b) = (basis(i / 8, i % 8), basis(j / 8, j % 8));
                let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-12, "{i} {j} {dot}");
            }
        }
        let block: [f64; 64] = std::array::from_fn(|i| ((i * 37) % 251) as f64);
        let back = inverse_reference(&forward_reference(&block));
        for (a, b) in block.iter().zip(&back) {
            assert!((a - b).abs() < 1e-9);
        }
    }
}
