//! The whole blind search (every scale, mirror and shift it tries) against video that holds
//! no mark of the trial keys: unmarked clips, mirrored and rotated unmarked copies, and a
//! copy marked with an unrelated key (fixed on a still shot, moving on a pan, and as a small
//! picture-in-picture, where the window search runs). Nobody may be named, the pilot's family-wise
//! probability must not claim a mark, and the candidates' scores must stay within their
//! stated tails. `TRACEMARK_BLIND_NULL_KEYS` (default 6 per source) sets the trials and
//! `TRACEMARK_BLIND_NULL_FIRST` (default 0) which keys, `TRACEMARK_BLIND_NULL_SOURCES`
//! (default all) which sources: `scripts/null-calibration.sh` runs thousands, in slices
//! whose summary lines add up to one run.
#![cfg(feature = "video")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tracemark_core::layout::Scheme;

use rayon::prelude::*;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use tracemark_core::pipeline::no_progress;
use tracemark_core::video::{transcode, TranscodeConfig};
use tracemark_core::{EmbedConfig, Embedder, MarkId, MasterKey};
use tracemark_extract::detect::tail_bound;
use tracemark_extract::trace::{accumulate_blind, trace_accumulated, BlindAccumulation, TraceConfig};
use tracemark_extract::verdict::{Candidate, Verdict};

use common::filtered_copy;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(name)
}

fn sources(dir: &Path) -> Vec<(String, BlindAccumulation)> {
    let mut files: Vec<PathBuf> = ["vtest-4s.avi", "city-2s.mpg", "cockatoo-3s.mp4", "pan1080-1s.mp4"]
        .iter()
        .map(|c| testdata(c))
        .collect();
    for (name, vf) in
        [("hflip", "hflip"), ("rotate", "rotate=3*PI/180"), ("flip-scale", "vflip,scale=640:-2")]
    {
        let out = dir.join(format!("{name}.mp4"));
        filtered_copy(&testdata("vtest-4s.avi"), vf, &out);
        files.push(out);
    }
    // Marked, but with a key no trial uses: the wrong-key case, mirrored for good measure.
    let other = MasterKey::from_seed(424_242);
    let marked = dir.join("other-key.mp4");
    let embedder = Arc::new(Embedder::new(&other, MarkId(7), EmbedConfig::new()).unwrap());
    let cfg = TranscodeConfig::new().with_crf(18).with_preset("veryfast");
    transcode(&testdata("vtest-4s.avi"), &marked, &cfg, Arc::clone(&embedder), &mut no_progress).unwrap();
    let mirrored = dir.join("other-key-hflip.mp4");
    filtered_copy(&marked, "hflip", &mirrored);
    // That copy as a small picture-in-picture over a moving background: the window search
    // finds its mark (of the other key) and must name nobody.
    let inset = dir.join("other-key-pip.mp4");
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(&marked)
        .args([
            "-filter_complex",
            "testsrc2=s=1280x720:r=10,format=yuv420p[bg];[0:v]scale=384:288,setsar=1[fg];\
             [bg][fg]overlay=x=W-w-32:y=32:shortest=1,format=yuv420p[v]",
            "-map",
            "[v]",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "23",
        ])
        .arg(&inset)
        .output()
        .expect("ffmpeg CLI");
    assert!(o.status.success(), "ffmpeg pip: {}", String::from_utf8_lossy(&o.stderr));
    files.push(marked);
    files.push(mirrored);
    files.push(inset);
    // And a pan marked with that key: its mark moves with the picture.
    let pan = dir.join("other-key-pan.mp4");
    transcode(&testdata("pan1080-1s.mp4"), &pan, &cfg, embedder, &mut no_progress).unwrap();
    files.push(pan);
    files
        .iter()
        .map(|f| {
            let acc = accumulate_blind(f, &TraceConfig::new(), &mut no_progress).unwrap();
            (f.file_name().unwrap().to_string_lossy().into_owned(), acc)
        })
        .collect()
}

