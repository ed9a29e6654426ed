//! From detection statistics to a verdict with family-wise false-positive probabilities.

use tracemark_core::layout::Scheme;
use tracemark_core::MarkId;

use crate::detect::{tail_bound, Detector, SlotSums};

/// A registered export the detector should test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The export's mark id.
    pub mark_id: MarkId,
    /// Who received it.
    pub recipient: String,
    /// How its mark was laid out (recorded with the export).
    pub scheme: Scheme,
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
    /// How many innocent draws `score` is the best of: the readings that scored this
    /// export, or for a score where a search for its whole mark peaked, every geometry
    /// searched. An innocent export scores this high with probability at most `looks`
    /// times the tail bound (the family-wise probability counts every export's looks).
    pub looks: f64,
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
    decide_in_family(detector, sums, candidates, candidates.len(), sync_hypotheses, threshold)
}

/// The family a reading's probabilities are taken over: every candidate score and every
/// pilot search a trace made or planned (a search skipped because an earlier one was
/// decisive still counts).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Family {
    /// Candidate scores.
    pub candidates: usize,
    /// Geometries (and readings) the pilot was maximised over.
    pub sync_hypotheses: f64,
}

/// Scores candidates read in several ways (one reading per mark layout, say): each
/// reading's `sums` with its own candidates, probabilities over `family`; a candidate in
/// several readings is listed once, with its best score. The reading with
/// the strongest pilot gives the pilot and blind-decoding figures.
pub fn decide_readings(
    detector: &Detector,
    readings: &[(&SlotSums, &[Candidate])],
    family: Family,
    threshold: f64,
) -> Decision {
    let (n, hypotheses) = (family.candidates, family.sync_hypotheses);
    let mut each = readings
        .iter()
        .map(|(sums, cands)| decide_in_family(detector, sums, cands, n, hypotheses, threshold));
    let Some(mut best) = each.next() else {
        return decide(detector, &SlotSums::default(), &[], hypotheses, threshold);
    };
    for d in each {
        let (mut cands, mut suspects) = (d.candidates, d.suspects);
        if d.pilot_z > best.pilot_z {
            std::mem::swap(&mut best.candidates, &mut cands);
            std::mem::swap(&mut best.suspects, &mut suspects);
            best = Decision { candidates: best.candidates, suspects: best.suspects, ..d };
        }
        best.candidates.append(&mut cands);
        best.suspects.append(&mut suspects);
    }
    // A candidate read twice (from two readings) is listed once, by its better score.
    // Every reading lists every one of its candidates (a suspect only where it passes).
    let mut looks: std::collections::HashMap<MarkId, f64> = std::collections::HashMap::new();
    for c in &best.candidates {
        *looks.entry(c.mark_id).or_default() += c.looks;
    }
    for list in [&mut best.candidates, &mut best.suspects] {
        list.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut seen = std::collections::HashSet::new();
        list.retain(|c| seen.insert(c.mark_id));
        for c in list.iter_mut() {
            c.looks = looks[&c.mark_id];
        }
    }
    best.verdict = verdict_of(&best, threshold);
    best
}

/// Adds to `decision` readings made where a search for one candidate's whole mark (its
/// pilot and codeword together) peaked. That search chose the geometry with the
/// candidate's own codeword, so its score there is not one draw of an innocent's score but
/// the best of every geometry searched: its probability is taken over `hypotheses`, every
/// geometry of every such search for every candidate (a union bound: at any one geometry
/// an innocent's score is a Rademacher sum). A candidate takes the reading only where it
/// makes its probability smaller; an innocent's inflated score never shows otherwise.
/// Returns the index of the reading that now names the first suspect, if one does.
pub fn add_whole_mark_readings(
    detector: &Detector,
    decision: &mut Decision,
    readings: &[(&SlotSums, &Candidate)],
    hypotheses: f64,
    threshold: f64,
) -> Option<usize> {
    let mut taken: Vec<(MarkId, usize)> = Vec::new();
    for (i, (sums, candidate)) in readings.iter().enumerate() {
        // Damaged input never counts as evidence.
        if sums.x.iter().any(|v| !v.is_finite()) {
            continue;
        }
        let score = detector.score(&detector.soft_bits(sums), candidate.mark_id);
        let p = (hypotheses.max(1.0) * tail_bound(score)).min(1.0);
        let Some(entry) = decision.candidates.iter_mut().find(|c| c.mark_id == candidate.mark_id) else {
            continue;
        };
        if p < entry.false_positive_probability {
            (entry.score, entry.false_positive_probability) = (score, p);
            entry.looks = hypotheses.max(1.0);
            taken.retain(|t| t.0 != candidate.mark_id);
            taken.push((candidate.mark_id, i));
        }
    }
    if taken.is_empty() {
        return None;
    }
    // Scores from different families do not compare: most probable innocent last.
    decision.candidates.sort_by(|a, b| {
        a.false_positive_probability
            .total_cmp(&b.false_positive_probability)
            .then(b.score.total_cmp(&a.score))
    });
    decision.suspects =
        decision.candidates.iter().filter(|s| s.false_positive_probability <= threshold).cloned().collect();
    decision.verdict = verdict_of(decision, threshold);
    let first = decision.suspects.first()?;
    let &(_, i) = taken.iter().find(|t| t.0 == first.mark_id)?;
    decision.pilot_z = detector.pilot_z(readings[i].0);
    decision.pilot_p = (hypotheses.max(1.0) * tail_bound(decision.pilot_z)).min(1.0);
    Some(i)
}

