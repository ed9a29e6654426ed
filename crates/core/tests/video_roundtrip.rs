//! Round trips through the real FFmpeg libraries on the clips in `testdata/`.
#![cfg(feature = "video")]

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tracemark_core::frame::psnr;
use tracemark_core::pipeline::no_progress;
use tracemark_core::pipeline::FrameAt;
use tracemark_core::video::{transcode, TranscodeConfig, VideoReader};
use tracemark_core::{Error, Frame, FrameTransform, Identity};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(name)
}

/// Every frame's timestamp in seconds, and the picture size.
fn timestamps(path: &Path) -> (Vec<f64>, (usize, usize)) {
    let mut r = VideoReader::open(path).unwrap();
    let (n, d) = r.info().time_base;
    let tb = f64::from(n) / f64::from(d);
    let mut f = Frame::new(2, 2);
    let mut ts = Vec::new();
    while r.read_frame(&mut f).unwrap() {
        ts.push(f.pts.unwrap() as f64 * tb);
    }
    (ts, (r.info().width, r.info().height))
}

fn audio_duration(path: &Path) -> Option<f64> {
    let r = VideoReader::open(path).unwrap();
    let input = r.input();
    let s = input.streams().find(|s| s.parameters().medium() == ffmpeg_next::media::Type::Audio)?;
    Some(s.duration() as f64 * f64::from(s.time_base()))
}

fn identity(input: &Path, output: &Path, config: &TranscodeConfig) -> tracemark_core::Result<u64> {
    transcode(input, output, config, Arc::new(Identity), &mut no_progress).map(|r| r.frames)
}

fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[test]
fn round_trip_keeps_frames_timestamps_and_size() {
    for (clip, expect_size) in [
        ("vtest-4s.avi", (768, 576)),
        ("city-2s.mpg", (720, 404)), // odd height cropped to even by default
        ("cockatoo-3s.mp4", (1280, 720)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.mp4");
        let src = testdata(clip);
        let n = identity(&src, &out, &TranscodeConfig::new().with_preset("ultrafast")).unwrap();
        let (ts_in, _) = timestamps(&src);
        let (ts_out, size_out) = timestamps(&out);
        assert_eq!(n as usize, ts_in.len(), "{clip}: frames reported");
        assert_eq!(ts_out.len(), ts_in.len(), "{clip}: frame count");
        assert_eq!(size_out, expect_size, "{clip}: size");
        for (i, (a, b)) in ts_in.iter().zip(&ts_out).enumerate() {
            assert!((a - b).abs() < 0.002, "{clip}: frame {i} at {a} s became {b} s");
        }
        // Only the finished file is left: no temporary files.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.mp4")], "{clip}");
    }
}

#[test]
fn audio_stream_is_copied_with_its_duration() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let src = testdata("cockatoo-3s.mp4");
    identity(&src, &out, &TranscodeConfig::new().with_preset("ultrafast")).unwrap();
    let a_in = audio_duration(&src).expect("source has audio");
    let a_out = audio_duration(&out).expect("output has audio");
    assert!((a_in - a_out).abs() < 0.05, "audio {a_in} s became {a_out} s");
}

#[test]
fn lossless_identity_is_near_perfect() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let src = testdata("vtest-4s.avi");
    identity(&src, &out, &TranscodeConfig::new().with_crf(0).with_preset("ultrafast")).unwrap();
    let (mut a, mut b) = (VideoReader::open(&src).unwrap(), VideoReader::open(&out).unwrap());
    let (mut fa, mut fb) = (Frame::new(2, 2), Frame::new(2, 2));
    let mut n = 0;
    while a.read_frame(&mut fa).unwrap() {
        assert!(b.read_frame(&mut fb).unwrap(), "output is short");
        let p = psnr(&fa.y, &fb.y);
        assert!(p >= 60.0, "frame {n}: luma PSNR {p:.2} dB");
        n += 1;
    }
    assert!(n > 30);
}

#[test]
fn bad_inputs_give_typed_errors_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = tempfile::tempdir().unwrap();
    let cfg = TranscodeConfig::new().with_preset("ultrafast");
    let out = dir.path().join("out.mp4");

    let missing = inputs.path().join("missing.mp4");
    assert!(matches!(identity(&missing, &out, &cfg), Err(Error::InputNotFound(_))));

    let empty = inputs.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(identity(&empty, &out, &cfg), Err(Error::EmptyInput(_))));

    let text = inputs.path().join("notes.mp4");
    std::fs::write(&text, "this is not a video, just some words\n".repeat(100)).unwrap();
    assert!(matches!(identity(&text, &out, &cfg), Err(Error::NotAVideo { .. })), "text file");

    // A truncated file: the first part of a real clip, cut mid-stream.
    let bytes = std::fs::read(testdata("cockatoo-3s.mp4")).unwrap();
    let truncated = inputs.path().join("truncated.mp4");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let r = identity(&truncated, &out, &cfg);
    assert!(matches!(r, Err(Error::NotAVideo { .. } | Error::Decode { .. })), "truncated: {r:?}");
    assert!(dir_is_empty(dir.path()), "an output was left behind");
}