#[test]
fn blind_search_over_scales_mirrors_and_shifts_accuses_nobody() {
    let env = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a count")))
    };
    let keys_per_source = env("TRACEMARK_BLIND_NULL_KEYS", 6);
    // Long runs go in slices (keys FIRST.. of every source): each trial's key and
    // candidates come from a stream of its own, so slices add up to one seeded run.
    let first_key = env("TRACEMARK_BLIND_NULL_FIRST", 0);
    // And which sources (indices, comma-separated; all by default), to finish a slice that
    // was cut short.
    let only: Option<Vec<usize>> = std::env::var("TRACEMARK_BLIND_NULL_SOURCES").ok().map(|v| {
        v.split(',').map(|i| i.trim().parse().unwrap_or_else(|_| panic!("source index {i}?"))).collect()
    });
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let sources = sources(dir.path());
    let prepared = started.elapsed();
    let candidates_per_trial = 8;
    let mut plan = Vec::new();
    for (si, _) in sources.iter().enumerate().filter(|(si, _)| only.as_ref().is_none_or(|o| o.contains(si))) {
        for k in first_key..first_key + keys_per_source {
            let mut rng = ChaCha20Rng::seed_from_u64(77);
            rng.set_stream((si as u64) << 40 | k);
            let key = MasterKey::from_seed(rng.next_u64());
            // A registry of old and new exports: on a moving picture every layout is
            // searched, and each counts in the family.
            let candidates: Vec<Candidate> = (0..candidates_per_trial)
                .map(|i| Candidate {
                    mark_id: MarkId(rng.next_u64()),
                    recipient: format!("r{i}"),
                    scheme: Scheme::ALL[i % Scheme::ALL.len()],
                })
                .collect();
            plan.push((si, k, key, candidates));
        }
    }
    let done = AtomicUsize::new(0);
    let total = plan.len();
    // One source at a time, its key-independent folds kept for its keys and dropped after.
    let mut outcomes: Vec<(f64, Vec<(f64, f64)>)> = Vec::with_capacity(total);
    for (si, (name, mut acc)) in sources.into_iter().enumerate() {
        let trials: Vec<_> = plan.iter().filter(|p| p.0 == si).collect();
        if trials.is_empty() {
            continue;
        }
        acc.keep_folds();
        let trial = |(_, k, key, candidates): &&(usize, u64, MasterKey, Vec<Candidate>)| {
            let r = trace_accumulated(key, &acc, candidates, &TraceConfig::new()).unwrap();
            let d = &r.decision;
            assert_ne!(d.verdict, Verdict::Identified, "{name} key {k}: false accusation {:?}", d.suspects);
            assert!(d.pilot_p > 1e-6, "{name} key {k}: pilot claims a mark (p = {:e})", d.pilot_p);
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n % 500 == 0 {
                eprintln!("{n} of {total} blind null trials: nobody named so far");
            }
            (d.pilot_p, d.candidates.iter().map(|c| (c.score, c.looks)).collect::<Vec<(f64, f64)>>())
        };
        // The first key alone, so the others find its folds kept instead of all folding them.
        let (first, rest) = trials.split_at(trials.len().min(1));
        outcomes.extend(first.iter().map(trial));
        outcomes.par_extend(rest.par_iter().map(trial));
        eprintln!("source {si} ({name}): {} keys, {} folds kept", trials.len(), acc.kept_folds());
    }
    let trials = outcomes.len();
    let smallest_pilot_p = outcomes.iter().map(|o| o.0).fold(1.0f64, f64::min);
    let scores: Vec<(f64, f64)> = outcomes.into_iter().flat_map(|o| o.1).collect();
    // Each innocent's score is the best of its `looks` (the readings that scored it; the
    // quarter-turn search alone doubles them), each a Rademacher sum: it is beyond the
    // point where `looks` times the tail bound is 1% with probability at most 1% (a union
    // bound, conservative); allow for the binomial spread of a few hundred scores. How many
    // are beyond one draw's 1% point is printed too: no bound, the readings' count shows.
    let n = scores.len() as f64;
    let beyond = scores.iter().filter(|&&(s, looks)| looks * tail_bound(s) <= 0.01).count() as f64;
    let beyond_one = scores.iter().filter(|&&(s, _)| tail_bound(s) <= 0.01).count();
    let allowed = 0.01 * n + 4.0 * (0.01 * n).sqrt() + 2.0;
    assert!(beyond <= allowed, "{beyond} of {n} innocent scores beyond their 1% tail (allowed {allowed:.1})");
    let mean_looks = scores.iter().map(|s| s.1).sum::<f64>() / n.max(1.0);
    // One line per slice, to be added up over the slices of a long run.
    eprintln!(
        "null-slice: first key {first_key}, {keys_per_source} keys a source, sources {}, {trials} trials, \
         {beyond} of {n} scores beyond their 1% tail, smallest pilot p {smallest_pilot_p:.3e}",
        only.as_ref().map_or("all".to_string(), |o| format!("{o:?}"))
    );
    eprintln!(
        "{trials} blind null trials: nobody named; smallest pilot p {smallest_pilot_p:.3e}; \
         {beyond} of {n} scores beyond their 1% tail ({beyond_one} beyond one draw's, {mean_looks:.1} \
         looks a score); sources made in {:.1} s, trials in {:.1} s",
        prepared.as_secs_f64(),
        (started.elapsed() - prepared).as_secs_f64()
    );
}

