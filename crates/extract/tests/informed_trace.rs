//! Informed traces of real files. Each file is decoded once and its frames kept within a
//! memory budget; past the budget, or when the registration wants another reading size of
//! the leaked clip, frames are decoded again. Either way the result must be the same.
#![cfg(feature = "video")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use tracemark_core::layout::Scheme;

use tracemark_core::pipeline::no_progress;
use tracemark_core::video::{transcode, TranscodeConfig};
use tracemark_core::{EmbedConfig, Embedder, MarkId, MasterKey};
use tracemark_extract::trace::{trace_informed, Registration, TraceConfig, TraceResult};
use tracemark_extract::verdict::{Candidate, Verdict};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(name)
}

const MARK: MarkId = MarkId(0x5eed_0fc0_ffee_0001);

fn candidates() -> Vec<Candidate> {
    [MARK, MarkId(0x1111_2222_3333_4444), MarkId(0x0bad_cafe_0000_0007)]
        .into_iter()
        .enumerate()
        .map(|(i, mark_id)| Candidate {
            mark_id,
            recipient: format!("recipient-{i}"),
            scheme: Scheme::default(),
        })
        .collect()
}

/// A marked export of `clip` (x264 crf 18), written into `dir`.
fn export(key: &MasterKey, clip: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("marked-{clip}.mp4"));
    let embedder = Embedder::new(key, MARK, EmbedConfig::new()).unwrap();
    let cfg = TranscodeConfig::new().with_crf(18).with_preset("veryfast");
    transcode(&testdata(clip), &out, &cfg, Arc::new(embedder), &mut no_progress).unwrap();
    out
}

fn ffmpeg(args: &[&str]) {
    let o = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).output().expect("ffmpeg CLI");
    assert!(o.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn trace(key: &MasterKey, leaked: &Path, source: &Path, budget: usize) -> TraceResult {
    let config = TraceConfig::new().with_memory_budget(budget);
    trace_informed(key, leaked, source, &candidates(), &config, &mut no_progress).unwrap()
}

/// Every budget (all frames kept, nothing kept, room for part of one file) gives the
/// identical result.
fn same_under_every_budget(key: &MasterKey, leaked: &Path, source: &Path) -> TraceResult {
    let kept = trace(key, leaked, source, usize::MAX);
    for budget in [0, 20 << 20] {
        assert_eq!(trace(key, leaked, source, budget), kept, "budget {budget} changed the result");
    }
    kept
}

#[test]
fn memory_budget_changes_nothing_but_speed() {
    let key = MasterKey::from_seed(41);
    let dir = tempfile::tempdir().unwrap();
    let source = testdata("vtest-4s.avi");
    let marked = export(&key, "vtest-4s.avi", dir.path());
    // A smaller re-encode: the reading resolution guessed from the frame sizes holds.
    let leak = dir.path().join("leak-512.mp4");
    let leak_s = leak.to_str().unwrap();
    ffmpeg(&[
        "-i",
        marked.to_str().unwrap(),
        "-vf",
        "scale=512:384",
        "-c:v",
        "libx264",
        "-crf",
        "23",
        leak_s,
    ]);
    let r = same_under_every_budget(&key, &leak, &source);
    assert_eq!(r.decision.verdict, Verdict::Identified);
    assert_eq!(r.decision.suspects.len(), 1);
    assert_eq!(r.decision.suspects[0].mark_id, MARK);
    assert_eq!(r.frames_used, 40, "every frame of the 4 s at 10 fps is read");
}

#[test]
fn picture_in_picture_reads_the_leak_at_its_own_resolution() {
    let key = MasterKey::from_seed(42);
    let dir = tempfile::tempdir().unwrap();
    let source = testdata("pan1080-1s.mp4");
    let marked = export(&key, "pan1080-1s.mp4", dir.path());
    // The export at half size inside a 1080p picture: a whole-picture copy would be read
    // at a third of its resolution, this one must be read at full resolution.
    let leak = dir.path().join("pip.mp4");
    ffmpeg(&[
        "-i",
        marked.to_str().unwrap(),
        "-filter_complex",
        "color=c=gray:s=1920x1080:r=25[bg];[0:v]scale=960:540[s];[bg][s]overlay=480:270:shortest=1",
        "-c:v",
        "libx264",
        "-crf",
        "16",
        leak.to_str().unwrap(),
    ]);
    let r = same_under_every_budget(&key, &leak, &source);
    let Registration::Informed { geometry, .. } = r.registration else { panic!("informed") };
    assert!((geometry.sx - 0.5).abs() < 0.01 && (geometry.tx - 480.0).abs() < 2.0, "{geometry:?}");
    assert_eq!(r.decision.verdict, Verdict::Identified, "{:?}", r.decision);
    assert_eq!(r.decision.suspects[0].mark_id, MARK);
}

/// A slow-motion replay (half speed, every frame shown twice) and a copy sped up by a
/// quarter: each leaked frame is paired with the source frame it shows, which drifts out of
/// any constant time offset's window within a second. Read with a constant offset the
/// replay was named at pilot z 6 on half its frames.
#[test]
fn slow_motion_and_sped_up_copies_are_paired_frame_by_frame() {
    let key = MasterKey::from_seed(43);
    let dir = tempfile::tempdir().unwrap();
    let source = testdata("city-2s.mpg");
    let marked = export(&key, "city-2s.mpg", dir.path());
    for (setpts, frames) in [("setpts=2*PTS", 100), ("setpts=0.8*PTS", 40)] {
        let leak = dir.path().join("retimed.mp4");
        ffmpeg(&[
            "-i",
            marked.to_str().unwrap(),
            "-vf",
            setpts,
            "-r",
            "25",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "23",
            leak.to_str().unwrap(),
        ]);
        let r = trace(&key, &leak, &source, usize::MAX);
        eprintln!("{setpts}: {} frames, pilot z {:.2}", r.frames_used, r.decision.pilot_z);
        assert_eq!(r.decision.verdict, Verdict::Identified, "{setpts}: {:?}", r.decision);
        assert_eq!(r.decision.suspects.len(), 1, "{setpts}");
        assert_eq!(r.decision.suspects[0].mark_id, MARK, "{setpts}");
        // Every leaked frame found its source frame (the last one or two may lie past it).
        assert!(r.frames_used + 2 >= frames, "{setpts}: {} of {frames} frames", r.frames_used);
        assert!(r.decision.pilot_z > 12.0, "{setpts}: pilot z {:.2}", r.decision.pilot_z);
    }
}
