//! The blind search's parts against their references and planted marks.

use super::frames::{resize_into, whiten_into, FrameScratch, WHITE_CLIP};
use super::lattice::{lattice_shapes, shape_map, ONE_PARAMETER_PEAKS};
use super::pilot::{surface_peak, whiten_spectrum, Mirror, Pilot, PilotSearch, Shape, WHOLE_PICTURE};
use super::sampling::{
    fold, fold_resampled, fold_splatted, resample, resample_reference, AxisFold, GridMap, Linear,
};
use super::views::{best_block_rectangle, equalised, pip_windows, Analysis};
use super::*;
use crate::fft2d::Fft2d;
use crate::register;
use crate::test_support::xorshift;
use rustfft::num_complex::Complex32;

/// The straightforward whitening (fresh buffers, sorting median) the reused path must
/// reproduce exactly with `clip` = [`WHITE_CLIP`].
fn whiten_reference(img: &Gray, clip: f32) -> Gray {
    let med = img.median3_reference();
    let (w, h) = (img.w, img.h);
    let r: Vec<f32> = img.data.iter().zip(&med.data).map(|(a, b)| a - b).collect();
    let mut out = Gray::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let (x0, x1, y0, y1) = (x.saturating_sub(4), (x + 5).min(w), y.saturating_sub(4), (y + 5).min(h));
            let mut s = 0f64;
            for yy in y0..y1 {
                for xx in x0..x1 {
                    s += f64::from(r[yy * w + xx]).powi(2);
                }
            }
            let rms = (s / ((x1 - x0) * (y1 - y0)) as f64).sqrt() as f32;
            out.data[y * w + x] = (r[y * w + x] / (rms + 1.0)).clamp(-clip, clip);
        }
    }
    out
}

fn plane(w: usize, h: usize, seed: u32) -> tracemark_core::Plane {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let data = (0..w * h)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Smooth ramps plus noise: like pictures, not like white noise.
            ((i % w) as u32 * 2 + (i / w) as u32 + (x >> 28)) as u8
        })
        .collect();
    tracemark_core::Plane::from_vec(data, w, h, w).expect("sizes match")
}

/// A textured test picture (smooth ramps plus noise).
fn gray(w: usize, h: usize, seed: u32) -> Gray {
    Gray::from_plane(&plane(w, h, seed), w, h)
}

fn rotation(deg: f64, stretch: f64) -> Linear {
    let (s, c) = deg.to_radians().sin_cos();
    let (a, b) = (stretch.sqrt(), 1.0 / stretch.sqrt());
    Linear([[c * a, -s * b], [s * a, c * b]])
}

/// A tile of noise repeated under `shape` (rotation, stretch, scale), plus fresh noise
/// `noise` times as strong: what an accumulated residual of a rotated copy looks like.
fn tiled(w: usize, h: usize, shape: (f64, f64, f64), noise: f32) -> Gray {
    let mut rand = xorshift(0x9E37_79B9);
    let tile: Vec<f32> = (0..TILE_PX * TILE_PX).map(|_| rand()).collect();
    let m = shape_map(shape);
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    let mut g = Gray::new(w, h);
    for y in 0..h {
        for x in 0..w {
            // Mark coordinates of this pixel: the inverse of the map.
            let (px, py) = (x as f64, y as f64);
            let u = (m[1][1] * px - m[0][1] * py) / det;
            let v = (-m[1][0] * px + m[0][0] * py) / det;
            let (iu, iv) = (
                u.floor().rem_euclid(TILE_PX as f64) as usize,
                v.floor().rem_euclid(TILE_PX as f64) as usize,
            );
            g.data[y * w + x] = tile[iv * TILE_PX + iu] + noise * rand();
        }
    }
    g
}

