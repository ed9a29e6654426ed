//! Calibration of the false-positive probabilities against real unmarked video, wrong keys
//! and innocent exports. A false accusation is the worst bug this project can have: over
//! more than 10,000 null trials nothing may be identified, and the empirical tail of the
//! scores must sit under the probabilities the tool reports.
#![cfg(feature = "video")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracemark_core::layout::Scheme;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use tracemark_core::pipeline::no_progress;
use tracemark_core::video::{transcode, TranscodeConfig, VideoReader};
use tracemark_core::{EmbedConfig, Embedder, Frame, Identity, MarkId, MasterKey};
use tracemark_extract::detect::{tail_bound, DetectScratch, Detector, SlotSums};
use tracemark_extract::image::Gray;
use tracemark_extract::verdict::{decide, Candidate, Verdict};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(name)
}

fn frames(path: &Path, n: usize) -> Vec<Frame> {
    let mut r = VideoReader::open(path).unwrap();
    let mut out = Vec::new();
    let mut f = Frame::new(2, 2);
    while out.len() < n && r.read_frame(&mut f).unwrap() {
        out.push(f.clone());
    }
    out
}

fn work(f: &Frame) -> Gray {
    let g = tracemark_core::grid::Grid::for_frame(f.width(), f.height());
    Gray::from_plane(&f.y, g.work_w, g.work_h)
}

/// Slot sums of a residual: per-slot sums do not depend on the key (the layout only
/// assigns chips and roles to slots), so one set serves every key of the trials.
fn sums_of(resid: &Gray, host: &Gray, phase: (usize, usize)) -> SlotSums {
    let d = Detector::new(&MasterKey::from_seed(0));
    let mut s = SlotSums::default();
    d.accumulate(&resid.data, &host.data, resid.w, resid.h, phase, &mut s, &mut DetectScratch::default());
    s
}

fn diff(a: &Gray, b: &Gray) -> Gray {
    Gray { w: a.w, h: a.h, data: a.data.iter().zip(&b.data).map(|(x, y)| x - y).collect() }
}

/// Residuals with no mark of the trial keys in them, from real video.
fn null_sources() -> Vec<SlotSums> {
    let mut out = Vec::new();
    // Blind-style residuals of unmarked frames of every clip, at several tile phases.
    for clip in ["vtest-4s.avi", "city-2s.mpg", "cockatoo-3s.mp4", "pan1080-1s.mp4"] {
        for (i, f) in frames(&testdata(clip), 3).iter().enumerate() {
            let w = work(f);
            let r = diff(&w, &w.median3());
            out.push(sums_of(&r, &w, ((i * 40) % 128, (i * 24) % 128)));
        }
    }
    // Informed-style residuals of an unmarked copy after a real x264 re-encode (crf 35).
    let dir = tempfile::tempdir().unwrap();
    let enc = dir.path().join("plain.mp4");
    let cfg = TranscodeConfig::new().with_crf(35).with_preset("veryfast");
    transcode(&testdata("vtest-4s.avi"), &enc, &cfg, Arc::new(Identity), &mut no_progress).unwrap();
    for (a, b) in frames(&testdata("vtest-4s.avi"), 8).iter().zip(frames(&enc, 8).iter()) {
        let (wa, wb) = (work(a), work(b));
        out.push(sums_of(&diff(&wb, &wa), &wa, (0, 0)));
    }
    // Frames marked with a key that no trial uses: the wrong-key case.
    let other = Embedder::new(&MasterKey::from_seed(999_999), MarkId(42), EmbedConfig::new()).unwrap();
    for f in frames(&testdata("vtest-4s.avi"), 4) {
        let mut m = f.clone();
        other.embed(&mut m, &mut other.new_scratch());
        let (wa, wm) = (work(&f), work(&m));
        out.push(sums_of(&diff(&wm, &wa), &wa, (0, 0)));
    }
    out
}

