//! Informed trace: the leaked clip registered against its exported source.
//!
//! Both files are decoded once, at the same time, each on its own thread: thumbnails (to
//! find where the source sits in the leaked picture and in time) and, within the memory
//! budget, every frame at the resolution it is read at. A file is decoded a second time
//! only when the budget runs out or the registration asks for another reading resolution
//! of the leaked clip than the one guessed from the frame sizes (a picture-in-picture, say).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rayon::prelude::*;
use tracemark_core::grid::Grid;
use tracemark_core::layout::Scheme;
use tracemark_core::motion::{displacement_by, Displacements, MotionTracker, TrackedQueue, Tracking};
use tracemark_core::pipeline::ProgressFn;
use tracemark_core::video::{VideoInfo, VideoReader};
use tracemark_core::{Error as CoreError, Frame, MasterKey};

use super::{open, seconds, thumb_size, tick, Registration, SecondStrength, TraceConfig, TraceResult};
use crate::detect::{DetectScratch, Detector, SlotSums};
use crate::homography::Homography;
use crate::image::{Downscaler, Gray};
use crate::register::{self, Geometry, Warp, WarpTaps};
use crate::register_projective;
use crate::verdict::{decide_readings, Candidate, Family};
use crate::{Error, Result};

mod channel;
mod decode;
mod reading;
mod spatial;
mod time_align;

use channel::*;
use decode::*;
use reading::*;
use spatial::*;
use time_align::*;