#[test]
fn lattice_sums_find_a_rotated_zoomed_tile_under_noise() {
    // 1.5 degrees and 8% zoom under noise four times the tile's: the tilt-zoom a TV
    // channel does, on a picture the size of an SD copy.
    let acc = tiled(720, 404, (1.5, 1.0, 1.08), 4.0);
    let shapes = lattice_shapes(&acc);
    let described = |shapes: &[Shape]| -> Vec<(f64, f64, Option<f64>)> {
        shapes
            .iter()
            .map(|l| (l.map.rotation_and_stretch().0, l.map.rotation_and_stretch().1, l.lattice_scale))
            .collect()
    };
    // The right shape, seen at its own scale (the key's search looks only near it).
    let found = described(&shapes).into_iter().find(|&(r, s, scale)| {
        (r - 1.5).abs() < 0.25
            && (s - 1.0).abs() < 0.01
            && scale.is_some_and(|k| (k / 1.08 - 1.0).abs() < 0.01)
    });
    assert!(found.is_some(), "shapes found: {:?}", described(&shapes));
    // The picture transposed holds the lattice transposed: a turn of -1.5 degrees, which
    // the transposed shapes the quarter-turn search uses hold.
    let transposed: Vec<Shape> = shapes.iter().map(|s| s.transposed()).collect();
    let turned = described(&transposed).into_iter().find(|&(r, s, scale)| {
        (r + 1.5).abs() < 0.25
            && (s - 1.0).abs() < 0.01
            && scale.is_some_and(|k| (k / 1.08 - 1.0).abs() < 0.01)
    });
    assert!(turned.is_some(), "transposed: {:?}", described(&transposed));
    let own = described(&lattice_shapes(&acc.transposed()));
    assert!(own.iter().any(|&(r, s, _)| (r + 1.5).abs() < 0.25 && (s - 1.0).abs() < 0.01), "{own:?}");
    // Plain noise: no single peak stands out, so only the lattice sums' shapes are tried
    // (the general one and the best few of each one-parameter sum).
    let noise = tiled(720, 404, (0.0, 1.0, 1.0), 1e4);
    let from_noise = lattice_shapes(&noise);
    assert!(from_noise.len() <= 1 + 2 * ONE_PARAMETER_PEAKS, "{:?}", described(&from_noise));
}

/// The fast resampler and the fused fold against the per-pixel sampler, bit for bit.
#[test]
fn resampling_and_the_fused_fold_match_the_per_pixel_sampler() {
    let maps = [
        Linear::IDENTITY,
        Linear::IDENTITY.scaled(0.5),
        Linear::IDENTITY.scaled(1.37),
        // Without rotation: the separable fold.
        rotation(0.0, 1.25).scaled(0.87),
        rotation(0.0, 0.8).mirrored(Mirror::ALL[3]).scaled(1.02),
        Linear::IDENTITY.mirrored(Mirror::ALL[1]).scaled(2.3),
        rotation(4.0, 1.0).scaled(0.93),
        rotation(-11.0, 1.3).scaled(1.08),
        rotation(2.0, 0.8).mirrored(Mirror::ALL[1]).scaled(0.71),
    ];
    for (w, h, seed) in [(300, 170, 7), (129, 257, 8), (1, 40, 9), (40, 1, 10)] {
        let img = gray(w, h, seed);
        // One scratch for every map, as a search reuses it.
        let mut axis = AxisFold::default();
        for map in maps {
            let mut tile = vec![1f32; TILE_PX * TILE_PX];
            let size = fold_resampled(&img, map, &mut tile, &mut axis);
            let resampled = resample_reference(&img, map, (0.0, 0.0));
            assert_eq!(size, (resampled.w, resampled.h), "{w}x{h} {map:?}");
            assert_eq!(tile, fold(&resampled), "{w}x{h} {map:?}");
            for offset in [(0.0, 0.0), (3.25, 7.5)] {
                let (fast, slow) = (resample(&img, map, offset), resample_reference(&img, map, offset));
                assert_eq!((fast.w, fast.h), (slow.w, slow.h), "{w}x{h} {map:?}");
                let same = fast.data.iter().zip(&slow.data).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{w}x{h} {map:?} {offset:?}");
            }
        }
    }
}

