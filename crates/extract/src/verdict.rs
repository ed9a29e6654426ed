//! From detection statistics to a verdict with family-wise false-positive probabilities.

use tracemark_core::MarkId;

use crate::detect::{tail_bound, Detector, SlotSums};

/// A registered export the detector should test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The export's mark id.
    pub mark_id: MarkId,
    /// Who received it.
    pub recipient: String,
}

/// One candidate's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// The export's mark id.
    pub mark_id: MarkId,
    /// Who received it.
    pub recipient: String,
    /// Normalised correlation of its codeword with the soft bits (unit variance if innocent).
    pub score: f64,
    /// Family-wise probability that an innocent export scores this high: the tail bound
    /// times the number of candidates tested.
    pub false_positive_probability: f64,
}

/// The outcome of a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// At least one export passes the threshold.
    Identified,
    /// Evidence of a mark of this key, but no export passes the threshold.
    Inconclusive,
    /// No evidence of a mark of this key.
    NoMark,
}

impl Verdict {
    /// The JSON spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Identified => "identified",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NoMark => "no_mark",
        }
    }
}

/// Everything the statistics say about accumulated sums.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// Every candidate, best first.
    pub candidates: Vec<Scored>,
    /// Candidates at or below the threshold, best first.
    pub suspects: Vec<Scored>,
    /// Pilot statistic.
    pub pilot_z: f64,
    /// Probability of a pilot this strong without a mark of this key, over everything
    /// searched to find it.
    pub pilot_p: f64,
    /// Blind decoding of the codeword (id, score, probability over all 2^64 ids).
    pub decoded: (MarkId, f64, f64),
    /// Soft bits' total energy, for reports.
    pub soft_norm: f64,
}

/// Scores `candidates` against `sums`. `sync_hypotheses` is the number of geometries the
/// pilot was maximised over (1 when registration did not use the key).
pub fn decide(
    detector: &Detector,
    sums: &SlotSums,
    candidates: &[Candidate],
    sync_hypotheses: f64,
    threshold: f64,
) -> Decision {
    // Damaged input (a NaN or infinity anywhere) must never count as evidence.
    if sums.x.iter().any(|v| !v.is_finite()) {
        let clean = SlotSums { x: vec![0.0; sums.x.len()], frames: sums.frames };
        return decide(detector, &clean, candidates, sync_hypotheses, threshold);
    }
    let soft = detector.soft_bits(sums);
    let n = candidates.len().max(1) as f64;
    let mut scored: Vec<Scored> = candidates
        .iter()
        .map(|c| {
            let score = detector.score(&soft, c.mark_id);
            Scored {
                mark_id: c.mark_id,
                recipient: c.recipient.clone(),
                score,
                false_positive_probability: (n * tail_bound(score)).min(1.0),
            }
        })
        .collect();
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    let suspects: Vec<Scored> =
        scored.iter().filter(|s| s.false_positive_probability <= threshold).cloned().collect();
    let pilot_z = detector.pilot_z(sums);
    let pilot_p = (sync_hypotheses.max(1.0) * tail_bound(pilot_z)).min(1.0);
    let (id, z) = detector.decode(&soft);
    let decoded_p = (2f64.powi(64) * tail_bound(z)).min(1.0);
    let verdict = if !suspects.is_empty() {
        Verdict::Identified
    } else if pilot_p <= threshold
        || decoded_p <= threshold
        || scored.first().is_some_and(|s| s.false_positive_probability <= 1e-2)
    {
        Verdict::Inconclusive
    } else {
        Verdict::NoMark
    };
    Decision {
        verdict,
        candidates: scored,
        suspects,
        pilot_z,
        pilot_p,
        decoded: (id, z, decoded_p),
        soft_norm: soft.iter().map(|v| v * v).sum::<f64>().sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracemark_core::MasterKey;

    #[test]
    fn non_finite_sums_accuse_nobody() {
        let key = MasterKey::from_seed(5);
        let det = Detector::new(&key);
        let mut sums = SlotSums::default();
        for (i, v) in sums.x.iter_mut().enumerate() {
            *v = if i % 2 == 0 { f64::NAN } else { 1e300 * 1e10 };
        }
        let c = [Candidate { mark_id: MarkId(1), recipient: "x".into() }];
        let d = decide(&det, &sums, &c, 1.0, 1e-6);
        assert_eq!(d.verdict, Verdict::NoMark);
        assert!(d.suspects.is_empty());
        assert!(d.candidates.iter().all(|c| c.score.is_finite() && c.false_positive_probability == 1.0));
    }
}
