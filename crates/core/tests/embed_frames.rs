//! The embedder on real frames from `testdata/`: fast kernel vs scalar reference,
//! invisibility, no flicker, clipping, odd and tiny sizes.
#![cfg(feature = "video")]

use std::path::{Path, PathBuf};

use tracemark_core::embed::EmbedStats;
use tracemark_core::frame::{psnr, ssim};
use tracemark_core::layout::Scheme;
use tracemark_core::video::VideoReader;
use tracemark_core::{EmbedConfig, Embedder, Frame, MarkId, MasterKey, Plane};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(name)
}

fn frames(clip: &str, n: usize) -> Vec<Frame> {
    let mut r = VideoReader::open(&testdata(clip)).unwrap();
    let mut out = Vec::new();
    let mut f = Frame::new(2, 2);
    while out.len() < n && r.read_frame(&mut f).unwrap() {
        out.push(f.clone());
    }
    out
}

/// The test export's embedder under `scheme`.
fn embedder_with(scheme: Scheme) -> Embedder {
    let config = EmbedConfig::new().with_scheme(scheme);
    Embedder::new(&MasterKey::from_seed(11), MarkId(0x5eed_0000_1234_abcd), config).unwrap()
}

/// The fixed (`tracemark/v1`) mark: on a single frame the same as the moving one at rest.
fn embedder() -> Embedder {
    embedder_with(Scheme::Fixed)
}

const CLIPS: [&str; 4] = ["vtest-4s.avi", "city-2s.mpg", "cockatoo-3s.mp4", "pan1080-1s.mp4"];

/// The fast kernel's frame and statistics against the scalar reference's: the same up to
/// rounding (a level at most, on at most one pixel in a thousand).
fn assert_agree(what: &str, original: &Frame, fast: (&Frame, EmbedStats), slow: (&Frame, EmbedStats)) {
    let ((fast, a), (slow, b)) = (fast, slow);
    assert!((a.strength - b.strength).abs() <= 1e-3 * b.strength, "{what}: {a:?} vs {b:?}");
    let (mut differ, mut worst) = (0usize, 0i32);
    for (ra, rb) in fast.y.rows().zip(slow.y.rows()) {
        for (&x, &y) in ra.iter().zip(rb) {
            let d = (i32::from(x) - i32::from(y)).abs();
            worst = worst.max(d);
            differ += usize::from(d != 0);
        }
    }
    let total = original.width() * original.height();
    assert!(worst <= 1, "{what}: a pixel differs by {worst}");
    assert!(differ * 1000 <= total, "{what}: {differ} of {total} pixels differ (rounding only expected)");
    assert_ne!(fast.y, original.y, "{what}: nothing was marked");
}

#[test]
fn fast_kernel_agrees_with_scalar_reference() {
    // Watson's band amplitudes (v1-v4) and even ones (v5).
    for e in [embedder(), embedder_with(Scheme::FollowsPansEvenBands)] {
        let mut scratch = e.new_scratch();
        for clip in CLIPS {
            let f = frames(clip, 1).remove(0);
            let (mut fast, mut slow) = (f.clone(), f.clone());
            let a = e.embed(&mut fast, &mut scratch);
            let b = e.embed_reference(&mut slow);
            assert_agree(&format!("{clip} {:?}", e.config().scheme), &f, (&fast, a), (&slow, b));
        }
    }
}

#[test]
fn mark_is_invisible_by_psnr_and_ssim() {
    let e = embedder();
    let mut scratch = e.new_scratch();
    for clip in CLIPS {
        for f in frames(clip, 10) {
            let mut m = f.clone();
            e.embed(&mut m, &mut scratch);
            let (p, s) = (psnr(&f.y, &m.y), ssim(&f.y, &m.y));
            assert!(p >= 45.0, "{clip}: PSNR {p:.2} dB");
            assert!(s >= 0.99, "{clip}: SSIM {s:.4}");
            assert_eq!((m.u.clone(), m.v.clone()), (f.u.clone(), f.v.clone()), "chroma must be untouched");
        }
    }
}