#[test]
fn mirrors_on_the_spectrum_match_mirrors_of_the_folded_tile() {
    let key = MasterKey::from_bytes([5; 32]);
    let pilot = Pilot::new(&key);
    let mut search = PilotSearch::new(&pilot);
    // A picture that holds the pilot tile (mirrored, shifted) under texture.
    let (w, h) = (3 * TILE_PX + 17, 2 * TILE_PX + 5);
    let mut img = gray(w, h, 11);
    for y in 0..h {
        for x in 0..w {
            let (tx, ty) = ((w - x + 37) % TILE_PX, (y + 90) % TILE_PX);
            img.data[y * w + x] = 0.05 * img.data[y * w + x] + 4.0 * pilot.tile[ty * TILE_PX + tx];
        }
    }
    let map = Linear::IDENTITY;
    assert!(search.fold_spectrum(&img, map));
    let folded = fold(&resample(&img, map, (0.0, 0.0)));
    let mut best = (f64::MIN, Mirror::ALL[0]);
    for m in Mirror::ALL {
        let mut reflected = vec![0f32; TILE_PX * TILE_PX];
        m.reflect_folded(&whitened(&folded), &mut reflected);
        let (mut ba, mut bb, mut surface) = (Vec::new(), Vec::new(), vec![0f32; TILE_PX * TILE_PX]);
        let mut fft = Fft2d::new(TILE_PX, TILE_PX);
        crate::fft2d::cross_correlate(
            &mut fft,
            &reflected,
            &pilot.tile,
            false,
            &mut ba,
            &mut bb,
            &mut surface,
        );
        let want = surface_peak(&surface);
        let got = search.correlate_mirrored(m);
        // Two mirrors through one inverse transform give the same two surfaces.
        let partner = Mirror::ALL[(Mirror::ALL.iter().position(|&x| x == m).unwrap() + 2) % 4];
        let (paired, other) = search.correlate_mirror_pair(m, partner);
        let alone = search.correlate_mirrored(partner);
        assert_eq!((paired.1, other.1), (got.1, alone.1), "{m:?} with {partner:?}");
        assert!((paired.0 - got.0).abs() < 1e-3 * got.0.abs().max(1.0), "{m:?}: {} vs {}", paired.0, got.0);
        assert!(
            (other.0 - alone.0).abs() < 1e-3 * alone.0.abs().max(1.0),
            "{partner:?}: {} vs {}",
            other.0,
            alone.0
        );
        assert_eq!(got.1, want.1, "{m:?}");
        assert!((got.0 - want.0).abs() < 1e-3 * want.0.abs().max(1.0), "{m:?}: {} vs {}", got.0, want.0);
        if want.0 > best.0 {
            best = (want.0, m);
        }
    }
    // The planted mirror stands out, and the search names it.
    assert!(best.0 > 10.0, "planted pilot z {}", best.0);
    assert_eq!(search.best_mirror(&img, map, &Mirror::ALL, None).map(|b| b.1), Some(best.1));
    assert_eq!(best.1, Mirror { horizontal: true, vertical: false });
}

/// `tile` whitened as the search whitens a fold ([`whiten_spectrum`]), back in pixels.
fn whitened(tile: &[f32]) -> Vec<f32> {
    let mut spectrum: Vec<Complex32> = tile.iter().map(|&v| Complex32::new(v, 0.0)).collect();
    let mut fft = Fft2d::new(TILE_PX, TILE_PX);
    fft.forward(&mut spectrum);
    whiten_spectrum(&mut spectrum, &mut vec![0.0; TILE_PX * TILE_PX]);
    fft.inverse(&mut spectrum);
    spectrum.iter().map(|c| c.re / (TILE_PX * TILE_PX) as f32).collect()
}

#[test]
fn whitening_weighs_every_frequency_alike_and_keeps_the_phases() {
    let mut spectrum: Vec<Complex32> =
        (0..64).map(|k| Complex32::from_polar(1.0 + k as f32 * k as f32, 0.1 * k as f32)).collect();
    let before = spectrum.clone();
    whiten_spectrum(&mut spectrum, &mut [0.0; 64]);
    let mean = before.iter().map(|c| c.norm()).sum::<f32>() / 64.0;
    for (a, b) in before.iter().zip(&spectrum) {
        // Magnitude m becomes m / (m + a tenth of the mean): near 1 for every frequency
        // that holds anything, whatever its power.
        let want = a.norm() / (a.norm() + 0.1 * mean);
        assert!((b.norm() - want).abs() < 1e-5, "{} vs {want}", b.norm());
        assert!((b.arg() - a.arg()).abs() < 1e-5);
    }
    // Nothing to whiten: left alone, no NaN.
    let mut zero = vec![Complex32::default(); 16];
    whiten_spectrum(&mut zero, &mut [0.0; 16]);
    assert!(zero.iter().all(|c| *c == Complex32::default()));
}