#[test]
fn no_false_accusation_in_10000_null_trials_and_tails_are_calibrated() {
    let sources = null_sources();
    let mut rng = ChaCha20Rng::seed_from_u64(2026);
    let trials = 10_500;
    let candidates_per_trial = 8;
    let mut scores = Vec::with_capacity(trials * candidates_per_trial);
    let mut pilots = Vec::with_capacity(trials);
    let mut worst_p = 1.0f64;
    for t in 0..trials {
        let key = MasterKey::from_seed(10_000 + t as u64);
        let det = Detector::new(&key);
        let candidates: Vec<Candidate> = (0..candidates_per_trial)
            .map(|i| Candidate {
                mark_id: MarkId(rng.next_u64()),
                recipient: format!("r{i}"),
                scheme: Scheme::default(),
            })
            .collect();
        let sums = &sources[t % sources.len()];
        let d = decide(&det, sums, &candidates, 1.0, 1e-6);
        assert_ne!(d.verdict, Verdict::Identified, "trial {t}: false accusation {:?}", d.suspects);
        worst_p = worst_p.min(d.candidates[0].false_positive_probability);
        scores.extend(d.candidates.iter().map(|c| c.score));
        pilots.push(d.pilot_z);
    }
    assert!(worst_p > 1e-6, "smallest null probability {worst_p}");
    check_tail("candidate scores", &scores);
    check_tail("pilot statistics", &pilots);
}

/// Innocent exports next to a strongly marked one: the scores of other ids of the same key
/// must stay unit-variance (the codewords of random ids are unrelated).
#[test]
fn innocent_exports_of_the_same_key_stay_calibrated() {
    let key = MasterKey::from_seed(77);
    let det = Detector::new(&key);
    let guilty = MarkId(0x1234_5678_9abc_def0);
    let e = Embedder::new(&key, guilty, EmbedConfig::new()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let mut scores = Vec::new();
    for f in frames(&testdata("vtest-4s.avi"), 4).iter().chain(&frames(&testdata("city-2s.mpg"), 2)) {
        let mut m = f.clone();
        e.embed(&mut m, &mut e.new_scratch());
        let (wa, wm) = (work(f), work(&m));
        let sums = sums_of(&diff(&wm, &wa), &wa, (0, 0));
        for _ in 0..500 {
            let mut cands: Vec<Candidate> = (0..4)
                .map(|i| Candidate {
                    mark_id: MarkId(rng.next_u64()),
                    recipient: format!("innocent{i}"),
                    scheme: Scheme::default(),
                })
                .collect();
            cands.push(Candidate { mark_id: guilty, recipient: "guilty".into(), scheme: Scheme::default() });
            let d = decide(&det, &sums, &cands, 1.0, 1e-6);
            assert_eq!(d.verdict, Verdict::Identified);
            assert_eq!(d.suspects.len(), 1, "an innocent export was named: {:?}", d.suspects);
            assert_eq!(d.suspects[0].recipient, "guilty");
            scores.extend(d.candidates.iter().filter(|c| c.recipient != "guilty").map(|c| c.score));
        }
    }
    check_tail("innocent scores beside a guilty one", &scores);
}

/// Counts above several thresholds must be within a binomial bound of the reported tail
/// probability ([`tail_bound`]), and the variance near 1.
fn check_tail(what: &str, z: &[f64]) {
    let n = z.len() as f64;
    let mean = z.iter().sum::<f64>() / n;
    let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    assert!(mean.abs() < 0.1, "{what}: mean {mean}");
    assert!(var < 1.15, "{what}: variance {var} (the bound assumes at most 1)");
    for t in [1.5f64, 2.0, 2.5, 3.0, 3.5, 4.0] {
        let count = z.iter().filter(|&&v| v >= t).count() as f64;
        let p = tail_bound(t);
        let allowed = n * p + 4.0 * (n * p * (1.0 - p)).sqrt() + 3.0;
        assert!(
            count <= allowed,
            "{what}: {count} of {n} at or above {t}, reported tail allows {allowed:.0}"
        );
    }
}
