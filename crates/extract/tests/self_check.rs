//! An export's self-check from the source recorded while the copy was made
//! (`check_recorded`) against the one that decodes and tracks the source again
//! (`check_export`): the same reading, bit for bit, on real clips of both grids.
#![cfg(feature = "video")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracemark_core::layout::Scheme;
use tracemark_core::pipeline::{no_progress, Identity};
use tracemark_core::video::{transcode, TranscodeConfig};
use tracemark_core::{EmbedConfig, Embedder, MarkId, MasterKey};
use tracemark_extract::trace::{check_export, check_recorded, RecordSource, SourceRecording};
use tracemark_extract::Error;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(name)
}

const MARK: MarkId = MarkId(0x5eed_0fc0_ffee_0042);
const SECONDS: f64 = 1.0;
const THRESHOLD: f64 = 1e-6;

/// Marks `clip` into `dir` (x264 crf 18) while recording its first second.
fn export(key: &MasterKey, clip: &Path, dir: &Path) -> (PathBuf, Arc<SourceRecording>) {
    let out = dir.join("marked.mp4");
    let recording = Arc::new(SourceRecording::open(clip, SECONDS).unwrap());
    let embedder = Embedder::new(key, MARK, EmbedConfig::new()).unwrap();
    let marking = Arc::new(RecordSource::new(embedder, Arc::clone(&recording)));
    let cfg = TranscodeConfig::new().with_crf(18).with_preset("veryfast");
    transcode(clip, &out, &cfg, marking, &mut no_progress).unwrap();
    (out, recording)
}

/// Both readings of `clip`'s export agree bit for bit, for its own mark id and another,
/// and only its own is identified.
fn recorded_is_decoded(clip: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::from_bytes([21; 32]);
    let clip = testdata(clip);
    let (marked, recording) = export(&key, &clip, dir.path());
    let scheme = Scheme::default();
    for (mark_id, own) in [(MARK, true), (MarkId(0x0bad_cafe_0000_0007), false)] {
        let recorded = check_recorded(&key, &recording, &marked, mark_id, scheme, THRESHOLD).unwrap();
        let decoded = check_export(&key, &clip, &marked, mark_id, scheme, SECONDS, THRESHOLD).unwrap();
        assert_eq!(recorded, decoded, "{}: mark {mark_id}", clip.display());
        assert_eq!(recorded.identified, own, "{}: mark {mark_id}: {:?}", clip.display(), recorded.decision);
        assert_eq!(recorded.frames, recording.frames());
    }
}

#[test]
fn recorded_check_is_the_decoded_check_on_a_1080p_pan() {
    recorded_is_decoded("pan1080-1s.mp4");
}

#[test]
fn recorded_check_is_the_decoded_check_on_a_native_grid_with_an_odd_height() {
    recorded_is_decoded("city-2s.mpg");
}

/// The recording of one export does not vouch for an unmarked copy of the same source.
#[test]
fn recorded_check_does_not_find_a_mark_in_a_plain_copy() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::from_bytes([22; 32]);
    let clip = testdata("vtest-4s.avi");
    let (_, recording) = export(&key, &clip, dir.path());
    let plain = dir.path().join("plain.mp4");
    let cfg = TranscodeConfig::new().with_crf(18).with_preset("veryfast");
    transcode(&clip, &plain, &cfg, Arc::new(Identity), &mut no_progress).unwrap();
    let check = check_recorded(&key, &recording, &plain, MARK, Scheme::default(), THRESHOLD).unwrap();
    assert!(!check.identified, "{:?}", check.decision);
    assert!(check.frames > 0);
}

#[test]
fn a_recording_of_nothing_is_no_frames() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::from_bytes([23; 32]);
    let clip = testdata("vtest-4s.avi");
    let (marked, _) = export(&key, &clip, dir.path());
    let never_filled = SourceRecording::open(&clip, SECONDS).unwrap();
    let r = check_recorded(&key, &never_filled, &marked, MARK, Scheme::default(), THRESHOLD);
    assert!(matches!(r, Err(Error::NoFrames)), "{r:?}");
}