/// A pilot under noise whose power is all in a few frequencies (what pictures and
/// encoders leave in a residual) stands out more once the fold is whitened.
#[test]
fn whitening_lifts_a_pilot_out_of_coloured_noise() {
    let key = MasterKey::from_bytes([9; 32]);
    let pilot = Pilot::new(&key);
    let (w, h) = (2 * TILE_PX, 2 * TILE_PX);
    let texture = gray(w, h, 5);
    let rms = (pilot.tile.iter().map(|v| v * v).sum::<f32>() / pilot.tile.len() as f32).sqrt();
    let mut img = Gray::new(w, h);
    for y in 0..h {
        for x in 0..w {
            // Loud stripes at a handful of frequencies, plus the texture and the pilot.
            let stripes =
                40.0 * ((x as f32 * 0.21).sin() + (y as f32 * 0.37).sin() + ((x + y) as f32 * 0.9).cos());
            let t = pilot.tile[(y % TILE_PX) * TILE_PX + x % TILE_PX];
            img.data[y * w + x] = stripes + 0.2 * texture.data[y * w + x] + t / rms;
        }
    }
    let folded = fold(&resample(&img, Linear::IDENTITY, (0.0, 0.0)));
    let plain = {
        let (mut ba, mut bb, mut surface) = (Vec::new(), Vec::new(), vec![0f32; TILE_PX * TILE_PX]);
        let mut fft = Fft2d::new(TILE_PX, TILE_PX);
        crate::fft2d::cross_correlate(&mut fft, &folded, &pilot.tile, false, &mut ba, &mut bb, &mut surface);
        surface_peak(&surface)
    };
    let mut search = PilotSearch::new(&pilot);
    let white = search.peak(&img, Linear::IDENTITY).expect("large enough");
    assert_eq!(white.1, (0, 0));
    assert!(white.0 > 1.5 * plain.0.max(1.0), "whitened z {} vs plain {:?}", white.0, plain);
}

/// The fused statistics of two surfaces at once give what [`surface_peak`] gives on each
/// surface written out, bit for bit (the null calibration's slices add up only if the
/// search is the same arithmetic).
#[test]
fn paired_surface_peaks_are_surface_peak_bit_for_bit() {
    let key = MasterKey::from_bytes([7; 32]);
    let pilot = Pilot::new(&key);
    let mut search = PilotSearch::new(&pilot);
    let img = gray(2 * TILE_PX + 9, TILE_PX + 40, 3);
    assert!(search.fold_spectrum(&img, Linear::IDENTITY));
    let n = TILE_PX;
    for pair in Mirror::ALL.chunks_exact(2) {
        let (a, b) = (pair[0], pair[1]);
        search.mirrored_product(a, false);
        search.mirrored_product(b, true);
        let mut product = search.product.clone();
        Fft2d::new(n, n).inverse(&mut product);
        let scale = 1.0 / (n * n) as f32;
        let re: Vec<f32> = product.iter().map(|v| v.re * scale).collect();
        let im: Vec<f32> = product.iter().map(|v| v.im * scale).collect();
        let (want_a, want_b) = (surface_peak(&re), surface_peak(&im));
        let (got_a, got_b) = search.correlate_mirror_pair(a, b);
        assert_eq!((got_a.0.to_bits(), got_a.1), (want_a.0.to_bits(), want_a.1), "{a:?}");
        assert_eq!((got_b.0.to_bits(), got_b.1), (want_b.0.to_bits(), want_b.1), "{b:?}");
    }
}

/// A picture holding the pilot's tile shrunk by `scale` (shifted by `shift` tile pixels)
/// under texture.
fn shrunk_pilot(pilot: &Pilot, (w, h): (usize, usize), scale: f64, shift: (f64, f64)) -> Gray {
    let mut img = gray(w, h, 12);
    let map = Linear::IDENTITY.scaled(scale);
    let g = GridMap::new(&img, map, (0.0, 0.0));
    let n = TILE_PX as f64;
    for y in 0..h {
        for x in 0..w {
            // The grid position of this pixel, then the tile pixel it shows.
            let u = (x as f64 - g.ic.0) / scale - g.c.0 - shift.0;
            let v = (y as f64 - g.ic.1) / scale - g.c.1 - shift.1;
            let (tu, tv) = (u.rem_euclid(n) as usize, v.rem_euclid(n) as usize);
            img.data[y * w + x] = 0.05 * img.data[y * w + x] + 4.0 * pilot.tile[tv * TILE_PX + tu];
        }
    }
    img
}