/// The mark is the same pattern in every frame: on a static scene it adds no change from
/// frame to frame, and on the real CCTV clip the marks of consecutive frames are nearly
/// identical (only the mask follows the moving people).
#[test]
fn no_flicker() {
    let e = embedder();
    let mut scratch = e.new_scratch();
    let f = frames("vtest-4s.avi", 1).remove(0);
    let (mut a, mut b) = (f.clone(), f.clone());
    e.embed(&mut a, &mut scratch);
    e.embed(&mut b, &mut scratch);
    assert_eq!(a.y, b.y, "identical frames must be marked identically");

    let fs = frames("vtest-4s.avi", 6);
    let marks: Vec<Vec<f64>> = fs
        .iter()
        .map(|f| {
            let mut m = f.clone();
            e.embed(&mut m, &mut scratch);
            m.y.rows()
                .zip(f.y.rows())
                .flat_map(|(r, o)| {
                    r.iter().zip(o).map(|(&x, &y)| f64::from(x) - f64::from(y)).collect::<Vec<_>>()
                })
                .collect()
        })
        .collect();
    for pair in marks.windows(2) {
        let dot: f64 = pair[0].iter().zip(&pair[1]).map(|(a, b)| a * b).sum();
        let n0: f64 = pair[0].iter().map(|a| a * a).sum();
        let n1: f64 = pair[1].iter().map(|a| a * a).sum();
        let corr = dot / (n0 * n1).sqrt();
        assert!(corr > 0.9, "consecutive marks correlate only {corr:.3}");
    }
}

#[test]
fn extremes_clip_without_wrapping() {
    // Left half black, right half white, a textured band in the middle.
    let mut y = Plane::new(256, 128, 0);
    for (r, row) in y.rows_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = match c {
                0..=95 => 0,
                96..=159 => ((r * 31 + c * 17) % 256) as u8,
                _ => 255,
            };
        }
    }
    let f = Frame::from_luma(y);
    let mut m = f.clone();
    let e = embedder();
    e.embed(&mut m, &mut e.new_scratch());
    for (ro, rm) in f.y.rows().zip(m.y.rows()) {
        for (c, (&o, &v)) in ro.iter().zip(rm).enumerate() {
            if c < 88 {
                assert!(v <= 3, "black became {v}");
            }
            if c >= 168 {
                assert!(v >= 252, "white became {v}");
            }
            assert!((i32::from(o) - i32::from(v)).abs() <= 40, "jump from {o} to {v}");
        }
    }
}

#[test]
fn odd_and_tiny_frames_do_not_panic() {
    let e = embedder();
    let mut scratch = e.new_scratch();
    for (w, h) in [(176, 144), (720, 405), (721, 577), (7, 5), (1, 1), (9, 8), (1919, 1081)] {
        let mut f = Frame::new(w, h);
        for (r, row) in f.y.rows_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = ((r * 13 + c * 7) % 200) as u8 + 20;
            }
        }
        let orig = f.clone();
        e.embed(&mut f, &mut scratch);
        assert!(psnr(&orig.y, &f.y) >= 45.0, "{w}x{h}");
    }
}

fn moving_embedder() -> Embedder {
    embedder_with(Scheme::default())
}

#[test]
fn moved_mark_agrees_with_scalar_reference() {
    // v2 scales the moved tile by the grid's blocks' mask, v3 and v4 by its own blocks'.
    for scheme in [
        Scheme::FollowsMotion,
        Scheme::FollowsMotionExactly,
        Scheme::FollowsPans,
        Scheme::FollowsPansEvenBands,
    ] {
        let e = embedder_with(scheme);
        let mut scratch = e.new_scratch();
        for clip in CLIPS {
            let f = frames(clip, 1).remove(0);
            for motion in [(13.25, -7.5), (-200.6, 31.1), (64.0, 0.0)] {
                let (mut fast, mut slow) = (f.clone(), f.clone());
                let a = e.embed_at(&mut fast, motion, &mut scratch);
                let b = e.embed_reference_at(&mut slow, motion);
                assert_agree(&format!("{clip} {scheme:?} moved {motion:?}"), &f, (&fast, a), (&slow, b));
            }
        }
    }
}

#[test]
fn a_still_shot_gets_the_fixed_mark() {
    let (fixed, moving) = (embedder(), moving_embedder());
    for clip in CLIPS {
        let f = frames(clip, 1).remove(0);
        let (mut a, mut b) = (f.clone(), f.clone());
        fixed.embed(&mut a, &mut fixed.new_scratch());
        moving.embed_at(&mut b, (0.0, 0.0), &mut moving.new_scratch());
        assert_eq!(a, b, "{clip}");
    }
}

