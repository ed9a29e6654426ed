//! Prints the global motion track the embedder follows (`tracemark/v4` marks move with it):
//! one line per frame, the displacement of the picture since the first frame in pixels.
//!
//! ```text
//! cargo run --release --example motion_track -- [--v2 | --v3 | --v4] clip.mp4 [more.mp4 ...]
//! ```
//! With several clips the tracks are printed side by side (a copy's track against its
//! source's, say). The first clip is tracked as the embedder tracks a source, the others
//! as a detector tracks a copy (for v4 as for v3: `Tracking::copy_measure`). `--v2` and
//! `--v3` measure as `tracemark/v2` and `v3` exports did.

use anyhow::{Context, Result};
use tracemark::core::motion::{MotionTracker, Tracking};
use tracemark::core::video::VideoReader;
use tracemark::core::Frame;

fn track(path: &str, copy: bool, tracking: Tracking) -> Result<Vec<(f64, f64)>> {
    let mut r = VideoReader::open(path.as_ref()).with_context(|| format!("opening {path}"))?;
    let (w, h) = (r.info().width, r.info().height);
    let mut t = if copy {
        MotionTracker::for_copy(w, h, tracking.copy_measure())
    } else {
        MotionTracker::new(w, h, tracking)
    };
    let mut f = Frame::new(w, h);
    let mut out = Vec::new();
    while r.read_frame(&mut f)? {
        t.push(&f.y);
        out.extend(std::iter::from_fn(|| t.pop()));
    }
    t.finish();
    out.extend(std::iter::from_fn(|| t.pop()));
    Ok(out)
}

fn main() -> Result<()> {
    let mut paths: Vec<String> = std::env::args().skip(1).collect();
    let tracking = match paths.first().map(String::as_str) {
        Some("--v2") => Some(Tracking::SharedWindow),
        Some("--v3") => Some(Tracking::OverlapWindow),
        Some("--v4") => Some(Tracking::PansOnly),
        _ => None,
    };
    if tracking.is_some() {
        paths.remove(0);
    }
    let tracking = tracking.unwrap_or(Tracking::PansOnly);
    anyhow::ensure!(!paths.is_empty(), "usage: motion_track [--v2 | --v3 | --v4] CLIP [CLIP ...]");
    let tracks =
        paths.iter().enumerate().map(|(i, p)| track(p, i > 0, tracking)).collect::<Result<Vec<_>>>()?;
    let n = tracks.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..n {
        let cols: Vec<String> =
            tracks.iter().map(|t| t.get(i).map_or("-".into(), |(x, y)| format!("{x:9.3} {y:9.3}"))).collect();
        println!("{i:5} {}", cols.join("   "));
    }
    Ok(())
}