#[test]
fn splatting_finds_the_pilot_where_resampling_does() {
    let pilot = Pilot::new(&MasterKey::from_bytes([7; 32]));
    for (scale, shift) in [(0.5, (30.0, 77.0)), (0.37, (101.0, 5.0)), (1.3, (64.0, 12.0))] {
        let img = shrunk_pilot(&pilot, (300, 200), scale, shift);
        let map = Linear::IDENTITY.scaled(scale);
        let (mut resampled, mut splatted) = (PilotSearch::new(&pilot), PilotSearch::splatting(&pilot));
        let (a, b) = (resampled.peak(&img, map).unwrap(), splatted.peak(&img, map).unwrap());
        let d = |p: usize, q: usize| {
            (p as i64 - q as i64)
                .rem_euclid(TILE_PX as i64)
                .min((q as i64 - p as i64).rem_euclid(TILE_PX as i64))
        };
        assert!(d(a.1 .0, b.1 .0) <= 1 && d(a.1 .1, b.1 .1) <= 1, "scale {scale}: {a:?} vs {b:?}");
        assert!(b.0 > 8.0, "scale {scale}: splatted pilot z {}", b.0);
        // Every picture pixel lands on the tile once, whole.
        let mut tile = vec![0f32; TILE_PX * TILE_PX];
        fold_splatted(&img, map, &mut tile);
        let (total, want) = (
            tile.iter().map(|&v| f64::from(v)).sum::<f64>(),
            img.data.iter().map(|&v| f64::from(v)).sum::<f64>(),
        );
        assert!((total - want).abs() < 1e-3 * want.abs().max(1.0), "scale {scale}: {total} vs {want}");
    }
}

#[test]
fn the_best_block_rectangle_is_the_planted_one() {
    // Noise blocks, and a 12x9 patch of blocks that all agree with the pilot.
    let (bx, by) = (60, 40);
    let mut rand32 = xorshift(0x2545_F491);
    let mut rand = move || f64::from(rand32());
    let mut blocks: Vec<[f64; 2]> = (0..bx * by).map(|_| [rand(), 1.0 / 12.0]).collect();
    for j in 20..29 {
        for i in 33..45 {
            blocks[j * bx + i][0] += 0.3;
        }
    }
    let (r, tried) = best_block_rectangle(&blocks, bx, by).unwrap();
    assert!(tried > 1000, "{tried}");
    let err = [r[0] as i64 - 33, r[1] as i64 - 20, r[2] as i64 - 45, r[3] as i64 - 29];
    assert!(err.iter().all(|e| e.abs() <= 2), "{r:?}");
    // Too small a picture for a window: no rectangle.
    assert!(best_block_rectangle(&blocks[..7 * 7], 7, 7).is_none());
}

#[test]
fn windows_cover_the_picture_and_hold_any_quarter_inset_mostly() {
    let view = Analysis {
        factor: (1.0, 1.0),
        acc: Gray::new(1280, 720),
        host: Gray::new(1280, 720),
        sync: Gray::new(1280, 720),
        origin: (0, 0),
    };
    let windows = pip_windows(&view);
    assert_eq!(windows.len(), 25);
    // An inset a quarter of the picture wide and high, anywhere: some window holds at
    // least two thirds of it on each axis.
    for (x, y) in [(0, 0), (955, 30), (500, 260), (960, 540), (130, 400)] {
        let (iw, ih) = (320usize, 180usize);
        let held = windows
            .iter()
            .map(|w| {
                let ox = (x + iw).min(w.origin.0 + w.acc.w).saturating_sub(x.max(w.origin.0));
                let oy = (y + ih).min(w.origin.1 + w.acc.h).saturating_sub(y.max(w.origin.1));
                (ox as f64 / iw as f64).min(oy as f64 / ih as f64)
            })
            .fold(0f64, f64::max);
        assert!(held >= 2.0 / 3.0, "inset at {x},{y}: {held}");
    }
}

