//! Mark ids and their codewords.
//!
//! A [`MarkId`] is a random 64-bit number per export (never sequential). Its codeword is a
//! tail-biting rate-1/4 convolutional code (constraint length 7, generators 117, 127, 155,
//! 171 octal, free distance 20) of the id, [`CODE_BITS`] = 256 bits, XORed with a keyed
//! scrambling sequence. Tail-biting (the register starts with the id's last six bits)
//! rather than a zero tail: every code bit is then a distinct parity of the id, so the
//! codewords of two random ids agree like independent coin flips and the correlation
//! statistics of the detector stay calibrated. The detector can match soft bits against the
//! codewords of the registry, or decode them blindly with a soft-decision Viterbi decoder
//! (exact maximum likelihood: one run per starting state).

use rand_core::RngCore;

use crate::key::{MasterKey, Purpose};

/// Information bits (the mark id).
pub const ID_BITS: usize = 64;
const K: usize = 7;
const STATES: usize = 1 << (K - 1);
const GENERATORS: [u32; 4] = [0o117, 0o127, 0o155, 0o171];
/// Codeword length in bits.
pub const CODE_BITS: usize = ID_BITS * GENERATORS.len();
/// Free distance of the code: any pattern of `2 * errors + erasures < FREE_DISTANCE` decodes.
pub const FREE_DISTANCE: usize = 20;

/// A per-export mark identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MarkId(pub u64);

impl MarkId {
    /// A fresh random id from the operating system's random source. Zero is avoided.
    pub fn random() -> Self {
        loop {
            let v = rand_core::OsRng.next_u64();
            if v != 0 {
                return Self(v);
            }
        }
    }
}

impl std::fmt::Display for MarkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for MarkId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        u64::from_str_radix(s.trim(), 16)
            .map(Self)
            .map_err(|_| format!("{s:?} is not a 16-digit hex mark id"))
    }
}

fn parity(x: u32) -> u8 {
    (x.count_ones() & 1) as u8
}

fn id_bit(id: u64, i: usize) -> u32 {
    ((id >> (ID_BITS - 1 - i)) & 1) as u32
}

/// Tail-biting convolutional encoding of `id` (most significant bit first), as 0/1 bits.
pub fn conv_encode(id: u64) -> [u8; CODE_BITS] {
    let mut out = [0u8; CODE_BITS];
    // The register starts holding the last K-1 bits, oldest first.
    let mut state: u32 = (ID_BITS - (K - 1)..ID_BITS).fold(0, |acc, i| (acc << 1) | id_bit(id, i));
    for step in 0..ID_BITS {
        state = ((state << 1) | id_bit(id, step)) & ((1 << K) - 1);
        for (g, &poly) in GENERATORS.iter().enumerate() {
            out[step * GENERATORS.len() + g] = parity(state & poly);
        }
    }
    out
}

/// Soft-decision maximum-likelihood decoding. `soft[i] > 0` favours code bit 0 (+1),
/// `< 0` favours 1; zero is an erasure. Returns the most likely id.
pub fn viterbi_decode(soft: &[f64]) -> u64 {
    assert_eq!(soft.len(), CODE_BITS, "soft input must have CODE_BITS values");
    // Correlation of each step's soft values with the outputs of every 7-bit register.
    let mut branch = vec![[0f64; 1 << K]; ID_BITS];
    for (step, b) in branch.iter_mut().enumerate() {
        let s = &soft[step * 4..step * 4 + 4];
        for (reg, v) in b.iter_mut().enumerate() {
            *v = GENERATORS
                .iter()
                .zip(s)
                .map(|(&poly, &x)| if parity(reg as u32 & poly) == 0 { x } else { -x })
                .sum();
        }
    }
    let mut survivors = vec![[0u8; STATES]; ID_BITS];
    let (mut best_metric, mut best_id) = (f64::NEG_INFINITY, 0u64);
    for start in 0..STATES {
        let mut metric = [f64::NEG_INFINITY; STATES];
        metric[start] = 0.0;
        for (step, surv) in survivors.iter_mut().enumerate() {
            let mut next = [f64::NEG_INFINITY; STATES];
            for (st, &m) in metric.iter().enumerate() {
                if m == f64::NEG_INFINITY {
                    continue;
                }
                for bit in 0..2 {
                    let reg = (st << 1) | bit;
                    let ns = reg & (STATES - 1);
                    let cand = m + branch[step][reg];
                    if cand > next[ns] {
                        next[ns] = cand;
                        // The oldest bit of `st` falls out; keep it to trace back.
                        surv[ns] = (st >> (K - 2)) as u8;
                    }
                }
            }
            metric = next;
        }
        // Tail-biting: the path must end where it started.
        if metric[start] > best_metric {
            best_metric = metric[start];
            let mut st = start;
            let mut id = 0u64;
            for step in (0..ID_BITS).rev() {
                id |= ((st & 1) as u64) << (ID_BITS - 1 - step);
                st = (st >> 1) | ((survivors[step][st] as usize) << (K - 2));
            }
            best_id = id;
        }
    }
    best_id
}

/// The key's codebook: maps ids to ±1 codewords and back.
#[derive(Clone, Debug)]
pub struct Codebook {
    scramble: [u8; CODE_BITS],
}