/// A `w` x `h` window of `f`'s luma at (`x0`, `y0`), as a frame.
fn window(f: &Frame, x0: usize, y0: usize, w: usize, h: usize) -> Frame {
    let mut out = Frame::new(w, h);
    for (y, row) in out.y.rows_mut().enumerate() {
        row.copy_from_slice(&f.y.row(y0 + y)[x0..x0 + w]);
    }
    out
}

/// What the embedder added to `f`, in levels.
fn mark_of(e: &Embedder, f: &Frame, motion: (f64, f64)) -> Vec<f64> {
    let mut m = f.clone();
    e.embed_at(&mut m, motion, &mut e.new_scratch());
    m.y.rows()
        .zip(f.y.rows())
        .flat_map(|(a, b)| a.iter().zip(b).map(|(&x, &y)| f64::from(x) - f64::from(y)))
        .collect()
}

#[test]
fn the_mark_moves_with_the_picture() {
    // Two windows of one CCTV frame: in the second, the content of the first has moved by
    // d. The moving mark of the second frame is the first frame's mark moved by d.
    let f = frames("vtest-4s.avi", 1).remove(0);
    let (w, h, x0, y0) = (640, 480, 64, 48);
    let first = window(&f, x0, y0, w, h);
    let (v2, e) = (embedder_with(Scheme::FollowsMotion), moving_embedder());
    let (mark0, v2_mark0) = (mark_of(&e, &first, (0.0, 0.0)), mark_of(&v2, &first, (0.0, 0.0)));
    for d in [(16usize, 8usize), (13, 5), (-24i64 as usize, 40)] {
        let (dx, dy) = (d.0 as i64, d.1 as i64);
        let moved = window(&f, (x0 as i64 - dx) as usize, (y0 as i64 - dy) as usize, w, h);
        // Correlation of mark1(p) with mark0(p - d) away from the borders.
        let follows = |mark0: &[f64], mark1: &[f64]| {
            let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
            for y in 48..h - 48 {
                for x in 48..w - 48 {
                    let (a, b) =
                        (mark1[y * w + x], mark0[(y as i64 - dy) as usize * w + (x as i64 - dx) as usize]);
                    ab += a * b;
                    aa += a * a;
                    bb += b * b;
                }
            }
            ab / (aa * bb).sqrt()
        };
        let r = follows(&mark0, &mark_of(&e, &moved, (dx as f64, dy as f64)));
        let r_v2 = follows(&v2_mark0, &mark_of(&v2, &moved, (dx as f64, dy as f64)));
        // v3's mask moves with the tile: the same picture under the same blocks, the same
        // mark (up to rounding and the content that came into view).
        assert!(r > 0.98, "moved by {dx},{dy}: correlation {r:.4} with the first frame's mark moved along");
        // v2's mask stays on the grid: unless the move is whole blocks, each block's
        // strength changes as the picture moves under it (0.924 against 0.997 measured).
        assert!(r_v2 > 0.9 && r_v2 <= r, "moved by {dx},{dy}: v2 correlation {r_v2:.4}");
        if dx % 8 != 0 || dy % 8 != 0 {
            assert!(r_v2 < r - 0.03, "moved by {dx},{dy}: v2 {r_v2:.4}, v3 {r:.4}");
        }
        // The fixed mark stays on the screen: it is the first frame's mark unmoved.
        let fixed0 = mark_of(&embedder(), &first, (0.0, 0.0));
        let fixed1 = mark_of(&embedder(), &moved, (dx as f64, dy as f64));
        let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
        for y in 48..h - 48 {
            for (a, b) in fixed1[y * w + 48..y * w + w - 48].iter().zip(&fixed0[y * w + 48..y * w + w - 48]) {
                ab += a * b;
                aa += a * a;
                bb += b * b;
            }
        }
        let r = ab / (aa * bb).sqrt();
        // (Below 1 because the mask follows the content; chance is about 0.)
        assert!(r > 0.5, "moved by {dx},{dy}: the fixed mark moved ({r:.3})");
    }
}