#[test]
fn reused_buffers_give_what_fresh_ones_give() {
    let mut s = FrameScratch::default();
    // Shrinking, same size, growing (a small picture shown on a larger grid), and back.
    for (pw, ph, w, h, seed) in [
        (96, 64, 48, 32, 1),
        (96, 64, 48, 32, 2),
        (40, 30, 40, 30, 3),
        (40, 30, 64, 48, 4),
        (96, 64, 48, 32, 5),
        // Narrower than two half-windows, and just wider.
        (12, 10, 6, 5, 6),
        (18, 10, 9, 5, 7),
    ] {
        let p = plane(pw, ph, seed);
        resize_into(&p, w, h, &mut s);
        let (dw, dh) = (w.min(pw), h.min(ph));
        let mut want = Gray::from_plane(&p, dw, dh);
        if (dw, dh) != (w, h) {
            want = register::scaled(&want, w as f64 / dw as f64, h as f64 / dh as f64);
        }
        assert_eq!(s.picture.data, want.data, "{pw}x{ph} -> {w}x{h}");
        let picture = std::mem::take(&mut s.picture);
        let mut white = std::mem::take(&mut s.white);
        whiten_into(&picture, &mut s, &mut white);
        let reference = whiten_reference(&picture, WHITE_CLIP);
        let worst = white.data.iter().zip(&reference.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // The integral image and the direct window sums round differently in the last bits.
        assert!(worst < 1e-4, "{pw}x{ph} -> {w}x{h}: {worst}");
        (s.picture, s.white) = (picture, white);
    }
}

#[test]
fn clipping_keeps_a_faint_mark_from_drowning_in_a_still_pictures_edges() {
    // A still picture of hard-edged patches, a faint sign-random mark on it, and fresh codec
    // noise each frame: the whitened frames summed, clipped and not.
    let (w, h) = (192, 128);
    let mut rand = xorshift(0x2545_F491);
    let levels: Vec<f32> = (0..64).map(|_| 128.0 + 200.0 * rand()).collect();
    let mark: Vec<f32> = (0..w * h).map(|_| if rand() > 0.0 { 1.0 } else { -1.0 }).collect();
    let (mut clipped, mut plain) = (vec![0f32; w * h], vec![0f32; w * h]);
    let mut s = FrameScratch::default();
    let mut white = Gray::new(w, h);
    for _ in 0..8 {
        let mut frame = Gray::new(w, h);
        for (p, v) in frame.data.iter_mut().enumerate() {
            let (px, py) = (p % w, p / w);
            *v = levels[(py / 21) * 8 + (px * 7 + py) / 29 % 8] + mark[p] + 2.0 * rand();
        }
        whiten_into(&frame, &mut s, &mut white);
        let unclipped = whiten_reference(&frame, f32::INFINITY);
        for ((c, u), (a, b)) in
            clipped.iter_mut().zip(plain.iter_mut()).zip(white.data.iter().zip(&unclipped.data))
        {
            *c += a;
            *u += b;
        }
    }
    let corr = |acc: &[f32]| {
        let dot: f64 = acc.iter().zip(&mark).map(|(&a, &m)| f64::from(a * m)).sum();
        let n: f64 = acc.iter().map(|&a| f64::from(a * a)).sum();
        dot / (n * mark.len() as f64).sqrt()
    };
    assert!(white.data.iter().all(|v| v.abs() <= WHITE_CLIP));
    let (c, u) = (corr(&clipped), corr(&plain));
    assert!(c > 1.1 * u, "mark correlation clipped {c:.3}, unclipped {u:.3}");
}

#[test]
fn distinct_peaks_skip_a_peak_seen_again_from_the_next_scale() {
    let (plain, flipped) = (Mirror::ALL[0], Mirror::ALL[1]);
    let ranked = [
        (6.0, (0, 0, 0.652), flipped),
        (5.9, (0, 0, 0.659), flipped), // the same peak, one coarse step up
        (5.5, (0, 0, 0.659), plain),   // another mirror: another peak
        (5.2, (0, 0, 1.0), plain),
        (5.1, (0, 1, 1.0), plain), // another shape
        (5.0, (0, 0, 0.666), flipped),
    ];
    let peaks = distinct_peaks(&ranked, 3, 0.01);
    let hyps: Vec<_> = peaks.iter().map(|p| (p.1, p.2)).collect();
    assert_eq!(hyps, [((0, 0, 0.652), flipped), ((0, 0, 0.659), plain), ((0, 0, 1.0), plain)]);
    // Two coarse steps away is a peak of its own; fewer hypotheses than asked for is fine.
    let peaks = distinct_peaks(&ranked, 10, 0.01);
    assert_eq!(peaks.len(), 5);
    assert_eq!((peaks[4].1, peaks[4].2), ((0, 0, 0.666), flipped));
    // A hypothesis too small to search is never read.
    assert!(distinct_peaks(&[(f64::MIN, (0, 0, 1.0), plain)], 3, 0.01).is_empty());
}

#[test]
fn equalising_scales_every_block_to_unit_noise() {
    // Left half loud (a still, textured background summed frame after frame), right half
    // quiet, the bottom rows uncovered (a letterbox bar).
    let (w, h) = (128, 64);
    let noise = tiled(w, h, (0.0, 1.0, 1.0), 0.0);
    let mut acc = Gray::new(w, h);
    for y in 0..48 {
        for x in 0..w {
            let gain = if x < 64 { 50.0 } else { 0.5 };
            acc.data[y * w + x] = gain * noise.data[y * w + x];
        }
    }
    let eq = equalised(&acc);
    let rms = |x0: usize, x1: usize, y0: usize, y1: usize| {
        let mut s = 0f64;
        for y in y0..y1 {
            for x in x0..x1 {
                s += f64::from(eq.data[y * w + x]).powi(2);
            }
        }
        (s / ((x1 - x0) * (y1 - y0)) as f64).sqrt()
    };
    // Away from the edges between them both halves come out at about unit noise.
    let (left, right) = (rms(8, 48, 8, 32), rms(80, 120, 8, 32));
    assert!((left - 1.0).abs() < 0.3 && (right - 1.0).abs() < 0.3, "{left} {right}");
    // Uncovered blocks stay zero; the sums' signs are kept.
    assert!(eq.data[56 * w..].iter().all(|&v| v == 0.0));
    assert!(eq.data.iter().zip(&acc.data).all(|(e, a)| e * a >= 0.0));
    // Too small for a block: the sums as they are.
    let tiny = gray(7, 5, 1);
    assert_eq!(equalised(&tiny), tiny);
}

/// A search for a candidate's whole mark finds a faint mark about twice as clearly as the
/// pilot alone (four times the energy), and another export's whole mark no more clearly
/// than the pilot (only the pilot is shared).
#[test]
fn a_whole_mark_stands_out_twice_as_far_as_its_pilot() {
    let key = MasterKey::from_bytes([4; 32]);
    let detector = Detector::new(&key);
    let codeword = |id| detector.codebook().codeword(tracemark_core::MarkId(id));
    let (mine, other) = (codeword(0x1234_5678_9abc_def0), codeword(0x0fed_cba9_8765_4321));
    let mark = super::pilot::mark_tile(&key, &mine);
    let rms = (mark.iter().map(|v| v * v).sum::<f32>() / mark.len() as f32).sqrt();
    let (w, h) = (3 * TILE_PX, 2 * TILE_PX);
    let noise = gray(w, h, 8);
    let noise_rms = (noise.data.iter().map(|v| v * v).sum::<f32>() / noise.data.len() as f32).sqrt();
    let mut img = Gray::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let m = mark[(y % TILE_PX) * TILE_PX + x % TILE_PX] / rms;
            img.data[y * w + x] = 0.1 * m + noise.data[y * w + x] / noise_rms;
        }
    }
    let peak =
        |template: &Pilot| PilotSearch::new(template).peak(&img, Linear::IDENTITY).expect("large enough");
    let pilot = peak(&Pilot::new(&key));
    let whole = peak(&Pilot::whole_mark(&key, &mine));
    let wrong = peak(&Pilot::whole_mark(&key, &other));
    assert_eq!((pilot.1, whole.1), ((0, 0), (0, 0)), "{pilot:?} {whole:?}");
    assert!(whole.0 > 1.6 * pilot.0, "whole mark z {} vs pilot z {}", whole.0, pilot.0);
    assert!(wrong.0 < 0.8 * pilot.0, "another export's whole mark z {} vs pilot z {}", wrong.0, pilot.0);
    assert!(pilot.0 > 4.0, "{pilot:?}");
}

