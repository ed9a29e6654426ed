//! Informed and blind traces through known picture geometries. The leaked copies are made
//! from real marked frames warped by a homography we choose (so the right answer is known
//! exactly), then encoded with the real x264; the trace must name the export and, in
//! informed mode, find the homography to within half a pixel at every corner.
#![cfg(feature = "video")]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use tracemark_core::layout::Scheme;

use tracemark_core::pipeline::no_progress;
use tracemark_core::video::{transcode, TranscodeConfig};
use tracemark_core::{EmbedConfig, Embedder, MarkId, MasterKey};
use tracemark_extract::homography::Homography;
use tracemark_extract::trace::{trace_blind, trace_informed, Orientation, Registration, TraceConfig};
use tracemark_extract::verdict::{Candidate, Verdict};

use common::filtered_copy;

const MARK: MarkId = MarkId(0x6e0e_7e57_0000_0010);
const W: usize = 768;
const H: usize = 576;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(name)
}

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

/// The luma planes of a clip, `w` x `h` bytes each, decoded by the ffmpeg CLI.
fn luma_frames(path: &Path) -> Vec<Vec<u8>> {
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "gray", "-"])
        .output()
        .expect("ffmpeg CLI");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout.chunks_exact(W * H).map(<[u8]>::to_vec).collect()
}

/// Bilinear sample of a `W` x `H` plane at continuous coordinates (pixel i covers
/// [i, i+1)); `None` outside.
fn sample(plane: &[u8], x: f64, y: f64) -> Option<f64> {
    let (u, v) = (x - 0.5, y - 0.5);
    if u < -0.5 || v < -0.5 || u > W as f64 - 0.5 || v > H as f64 - 0.5 {
        return None;
    }
    let (u, v) = (u.clamp(0.0, W as f64 - 1.0), v.clamp(0.0, H as f64 - 1.0));
    let (x0, y0) = (u.floor() as usize, v.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(W - 1), (y0 + 1).min(H - 1));
    let (fx, fy) = (u - x0 as f64, v - y0 as f64);
    let p = |x: usize, y: usize| f64::from(plane[y * W + x]);
    Some(
        (p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx) * (1.0 - fy)
            + (p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx) * fy,
    )
}

/// Writes `frames` warped by `h` (source -> leak) into a `size` picture over `background`
/// (per frame and pixel), encoded by x264 at crf 20.
fn warped_copy(
    frames: &[Vec<u8>],
    h: &Homography,
    size: (usize, usize),
    background: impl Fn(usize, usize, usize) -> u8,
    out: &Path,
) {
    let inv = h.inverse().expect("invertible");
    let mut child = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "gray", "-s"])
        .arg(format!("{}x{}", size.0, size.1))
        .args(["-r", "10", "-i", "-", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20"])
        .args(["-pix_fmt", "yuv420p"])
        .arg(out)
        .stdin(Stdio::piped())
        .spawn()
        .expect("ffmpeg CLI");
    let mut stdin = child.stdin.take().unwrap();
    let mut buf = vec![0u8; size.0 * size.1];
    for (t, f) in frames.iter().enumerate() {
        for y in 0..size.1 {
            for x in 0..size.0 {
                let v = inv
                    .map(x as f64 + 0.5, y as f64 + 0.5)
                    .and_then(|(sx, sy)| sample(f, sx, sy))
                    .map_or_else(|| background(t, x, y), |v| v.round().clamp(0.0, 255.0) as u8);
                buf[y * size.0 + x] = v;
            }
        }
        stdin.write_all(&buf).unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// The homography sending the source's corners to `to` (top-left, top-right, bottom-left,
/// bottom-right).
fn from_corners(to: [(f64, f64); 4]) -> Homography {
    let from = [(0.0, 0.0), (W as f64, 0.0), (0.0, H as f64), (W as f64, H as f64)];
    // Solve the 8x8 system of the direct linear transform with h33 = 1.
    let mut a = [[0f64; 9]; 8];
    for (k, (&(x, y), &(u, v))) in from.iter().zip(&to).enumerate() {
        a[2 * k] = [x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, u];
        a[2 * k + 1] = [0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, v];
    }
    for c in 0..8 {
        let p = (c..8).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs())).unwrap();
        a.swap(c, p);
        let pivot = a[c];
        for (r, row) in a.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / pivot[c];
                for (x, p) in row.iter_mut().zip(&pivot).skip(c) {
                    *x -= f * p;
                }
            }
        }
    }
    let s: Vec<f64> = (0..8).map(|r| a[r][8] / a[r][r]).collect();
    Homography([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], 1.0])
}