fn verdict_of(d: &Decision, threshold: f64) -> Verdict {
    if !d.suspects.is_empty() {
        Verdict::Identified
    } else if d.pilot_p <= threshold
        || d.decoded.2 <= threshold
        || d.candidates.first().is_some_and(|s| s.false_positive_probability <= 1e-2)
    {
        Verdict::Inconclusive
    } else {
        Verdict::NoMark
    }
}

fn decide_in_family(
    detector: &Detector,
    sums: &SlotSums,
    candidates: &[Candidate],
    family: usize,
    sync_hypotheses: f64,
    threshold: f64,
) -> Decision {
    // Damaged input (a NaN or infinity anywhere) must never count as evidence.
    if sums.x.iter().any(|v| !v.is_finite()) {
        let clean = SlotSums { x: vec![0.0; sums.x.len()], frames: sums.frames };
        return decide_in_family(detector, &clean, candidates, family, sync_hypotheses, threshold);
    }
    let soft = detector.soft_bits(sums);
    let n = family.max(1) as f64;
    let mut scored: Vec<Scored> = candidates
        .iter()
        .map(|c| {
            let score = detector.score(&soft, c.mark_id);
            Scored {
                mark_id: c.mark_id,
                recipient: c.recipient.clone(),
                score,
                false_positive_probability: (n * tail_bound(score)).min(1.0),
                looks: 1.0,
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
    let mut d = Decision {
        verdict: Verdict::NoMark,
        candidates: scored,
        suspects,
        pilot_z,
        pilot_p,
        decoded: (id, z, decoded_p),
        soft_norm: soft.iter().map(|v| v * v).sum::<f64>().sqrt(),
    };
    d.verdict = verdict_of(&d, threshold);
    d
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
        let c = [Candidate { mark_id: MarkId(1), recipient: "x".into(), scheme: Scheme::Fixed }];
        let d = decide(&det, &sums, &c, 1.0, 1e-6);
        assert_eq!(d.verdict, Verdict::NoMark);
        assert!(d.suspects.is_empty());
        assert!(d.candidates.iter().all(|c| c.score.is_finite() && c.false_positive_probability == 1.0));
    }

    /// Slot sums of one marked, textured frame (a strong reading of `id`).
    fn marked_sums(key: &MasterKey, id: MarkId) -> SlotSums {
        use tracemark_core::{EmbedConfig, Embedder, Frame};
        let (w, h) = (256, 256);
        let mut f = Frame::new(w, h);
        for (y, row) in f.y.rows_mut().enumerate() {
            for (x, p) in row.iter_mut().enumerate() {
                *p = (60 + (x * 37 + y * 91 + (x * y) % 23) % 120) as u8;
            }
        }
        let host: Vec<f32> = f.y.rows().flat_map(|r| r.iter().map(|&v| f32::from(v))).collect();
        let e = Embedder::new(key, id, EmbedConfig::new()).unwrap();
        e.embed(&mut f, &mut e.new_scratch());
        let resid: Vec<f32> =
            f.y.rows().flat_map(|r| r.iter().map(|&v| f32::from(v))).zip(&host).map(|(m, h)| m - h).collect();
        let det = Detector::new(key);
        let mut sums = SlotSums::default();
        det.accumulate(&resid, &host, w, h, (0, 0), &mut sums, &mut crate::detect::DetectScratch::default());
        det.end_frame(&mut sums);
        sums
    }

    #[test]
    fn a_candidate_in_two_readings_is_listed_once_and_counted_twice() {
        let key = MasterKey::from_seed(9);
        let det = Detector::new(&key);
        let guilty = MarkId(0x5eed_0fc0_ffee_0001);
        let cand =
            |id, name: &str| Candidate { mark_id: id, recipient: name.into(), scheme: Scheme::FollowsMotion };
        let both = [cand(guilty, "guilty"), cand(MarkId(0x1111_2222_3333_4444), "innocent")];
        let (strong, empty) = (marked_sums(&key, guilty), SlotSums { frames: 1, ..SlotSums::default() });
        let alone = decide(&det, &strong, &both, 10.0, 1e-6);
        let family = Family { candidates: 4, sync_hypotheses: 20.0 };
        let d = decide_readings(&det, &[(&empty, &both), (&strong, &both)], family, 1e-6);
        assert_eq!(d.verdict, Verdict::Identified);
        assert_eq!(d.suspects.len(), 1, "{:?}", d.suspects);
        assert_eq!(d.candidates.len(), 2, "{:?}", d.candidates);
        assert_eq!(d.suspects[0].mark_id, guilty);
        // Twice the candidates and twice the searches: twice the probabilities.
        let ratio = d.suspects[0].false_positive_probability / alone.suspects[0].false_positive_probability;
        assert!((ratio - 2.0).abs() < 1e-9, "{ratio}");
        assert!((d.pilot_p / alone.pilot_p - 2.0).abs() < 1e-9, "{} vs {}", d.pilot_p, alone.pilot_p);
        // Each listed score is the best of the two readings' draws.
        assert!(d.candidates.iter().chain(&d.suspects).all(|c| c.looks == 2.0), "{d:?}");
        assert!(alone.candidates.iter().all(|c| c.looks == 1.0));
    }

    #[test]
    fn a_whole_mark_reading_counts_every_geometry_and_never_inflates_an_innocent() {
        let key = MasterKey::from_seed(11);
        let det = Detector::new(&key);
        let guilty = MarkId(0x0dd_ba11_0000_0007);
        let cand =
            |id, name: &str| Candidate { mark_id: id, recipient: name.into(), scheme: Scheme::FollowsPans };
        let (g, innocent) = (cand(guilty, "guilty"), cand(MarkId(0x7777_0000_1234_5678), "innocent"));
        let both = [g.clone(), innocent.clone()];
        let empty = SlotSums { frames: 1, ..SlotSums::default() };
        let family = Family { candidates: 2, sync_hypotheses: 10.0 };
        let before = decide_readings(&det, &[(&empty, &both)], family, 1e-6);
        assert_eq!(before.verdict, Verdict::NoMark);
        // The innocent's search peaked at a geometry where its codeword happens to fit a
        // little (an innocent's best over many geometries): its score stays as read.
        let mut d = before.clone();
        let (strong, weak) = (marked_sums(&key, guilty), marked_sums(&key, innocent.mark_id));
        // An innocent's reading with another export's mark three times as strong over it: a score that two
        // candidates alone would find striking, but over 1e9 geometries is what innocents
        // reach.
        let third = marked_sums(&key, MarkId(0x3333_3333_3333_3333));
        let mixed =
            SlotSums { x: weak.x.iter().zip(&third.x).map(|(a, b)| a + 3.0 * b).collect(), frames: 1 };
        let innocent_score = det.score(&det.soft_bits(&mixed), innocent.mark_id);
        assert!((3.5..7.0).contains(&innocent_score), "{innocent_score}");
        let hypotheses = 1e9;
        assert_eq!(add_whole_mark_readings(&det, &mut d, &[(&mixed, &innocent)], hypotheses, 1e-6), None);
        assert_eq!(d, before, "a reading no better than the first changes nothing");
        // The guilty one's reading names it, its probability over every geometry searched.
        let i =
            add_whole_mark_readings(&det, &mut d, &[(&mixed, &innocent), (&strong, &g)], hypotheses, 1e-6);
        assert_eq!(i, Some(1));
        assert_eq!(d.verdict, Verdict::Identified);
        assert_eq!(d.suspects.len(), 1, "{:?}", d.suspects);
        let s = &d.suspects[0];
        assert_eq!(s.mark_id, guilty);
        let expected = hypotheses * tail_bound(det.score(&det.soft_bits(&strong), guilty));
        assert!((s.false_positive_probability / expected - 1.0).abs() < 1e-12, "{s:?} vs {expected:e}");
        assert_eq!(s.looks, hypotheses, "the whole mark's score is the best over every geometry");
        assert_eq!(d.candidates.len(), 2);
        assert_eq!(d.candidates[1].mark_id, innocent.mark_id);
        assert_eq!(
            d.candidates[1].score,
            before.candidates.iter().find(|c| c.mark_id == innocent.mark_id).unwrap().score
        );
        assert_eq!(d.pilot_z, det.pilot_z(&strong));
    }
}