/// One fold correlated with several templates ranks every hypothesis for each template as
/// folding it afresh for that template alone does (the whole-mark stage and the pilot
/// search, which is the one-template case, against a plain per-hypothesis reference),
/// and the planted export's whole mark wins at the planted geometry.
#[test]
fn templates_sharing_a_fold_rank_as_their_own_searches() {
    let key = MasterKey::from_bytes([5; 32]);
    let detector = Detector::new(&key);
    let ids = [0x1234_5678_9abc_def0u64, 0x0fed_cba9_8765_4321, 0x0bad_cafe_0000_0007];
    let codewords: Vec<[i8; 256]> =
        ids.iter().map(|&id| detector.codebook().codeword(tracemark_core::MarkId(id))).collect();
    let mark = super::pilot::mark_tile(&key, &codewords[0]);
    let (w, h) = (3 * TILE_PX, 2 * TILE_PX);
    let noise = gray(w, h, 9);
    let mut sync = Gray::new(w, h);
    for y in 0..h {
        for x in 0..w {
            sync.data[y * w + x] =
                0.05 * mark[(y % TILE_PX) * TILE_PX + x % TILE_PX] + noise.data[y * w + x] / 40.0;
        }
    }
    let view = Analysis { factor: (1.0, 1.0), acc: sync.clone(), host: sync.clone(), sync, origin: (0, 0) };
    let views = [view];
    let shapes =
        vec![vec![Shape::PLAIN, Shape { map: Linear(shape_map((2.0, 1.0, 1.0))), lattice_scale: Some(1.0) }]];
    let hyps: Vec<Hyp> = [0.97, 1.0, 1.02, 1.3].iter().flat_map(|&s| [(0, 0, s), (0, 1, s)]).collect();
    let wholes: Vec<Pilot> = codewords.iter().map(|c| Pilot::whole_mark(&key, c)).collect();
    let each = views::ranked_hypotheses_each(&wholes, &views, &shapes, hyps.clone(), &Mirror::ALL, None);
    assert_eq!(each.len(), wholes.len());
    for (whole, shared) in wholes.iter().zip(&each) {
        // The reference: each hypothesis folded afresh for this template alone, in order.
        let mut own: Vec<(f64, Hyp, Mirror)> = hyps
            .iter()
            .map(|&(vi, si, scale)| {
                let map = shapes[vi][si].map.scaled(scale);
                let (z, m) =
                    PilotSearch::new(whole).best_mirror(&views[vi].sync, map, &Mirror::ALL, None).unwrap();
                (z, (vi, si, scale), m)
            })
            .collect();
        own.sort_by(|a, b| b.0.total_cmp(&a.0));
        let alone = views::ranked_hypotheses(whole, &views, &shapes, hyps.clone(), &Mirror::ALL, None);
        for ranking in [shared, &alone] {
            assert_eq!(ranking.len(), own.len());
            for (a, b) in ranking.iter().zip(&own) {
                assert_eq!((a.0.to_bits(), a.1, a.2), (b.0.to_bits(), b.1, b.2));
            }
        }
    }
    assert_eq!(each[0][0].1, (0, 0, 1.0), "{:?}", each[0][0]);
    assert!(
        each[0][0].0 > each[1][0].0 && each[0][0].0 > each[2][0].0,
        "{:?}",
        each.iter().map(|r| r[0]).collect::<Vec<_>>()
    );
}