/// A textured background that moves every frame (what a picture-in-picture sits on).
fn moving_texture(t: usize, x: usize, y: usize) -> u8 {
    let (x, y) = ((x + 3 * t) as f64, (y + t) as f64);
    (128.0 + 50.0 * (x * 0.11).sin() * (y * 0.07).cos() + 30.0 * ((x + y) * 0.031).sin()) as u8
}

/// A marked export of `source` (x264 crf 18) in `dir`.
fn export(key: &MasterKey, source: &Path, dir: &Path) -> PathBuf {
    let marked = dir.join("marked.mp4");
    let embedder = Embedder::new(key, MARK, EmbedConfig::new()).unwrap();
    let cfg = TranscodeConfig::new().with_crf(18).with_preset("veryfast");
    transcode(source, &marked, &cfg, Arc::new(embedder), &mut no_progress).unwrap();
    marked
}

#[test]
fn known_homographies_are_recovered_to_half_a_pixel_and_the_export_named() {
    let key = MasterKey::from_seed(2031);
    let dir = tempfile::tempdir().unwrap();
    let source = testdata("vtest-4s.avi");
    let marked = export(&key, &source, dir.path());
    let frames = luma_frames(&marked);
    assert_eq!(frames.len(), 40);
    let (w, h) = (W as f64, H as f64);
    let black = |_: usize, _: usize, _: usize| 16u8;
    type Case = (&'static str, Homography, (usize, usize), bool);
    let cases: Vec<Case> = vec![
        ("mirror left-right", from_corners([(w, 0.0), (0.0, 0.0), (w, h), (0.0, h)]), (W, H), false),
        ("rotation +7 deg", Homography::about_centre(w, h, 7f64.to_radians(), false), (W, H), false),
        (
            "rotation -3 deg, mirrored",
            Homography::about_centre(w, h, -3f64.to_radians(), true),
            (W, H),
            false,
        ),
        (
            "phone keystone (corners moved up to 8%)",
            from_corners([
                (0.06 * w, 0.02 * h),
                (0.95 * w, 0.05 * h),
                (0.03 * w, 0.97 * h),
                (0.98 * w, 0.92 * h),
            ]),
            (W, H),
            false,
        ),
        (
            "stretch 0.7 wide",
            from_corners([(0.0, 0.0), (0.7 * w, 0.0), (0.0, h), (0.7 * w, h)]),
            (538, H),
            false,
        ),
        (
            "picture-in-picture at 30% width over a moving background",
            from_corners([
                (1280.0 - 32.0 - 384.0, 32.0),
                (1280.0 - 32.0, 32.0),
                (896.0 - 32.0, 320.0),
                (1248.0, 320.0),
            ]),
            (1280, 720),
            true,
        ),
    ];
    for (name, truth, size, moving) in cases {
        let leak = dir.path().join("leak.mp4");
        if moving {
            warped_copy(&frames, &truth, size, moving_texture, &leak);
        } else {
            warped_copy(&frames, &truth, size, black, &leak);
        }
        let r = trace_informed(&key, &leak, &source, &candidates(), &TraceConfig::new(), &mut no_progress)
            .unwrap();
        let Registration::Informed { homography, mirrored, .. } = r.registration else { panic!("informed") };
        let err = homography.corner_distance(&truth, w, h);
        eprintln!(
            "{name}: corner error {err:.3} px, best p {:?}",
            r.decision.suspects.first().map(|s| s.false_positive_probability)
        );
        assert!(err <= 0.5, "{name}: corner error {err:.3} px; found {homography:?}, truth {truth:?}");
        assert_eq!(mirrored, truth.is_mirrored(), "{name}");
        assert_eq!(r.decision.verdict, Verdict::Identified, "{name}: {:?}", r.decision);
        assert_eq!(r.decision.suspects[0].mark_id, MARK, "{name}");
    }
}

/// Blind copies through real ffmpeg rotations and aspect stretches: the mark's own lattice
/// gives the shape (found without the key), the pilot search the rest.
#[test]
fn blind_trace_finds_rotations_and_stretches_from_the_marks_lattice() {
    let key = MasterKey::from_seed(2033);
    let dir = tempfile::tempdir().unwrap();
    let source = testdata("vtest-4s.avi");
    let marked = export(&key, &source, dir.path());
    for (vf, rot, stretch) in [
        ("rotate=4*PI/180:ow=iw:oh=ih", 4.0, 1.0),
        ("rotate=-3*PI/180:ow=iw:oh=ih,hflip", 3.0, 1.0),
        ("scale=trunc(iw*1.25/2)*2:ih,crop=768:576", 0.0, 1.25),
        ("scale=768:trunc(576*1.2/2)*2,crop=768:576", 0.0, 1.0 / 1.2),
    ] {
        let leak = dir.path().join("leak.mp4");
        filtered_copy(&marked, vf, &leak);
        let r = trace_blind(&key, &leak, &candidates(), &TraceConfig::new(), &mut no_progress).unwrap();
        let Registration::Blind { rotation_deg, stretch: found, .. } = r.registration else {
            panic!("blind")
        };
        eprintln!("{vf}: rotation {rotation_deg:.3}, stretch {found:.4}, {:?}", r.decision.suspects.first());
        // ffmpeg's angle turns the picture clockwise on screen (y down); a mirror flips its sign.
        assert!((rotation_deg.abs() - rot).abs() < 0.3, "{vf}: rotation {rotation_deg}");
        assert!((found - stretch).abs() < 0.01, "{vf}: stretch {found}");
        assert_eq!(r.decision.verdict, Verdict::Identified, "{vf}: {:?}", r.decision);
        assert_eq!(r.decision.suspects[0].mark_id, MARK, "{vf}");
        assert_eq!(r.decision.suspects.len(), 1, "{vf}");
    }
}

/// Copies whose thumbnails a wrong map matches well on the robust NCC (which keeps the
/// pixels that agree): black bars over 44% of the picture, and turns past the orientation
/// search's 5-degree steps with black corners. Both used to be registered to a wrong map
/// (turned 164 degrees; shrunk to 0.95 x 0.77) and read as unmarked; their detail lines up
/// only under the true map.
#[test]
fn informed_trace_is_not_misled_by_black_bars_or_black_corners() {
    let key = MasterKey::from_seed(2035);
    let dir = tempfile::tempdir().unwrap();
    let source = testdata("vtest-4s.avi");
    let marked = export(&key, &source, dir.path());
    for (vf, rot) in [
        ("crop=iw:trunc(iw/2.39/2)*2,pad=iw:576:0:(oh-ih)/2:black", 0.0),
        ("rotate=-8*PI/180:fillcolor=black", -8.0),
        ("rotate=8*PI/180:fillcolor=black", 8.0),
    ] {
        let leak = dir.path().join("leak.mp4");
        filtered_copy(&marked, vf, &leak);
        let r = trace_informed(&key, &leak, &source, &candidates(), &TraceConfig::new(), &mut no_progress)
            .unwrap();
        let Registration::Informed { homography, rotation_deg, .. } = r.registration else {
            panic!("informed")
        };
        // The truth: ffmpeg turns the picture about its centre, clockwise on screen.
        let truth = Homography::about_centre(W as f64, H as f64, f64::to_radians(rot), false);
        let err = homography.corner_distance(&truth, W as f64, H as f64);
        eprintln!("{vf}: rotation {rotation_deg:.3}, corner error {err:.2} px");
        assert!(err <= 1.0, "{vf}: corner error {err:.2} px; found {homography:?}");
        assert_eq!(r.decision.verdict, Verdict::Identified, "{vf}: {:?}", r.decision);
        assert_eq!(r.decision.suspects[0].mark_id, MARK, "{vf}");
        assert_eq!(r.decision.suspects.len(), 1, "{vf}");
    }
}

/// Every flip and turn of a rectangle's grid: the flips, and the quarter turns and diagonal
/// mirrors a square tile's lattice cannot tell from the upright picture.
#[test]
fn blind_trace_reads_mirrored_flipped_and_turned_copies() {
    let key = MasterKey::from_seed(2032);
    let dir = tempfile::tempdir().unwrap();
    let source = testdata("vtest-4s.avi");
    let marked = export(&key, &source, dir.path());
    for (vf, want) in [
        ("hflip", Orientation::MirroredLeftRight),
        ("vflip", Orientation::UpsideDown),
        ("hflip,vflip", Orientation::HalfTurn),
        ("transpose=clock", Orientation::QuarterTurnClockwise),
        ("transpose=cclock", Orientation::QuarterTurnCounterClockwise),
        ("transpose=cclock_flip", Orientation::Transposed),
    ] {
        let leak = dir.path().join("leak.mp4");
        filtered_copy(&marked, vf, &leak);
        let r = trace_blind(&key, &leak, &candidates(), &TraceConfig::new(), &mut no_progress).unwrap();
        assert_eq!(r.registration.orientation(), Some(want), "{vf}");
        assert_eq!(r.decision.verdict, Verdict::Identified, "{vf}: {:?}", r.decision);
        assert_eq!(r.decision.suspects[0].mark_id, MARK, "{vf}");
        // The flip search must not cost the other recipients their innocence.
        assert_eq!(r.decision.suspects.len(), 1, "{vf}");
    }
}

/// A small picture-in-picture over a moving background (a third of the frame's width in a
/// corner of a 1280x720 studio picture, as a channel shows a viewer's clip): the rest of
/// the picture would drown the inset's mark, so blind mode searches windows and fits the
/// one it finds to the inset. The same composition of the unmarked source names nobody.
#[test]
fn blind_trace_finds_a_small_picture_in_picture() {
    let key = MasterKey::from_seed(2034);
    let dir = tempfile::tempdir().unwrap();
    let source = testdata("cockatoo-3s.mp4");
    let marked = export(&key, &source, dir.path());
    let pip = "testsrc2=s=1280x720:r=20,format=yuv420p[bg];\
               [0:v]scale=384:216,setsar=1[fg];[bg][fg]overlay=x=W-w-32:y=32:shortest=1,format=yuv420p[v]";
    for (input, marked_copy) in [(&marked, true), (&source, false)] {
        let leak = dir.path().join("pip.mp4");
        let o = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i"])
            .arg(input)
            .args([
                "-filter_complex",
                pip,
                "-map",
                "[v]",
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-crf",
                "23",
            ])
            .arg(&leak)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r = trace_blind(&key, &leak, &candidates(), &TraceConfig::new(), &mut no_progress).unwrap();
        if !marked_copy {
            assert!(r.decision.suspects.is_empty(), "unmarked inset: {:?}", r.decision);
            continue;
        }
        assert_eq!(r.decision.verdict, Verdict::Identified, "{:?}", r.decision);
        assert_eq!(r.decision.suspects[0].mark_id, MARK);
        assert_eq!(r.decision.suspects.len(), 1);
        let Registration::Blind { window: Some([x, y, w, h]), .. } = r.registration else {
            panic!("not read from a window: {:?}", r.registration)
        };
        // The window read overlaps the inset (864, 32, 384 x 216) by most of its area.
        let overlap =
            ((x + w).min(1248.0) - x.max(864.0)).max(0.0) * ((y + h).min(248.0) - y.max(32.0)).max(0.0);
        assert!(overlap >= 0.6 * w * h, "window {x},{y} {w}x{h}");
    }
}