/// Keeping an accumulation's folds for the next key changes no trace: the same result for
/// the marking key and for others, first with nothing kept, then while the folds are being
/// kept, then from them (a mirrored still copy, and a pan whose sums follow the motion).
#[test]
fn kept_folds_give_the_same_traces() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::from_seed(31_337);
    let embedder = Arc::new(Embedder::new(&key, MarkId(0x5eed), EmbedConfig::new()).unwrap());
    let marked = dir.path().join("marked.mp4");
    let cfg = TranscodeConfig::new().with_crf(18).with_preset("veryfast");
    transcode(&testdata("vtest-4s.avi"), &marked, &cfg, embedder, &mut no_progress).unwrap();
    let mirrored = dir.path().join("marked-hflip.mp4");
    filtered_copy(&marked, "hflip", &mirrored);
    let exported =
        Candidate { mark_id: MarkId(0x5eed), recipient: "exported".into(), scheme: Scheme::default() };
    let others = Scheme::ALL.iter().enumerate().map(|(i, &scheme)| Candidate {
        mark_id: MarkId(0x1000 + i as u64),
        recipient: format!("r{i}"),
        scheme,
    });
    let candidates: Vec<Candidate> = std::iter::once(exported).chain(others).collect();
    let keys = [key, MasterKey::from_seed(1), MasterKey::from_seed(2)];
    for clip in [mirrored.clone(), testdata("pan1080-1s.mp4")] {
        let mut acc = accumulate_blind(&clip, &TraceConfig::new(), &mut no_progress).unwrap();
        let fresh: Vec<_> = keys
            .iter()
            .map(|k| trace_accumulated(k, &acc, &candidates, &TraceConfig::new()).unwrap())
            .collect();
        if clip == mirrored {
            assert_eq!(fresh[0].decision.verdict, Verdict::Identified, "the marked copy");
        }
        acc.keep_folds();
        let mut kept = Vec::new();
        for round in ["keeping", "kept"] {
            for (k, expected) in keys.iter().zip(&fresh) {
                let r = trace_accumulated(k, &acc, &candidates, &TraceConfig::new()).unwrap();
                assert_eq!(&r, expected, "{} ({round})", clip.display());
                kept.push(acc.kept_folds());
            }
        }
        // The marking key settles the trace early, after some searches; the first other
        // key searches everything, and then no key adds any fold.
        assert!(kept[0] > 0, "{}: nothing kept", clip.display());
        assert!(kept[0] <= kept[1], "{}: {kept:?}", clip.display());
        assert!(kept[1..].iter().all(|&n| n == kept[1]), "{}: the kept folds grew: {kept:?}", clip.display());
    }
}