/// A search skipped counts the most hypotheses it could have tried, so no lattice shape
/// may be tried at more coarse scales than that bound allows, wherever its lattice was seen;
/// and a shape is tried near its lattice's scale and half of it, the plain shape everywhere.
#[test]
fn a_lattice_shape_is_tried_near_its_scale_within_the_counted_bound() {
    let search = WHOLE_PICTURE;
    let bound = search.most_lattice_scales();
    let all = search.coarse_scales().count();
    assert_eq!(search.coarse_scales_of(&Shape::PLAIN).count(), all);
    let mut most = 0;
    for k in 0..2000 {
        let scale = 0.4 * (1.0005f64).powi(k);
        let shape = Shape { map: Linear::IDENTITY, lattice_scale: Some(scale) };
        let tried: Vec<f64> = search.coarse_scales_of(&shape).collect();
        assert!(tried.len() <= bound, "{scale}: {} scales, bound {bound}", tried.len());
        most = most.max(tried.len());
        for s in &tried {
            let near = [scale, scale / 2.0].iter().any(|c| (s / c).ln().abs() <= 0.025 + 1e-12);
            assert!(near, "{scale}: tried {s}");
        }
        // Inside the searched range, the coarse scale nearest the lattice's is tried.
        if (0.51..1.99).contains(&scale) {
            let nearest = search
                .coarse_scales()
                .min_by(|a, b| (a / scale).ln().abs().total_cmp(&(b / scale).ln().abs()));
            assert!(tried.contains(&nearest.unwrap()), "{scale}");
        }
    }
    assert!(most >= bound - 2 && most < all / 10, "{most} of {all}, bound {bound}");
}