#[test]
fn refuses_to_overwrite_input_or_existing_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("clip.avi");
    std::fs::copy(testdata("vtest-4s.avi"), &src).unwrap();
    let before = std::fs::read(&src).unwrap();
    let cfg = TranscodeConfig::new().with_preset("ultrafast").with_overwrite(true);
    assert!(matches!(identity(&src, &src, &cfg), Err(Error::OutputIsInput(_))));
    let sneaky = dir.path().join(".").join("clip.avi");
    assert!(matches!(identity(&src, &sneaky, &cfg), Err(Error::OutputIsInput(_))));
    assert_eq!(std::fs::read(&src).unwrap(), before, "input changed");

    let existing = dir.path().join("taken.mp4");
    std::fs::write(&existing, b"keep me").unwrap();
    let cfg = TranscodeConfig::new().with_preset("ultrafast");
    assert!(matches!(identity(&src, &existing, &cfg), Err(Error::OutputExists(_))));
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");

    let nowhere = dir.path().join("no-such-dir").join("out.mp4");
    assert!(matches!(identity(&src, &nowhere, &cfg), Err(Error::OutputDirMissing(_))));
}

#[test]
fn cancellation_and_transform_errors_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let cfg = TranscodeConfig::new().with_preset("ultrafast");
    let mut cancel_at_5 = |p: tracemark_core::Progress| {
        if p.done >= 5 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let r = transcode(&testdata("vtest-4s.avi"), &out, &cfg, Arc::new(Identity), &mut cancel_at_5);
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert!(dir_is_empty(dir.path()));

    struct FailsAt(u64);
    impl FrameTransform for FailsAt {
        type Scratch = ();
        type Error = std::io::Error;
        fn new_scratch(&self) {}
        fn apply(&self, _: &mut Frame, at: FrameAt, _: &mut ()) -> Result<(), std::io::Error> {
            if at.index == self.0 {
                Err(std::io::Error::other("boom"))
            } else {
                Ok(())
            }
        }
    }
    let r = transcode(&testdata("vtest-4s.avi"), &out, &cfg, Arc::new(FailsAt(7)), &mut no_progress);
    assert!(matches!(r, Err(Error::Transform { frame: 7, .. })), "{r:?}");
    // The transform's own error is the source, typed, and not repeated in the message.
    let e = r.unwrap_err();
    let source = std::error::Error::source(&e).expect("a source");
    assert_eq!(source.downcast_ref::<std::io::Error>().map(|e| e.to_string()).as_deref(), Some("boom"));
    assert!(!e.to_string().contains("boom"), "{e}");
    assert!(dir_is_empty(dir.path()));
}

/// The pipeline allocates its slots (frame + scratch) once: the number of scratch areas
/// equals the configured bound, however long the clip, and frames arrive in order.
#[test]
fn frames_in_flight_are_bounded_and_order_is_kept() {
    struct Counting {
        scratches: AtomicUsize,
        concurrent: AtomicUsize,
        max_concurrent: AtomicUsize,
    }
    impl FrameTransform for Counting {
        type Scratch = Vec<u8>;
        type Error = std::convert::Infallible;
        fn new_scratch(&self) -> Vec<u8> {
            self.scratches.fetch_add(1, Ordering::SeqCst);
            vec![0; 16]
        }
        fn apply(&self, frame: &mut Frame, at: FrameAt, _: &mut Vec<u8>) -> Result<(), Self::Error> {
            let i = at.index;
            let c = self.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_concurrent.fetch_max(c, Ordering::SeqCst);
            // Stamp the frame index into the picture so the output order can be checked.
            frame.y.row_mut(0)[..16].fill((i % 200) as u8 + 20);
            std::thread::sleep(std::time::Duration::from_millis((i * 7) % 5));
            self.concurrent.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    }
    let t = Arc::new(Counting {
        scratches: AtomicUsize::new(0),
        concurrent: AtomicUsize::new(0),
        max_concurrent: AtomicUsize::new(0),
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let cfg =
        TranscodeConfig::new().with_crf(0).with_preset("ultrafast").with_threads(3).with_frames_in_flight(5);
    transcode(&testdata("vtest-4s.avi"), &out, &cfg, Arc::clone(&t), &mut no_progress).unwrap();
    assert_eq!(t.scratches.load(Ordering::SeqCst), 5);
    assert!(t.max_concurrent.load(Ordering::SeqCst) <= 3);
    let mut r = VideoReader::open(&out).unwrap();
    let mut f = Frame::new(2, 2);
    let mut i = 0u64;
    while r.read_frame(&mut f).unwrap() {
        let v = f.y.row(0)[4];
        assert!((i64::from(v) - ((i % 200) as i64 + 20)).abs() <= 1, "frame {i} carries {v}");
        i += 1;
    }
    assert_eq!(i, 40);
}

#[test]
fn luma_only_reads_the_same_luma_and_timestamps() {
    // 4:2:0 (copied as decoded) and 4:4:4 (converted in full, or luma taken as it is).
    for clip in ["vtest-4s.avi", "cockatoo-3s.mp4"] {
        let (mut full, mut luma) =
            (VideoReader::open(&testdata(clip)).unwrap(), VideoReader::open(&testdata(clip)).unwrap());
        luma.set_luma_only(true);
        let (mut a, mut b) = (Frame::new(2, 2), Frame::new(2, 2));
        let mut frames = 0;
        while full.read_frame(&mut a).unwrap() {
            assert!(luma.read_frame(&mut b).unwrap(), "{clip}: luma-only reader ended early");
            assert_eq!(a.y, b.y, "{clip} frame {frames}");
            assert_eq!(a.pts, b.pts, "{clip} frame {frames}");
            frames += 1;
        }
        assert!(!luma.read_frame(&mut b).unwrap(), "{clip}: luma-only reader has extra frames");
        assert!(frames > 10, "{clip}: {frames} frames");
    }
}