impl Codebook {
    /// The codebook of `key`.
    pub fn new(key: &MasterKey) -> Self {
        let mut rng = key.rng(Purpose::Scramble, 0);
        let mut scramble = [0u8; CODE_BITS];
        for s in scramble.iter_mut() {
            *s = (rng.next_u32() & 1) as u8;
        }
        Self { scramble }
    }

    /// The codeword of `id` as ±1 values.
    pub fn codeword(&self, id: MarkId) -> [i8; CODE_BITS] {
        let bits = conv_encode(id.0);
        let mut out = [0i8; CODE_BITS];
        for ((o, &b), &s) in out.iter_mut().zip(&bits).zip(&self.scramble) {
            *o = if b ^ s == 0 { 1 } else { -1 };
        }
        out
    }

    /// Blind decoding of soft bits (positive = +1) to the most likely id.
    pub fn decode(&self, soft: &[f64]) -> MarkId {
        let unscrambled: Vec<f64> =
            soft.iter().zip(&self.scramble).map(|(&v, &s)| if s == 0 { v } else { -v }).collect();
        MarkId(viterbi_decode(&unscrambled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn to_soft(cw: &[i8]) -> Vec<f64> {
        cw.iter().map(|&c| f64::from(c)).collect()
    }

    #[test]
    fn decodes_clean_codewords() {
        let book = Codebook::new(&MasterKey::from_seed(1));
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for _ in 0..200 {
            let id = MarkId(rng.next_u64());
            assert_eq!(book.decode(&to_soft(&book.codeword(id))), id);
        }
    }

    /// Maximum-likelihood decoding of a code with free distance 20 corrects any pattern
    /// with 2 * errors + erasures < 20.
    #[test]
    fn survives_the_designed_errors_and_erasures() {
        let book = Codebook::new(&MasterKey::from_seed(2));
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        for trial in 0..300 {
            let id = MarkId(rng.next_u64());
            let mut soft = to_soft(&book.codeword(id));
            let errors = trial % 10; // 0..=9
            let erasures = FREE_DISTANCE - 1 - 2 * errors;
            let mut positions: Vec<usize> = (0..CODE_BITS).collect();
            for i in 0..errors + erasures {
                let j = i + (rng.next_u32() as usize) % (CODE_BITS - i);
                positions.swap(i, j);
            }
            for &p in &positions[..errors] {
                soft[p] = -soft[p];
            }
            for &p in &positions[errors..errors + erasures] {
                soft[p] = 0.0;
            }
            assert_eq!(book.decode(&soft), id, "trial {trial}: {errors} errors, {erasures} erasures");
        }
    }

    #[test]
    fn decodes_through_gaussian_noise() {
        let book = Codebook::new(&MasterKey::from_seed(3));
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut gauss = || {
            // Box-Muller from two uniforms.
            let u1 = (f64::from(rng.next_u32()) + 1.0) / 4294967297.0;
            let u2 = f64::from(rng.next_u32()) / 4294967296.0;
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        };
        let mut ok = 0;
        for i in 0..200u64 {
            let id = MarkId(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            // Per-bit SNR of 0 dB: a raw bit error rate of about 16%.
            let soft: Vec<f64> = book.codeword(id).iter().map(|&c| f64::from(c) + gauss()).collect();
            ok += usize::from(book.decode(&soft) == id);
        }
        assert!(ok >= 196, "only {ok}/200 decoded at 0 dB");
    }

    /// Codewords of different ids must look unrelated: their normalised correlation
    /// `c_a . c_b / sqrt(L)` behaves like a unit normal, so a strong mark of one export
    /// does not lift the score of another. Checked on 200,000 random pairs.
    #[test]
    fn codewords_of_different_ids_are_far_apart() {
        let book = Codebook::new(&MasterKey::from_seed(4));
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let n = 200_000;
        let (mut sum, mut sum2, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
        let mut min_dist = CODE_BITS;
        for _ in 0..n {
            let (a, b) = (MarkId(rng.next_u64()), MarkId(rng.next_u64()));
            let (ca, cb) = (book.codeword(a), book.codeword(b));
            let dot: i32 = ca.iter().zip(&cb).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum();
            let z = f64::from(dot) / (CODE_BITS as f64).sqrt();
            min_dist = min_dist.min(ca.iter().zip(&cb).filter(|(x, y)| x != y).count());
            sum += z;
            sum2 += z * z;
            max_abs = max_abs.max(z.abs());
        }
        let mean = sum / n as f64;
        let var = sum2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "variance {var}");
        // The largest of 200,000 unit normals is about 4.6; 6 would mean a heavy tail.
        assert!(max_abs < 6.0, "max |z| {max_abs}");
        assert!(min_dist >= 80, "closest pair differs in only {min_dist} of {CODE_BITS} bits");
    }

    #[test]
    fn mark_id_text_round_trip() {
        let id = MarkId(0x0123_4567_89ab_cdef);
        assert_eq!(id.to_string(), "0123456789abcdef");
        assert_eq!("0123456789abcdef".parse::<MarkId>().unwrap(), id);
        assert!("xyz".parse::<MarkId>().is_err());
    }
}