/// Informed trace: registers the leaked clip against `source` in time and space, subtracts
/// the source, and reads the mark from what is left.
///
/// # Errors
/// [`Error::Video`] when a clip cannot be read, [`Error::NoFrames`],
/// [`Error::Registration`] when the leaked clip does not overlap the source,
/// [`Error::InvalidConfig`], [`Error::Cancelled`] when `progress` breaks.
///
/// ```no_run
/// use tracemark_core::pipeline::no_progress;
/// use tracemark_core::layout::Scheme;
/// use tracemark_core::{MarkId, MasterKey};
/// use tracemark_extract::trace::{trace_informed, TraceConfig};
/// use tracemark_extract::Candidate;
/// let key = MasterKey::load("unit.key".as_ref())?;
/// let exports = [Candidate { mark_id: MarkId(0x9f3a), recipient: "channel-A".into(), scheme: Scheme::default() }];
/// let config = TraceConfig::new().with_threshold(1e-6);
/// let r = trace_informed(&key, "aired.mp4".as_ref(), "cam3.avi".as_ref(), &exports, &config, &mut no_progress)?;
/// println!("{} ({} frames)", r.decision.verdict.as_str(), r.frames_used);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn trace_informed(
    key: &MasterKey,
    leaked: &Path,
    source: &Path,
    candidates: &[Candidate],
    config: &TraceConfig,
    progress: &mut ProgressFn<'_>,
) -> Result<TraceResult> {
    config.validate()?;
    let detector = Detector::new(key);
    let (src_info, leak_info) = (open(source)?.info().clone(), open(leaked)?.info().clone());
    let grid = Grid::for_frame(src_info.width, src_info.height);
    let factor = (src_info.width as f64 / THUMB_WIDTH).max(1.0);
    // The leaked clip is kept at the reading resolution a whole-picture copy would need;
    // registration confirms it (or the leaked file is decoded again).
    let guess = reading_factor(
        leak_info.width as f64 / src_info.width as f64,
        leak_info.height as f64 / src_info.height as f64,
        &grid,
    );
    let leak_size = thumb_size(leak_info.width, leak_info.height, guess);
    let mut leak_frames = leak_info.frames_estimate.unwrap_or(0);
    if config.max_frames > 0 {
        leak_frames = leak_frames.min(config.max_frames as u64);
    }
    let src_frames = src_info.frames_estimate.unwrap_or(0);
    let total = Some(src_frames + 2 * leak_frames);
    let shared = Shared {
        done: AtomicU64::new(0),
        cancel: AtomicBool::new(false),
        budget: AtomicUsize::new(config.memory_budget),
    };
    let (leak, src) = decode_both(
        leaked,
        source,
        factor,
        (leak_size, (grid.work_w, grid.work_h)),
        config.max_frames,
        &super::trackings_for(candidates),
        &shared,
        progress,
        total,
    )?;
    if leak.thumbs.is_empty() || src.thumbs.is_empty() {
        return Err(Error::NoFrames);
    }
    let mut done = shared.done.load(Ordering::Relaxed);
    tick(progress, done, total)?;

    // 1. Geometry from one pair of frames: the leaked middle frame against the source frame
    // at the same time, or else the source frame that looks most like it.
    let mid = leak.thumbs.len() / 2;
    let leak_mid = leak.thumbs[mid].gray();
    let same_time = nearest(&src.times, leak.times[mid]);
    let whole = |a: &Gray, b: &Gray| {
        let g = Geometry { sx: b.w as f64 / a.w as f64, sy: b.h as f64 / a.h as f64, tx: 0.0, ty: 0.0 };
        thumb_match(a, b, &g, 2)
    };
    let look_alike = (0..src.thumbs.len())
        .into_par_iter()
        .map(|a| (whole(&src.thumbs[a].gray(), &leak_mid), a))
        .reduce(|| (f64::NEG_INFINITY, 0), |x, y| if y.0 > x.0 || (y.0 == x.0 && y.1 < x.1) { y } else { x })
        .1;
    // On a panning shot a time offset and a translation explain the picture equally well,
    // but only the true pairing lines up the mark. Both pairings are registered; when they
    // disagree materially both are read and the one whose pilot is stronger is kept (the
    // pilot's probability then counts both; the payload chips played no part in the choice).
    let register_pair = |pair: usize| register_thumbs(&src.thumbs[pair].gray(), &leak_mid);
    let mut pairings: Vec<Homography> = Vec::new();
    let pairs = if look_alike == same_time { vec![same_time] } else { vec![same_time, look_alike] };
    for pair in pairs {
        let Some(reg) = register_pair(pair) else { continue };
        // The map sends source thumbnail corners into the leak: compare maps there.
        let (tw, th) = (src.thumbs[pair].w as f64, src.thumbs[pair].h as f64);
        // A projective map that barely beats the axis-aligned one may be an overfit (on a
        // half-size broadcast copy a skew of 4e-4 cost a fifth of the score): both are read.
        for g in std::iter::once(reg.map).chain(reg.axis_alternative) {
            let differs = |h: &Homography| h.corner_distance(&g, tw, th) > 0.5;
            if pairings.iter().all(differs) {
                pairings.push(g);
            }
        }
    }
    if pairings.is_empty() {
        return Err(Error::Registration("the leaked clip does not overlap the source at any scale".into()));
    }
    // One reading per mark layout in the registry; on a source that never moves the
    // layouts are the same mark, read once.
    let still = src.motion.iter().flatten().all(|&m| m == (0.0, 0.0));
    let mut groups: Vec<(Scheme, Vec<Candidate>)> = Vec::new();
    for c in candidates {
        let scheme = if still { Scheme::Fixed } else { c.scheme.read_as() };
        match groups.iter_mut().find(|g| g.0 == scheme) {
            Some(g) => g.1.push(c.clone()),
            None => groups.push((scheme, vec![c.clone()])),
        }
    }
    if groups.is_empty() {
        groups.push((if still { Scheme::Fixed } else { Scheme::default().read_as() }, Vec::new()));
    }
    let schemes: Vec<Scheme> = groups.iter().map(|g| g.0).collect();
    let ctx = Informed {
        detector: &detector,
        src: &src,
        leak: &leak,
        factor,
        grid,
        source,
        leaked,
        mid,
        schemes: &schemes,
    };
    let total = total.map(|t| t + (pairings.len() as u64 - 1) * leak.thumbs.len() as u64);
    let mut best: Option<Reading> = None;
    for g in &pairings {
        let reading = ctx.read(g, progress, &mut done, total)?;
        if best.as_ref().is_none_or(|b| reading.pilot_z(&detector) > b.pilot_z(&detector)) {
            best = Some(reading);
        }
    }
    let best = best.expect("at least one pairing");
    let strongest = best.strongest(&detector);
    let Reading { sums, per_second, example, geometry, refined_ncc, offset } = best;
    let frames = sums[0].frames;
    if frames == 0 {
        return Err(Error::Registration("no leaked frame could be matched to the source".into()));
    }
    let readings: Vec<(&SlotSums, &[Candidate])> =
        sums.iter().zip(&groups).map(|(s, g)| (s, g.1.as_slice())).collect();
    // Each candidate is scored once; the pilot was maximised over pairings and layouts.
    let family =
        Family { candidates: candidates.len(), sync_hypotheses: (pairings.len() * readings.len()) as f64 };
    let decision = decide_readings(&detector, &readings, family, config.threshold);
    Ok(TraceResult {
        decision,
        informed: true,
        frames_used: frames,
        registration: Registration::Informed {
            geometry: geometry.nearest_geometry(src_info.width as f64, src_info.height as f64),
            homography: geometry,
            mirrored: geometry.is_mirrored(),
            rotation_deg: geometry.rotation_degrees(src_info.width as f64, src_info.height as f64),
            time_offset_s: offset,
            ncc: refined_ncc.unwrap_or(0.0),
        },
        threshold: config.threshold,
        per_second: per_second
            .iter()
            .map(|(t, s)| SecondStrength { t: *t, pilot_z: detector.pilot_z(&s[strongest]) })
            .collect(),
        example_frames: example,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view_of(src: &Gray, leak_size: (usize, usize), g: &Geometry) -> (Gray, WarpTaps) {
        let view = LeakView::new((src.w, src.h), leak_size, g);
        let seen = seen_through(&view, src);
        (seen, view.taps)
    }

    fn seen_through(view: &LeakView, src: &Gray) -> Gray {
        let (mut between, mut on_leak, mut seen) =
            (vec![0f32; src.h * view.size.0], Gray::new(view.size.0, view.size.1), Gray::new(src.w, src.h));
        view.apply(src, &mut between, &mut on_leak, &mut seen);
        seen
    }

    fn checkerboard(w: usize, h: usize) -> Gray {
        let mut checker = Gray::new(w, h);
        for (n, v) in checker.data.iter_mut().enumerate() {
            *v = if (n % w + n / w) % 2 == 0 { 100.0 } else { 140.0 };
        }
        checker
    }

    /// A picture with detail at several scales: bilinear value noise on lattices of 24, 9
    /// and 4 pixels, from a fixed seed.
    fn scene(w: usize, h: usize) -> Gray {
        let mut rand = crate::test_support::xorshift(0x2545_f491);
        let mut next = move || rand() + 0.5;
        let mut g = Gray::new(w, h);
        for (cell, amp) in [(24usize, 80.0f32), (9, 40.0), (4, 15.0)] {
            let (cw, ch) = (w / cell + 2, h / cell + 2);
            let lattice: Vec<f32> = (0..cw * ch).map(|_| next() * amp).collect();
            for y in 0..h {
                for x in 0..w {
                    let (fx, fy) = (x as f32 / cell as f32, y as f32 / cell as f32);
                    let (i, j) = (fx as usize, fy as usize);
                    let (ax, ay) = (fx - i as f32, fy - j as f32);
                    let at = |i: usize, j: usize| lattice[j * cw + i];
                    g.data[y * w + x] += (1.0 - ay) * ((1.0 - ax) * at(i, j) + ax * at(i + 1, j))
                        + ay * ((1.0 - ax) * at(i, j + 1) + ax * at(i + 1, j + 1));
                }
            }
        }
        g
    }

    #[test]
    fn a_projective_map_won_by_a_hair_keeps_the_axis_map_as_an_alternative() {
        use crate::register_projective::tests::render;
        let src = scene(128, 72);
        // A copy scaled and shifted, with grain: whatever map wins, an axis-aligned one is
        // read.
        let g = Geometry { sx: 0.9, sy: 0.9, tx: 4.0, ty: 3.0 };
        let mut copy = render(&src, &Homography::from_geometry(&g), (128, 72), 16.0);
        for (n, v) in copy.data.iter_mut().enumerate() {
            *v += ((n * 7919) % 13) as f32 - 6.0;
        }
        let reg = register_thumbs(&src, &copy).expect("registers");
        let axis = reg.map.as_geometry().or_else(|| reg.axis_alternative.and_then(|a| a.as_geometry()));
        let axis = axis.expect("an axis-aligned map is read");
        assert!((axis.sx - 0.9).abs() < 0.01 && (axis.tx - 4.0).abs() < 0.5, "{axis:?}");
        // A keystone of half a pixel at the corners: the projective map wins by a hair and
        // the axis-aligned one is kept as the alternative.
        let slight = Homography([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 4e-5, 0.0, 1.0])
            .then_after(&Homography::from_geometry(&g));
        let reg = register_thumbs(&src, &render(&src, &slight, (128, 72), 16.0)).expect("registers");
        assert!(reg.map.as_geometry().is_none(), "{:?}", reg.map);
        let alternative =
            reg.axis_alternative.and_then(|a| a.as_geometry()).expect("an axis-aligned alternative");
        assert!(
            (alternative.sx - 0.9).abs() < 0.03 && (alternative.sy - 0.9).abs() < 0.03,
            "{alternative:?}"
        );
        // Turned by 4 degrees the projective map wins clearly: no alternative to read.
        let turned = Homography::about_centre(128.0, 72.0, 4f64.to_radians(), false)
            .then_after(&Homography::from_geometry(&g));
        let reg = register_thumbs(&src, &render(&src, &turned, (128, 72), 16.0)).expect("registers");
        assert!(reg.map.as_geometry().is_none() && reg.axis_alternative.is_none());
        assert!(reg.map.corner_distance(&turned, 128.0, 72.0) < 1.0);
    }

    #[test]
    fn a_turned_coarser_copy_sees_the_source_through_a_view_too() {
        // A 0.4x copy turned by half a degree: a projective warp, and still a coarser view.
        let (w, h) = (160, 120);
        let h_work = Homography::about_centre(64.0, 48.0, 0.5f64.to_radians(), false)
            .then_after(&Homography::from_geometry(&Geometry { sx: 0.4, sy: 0.4, tx: 0.0, ty: 0.0 }));
        let checker = checkerboard(w, h);
        let warp = PairWarp::new((w, h), (64, 48), &h_work, &checker, &Gray::new(64, 48));
        assert!(matches!(warp.warp, Warp::Projective(_)));
        let view = warp.view.expect("a coarser copy has a view");
        let seen = seen_through(&view, &checker);
        for j in 8..h - 8 {
            for i in 8..w - 8 {
                let v = seen.data[j * w + i];
                assert!((v - 120.0).abs() < 1.0, "checker at {i},{j}: {v}");
            }
        }
        // As large as the source or larger: nothing is lost, no view.
        let up = Homography::about_centre(320.0, 240.0, 0.5f64.to_radians(), false)
            .then_after(&Homography::from_geometry(&Geometry { sx: 2.0, sy: 2.0, tx: 0.0, ty: 0.0 }));
        let warp = PairWarp::new((w, h), (320, 240), &up, &checker, &Gray::new(320, 240));
        assert!(matches!(warp.warp, Warp::Projective(_)) && warp.view.is_none());
    }

    #[test]
    fn leak_view_keeps_what_the_leak_can_show_and_drops_what_it_cannot() {
        let (w, h) = (96, 64);
        let g = Geometry { sx: 0.5, sy: 0.5, tx: 3.0, ty: 2.0 };
        let leak_size = (54, 36);
        // A gentle ramp survives halving: the view reproduces it away from the rim.
        let mut ramp = Gray::new(w, h);
        for (n, v) in ramp.data.iter_mut().enumerate() {
            *v = 40.0 + 0.5 * (n % w) as f32 + 0.8 * (n / w) as f32;
        }
        let (seen, taps) = view_of(&ramp, leak_size, &g);
        for j in taps.y_range.start + 3..taps.y_range.end - 3 {
            for i in taps.x_range.start + 3..taps.x_range.end - 3 {
                let (a, b) = (seen.data[j * w + i], ramp.data[j * w + i]);
                assert!((a - b).abs() < 0.5, "ramp at {i},{j}: {a} vs {b}");
            }
        }
        // A one-pixel checkerboard cannot pass through pixels twice as large: the view is flat.
        let (seen, taps) = view_of(&checkerboard(w, h), leak_size, &g);
        for j in taps.y_range.start + 3..taps.y_range.end - 3 {
            for i in taps.x_range.start + 3..taps.x_range.end - 3 {
                assert!(
                    (seen.data[j * w + i] - 120.0).abs() < 1.0,
                    "checker at {i},{j}: {}",
                    seen.data[j * w + i]
                );
            }
        }
    }
}
