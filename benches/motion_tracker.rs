#![allow(missing_docs)] // criterion_group! generates undocumented items
//! The global-motion tracker alone (no decode) on the first frames of the 1080p pan and of
//! the still CCTV clip, as the embedder, the informed source decode and the blind decoder
//! each run it: one frame in, every final displacement out. Its cost sits on a decode
//! thread, in series with decoding.
mod common;

use common::first_frames;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tracemark::core::motion::{MotionTracker, Tracking};

fn tracker(c: &mut Criterion) {
    let mut g = c.benchmark_group("motion_tracker");
    let trackings =
        [("v2", Tracking::SharedWindow), ("v3", Tracking::OverlapWindow), ("v4", Tracking::PansOnly)];
    for (clip, label) in [("pan1080-1s.mp4", "pan-1920x1080"), ("vtest-4s.avi", "still-768x576")] {
        let frames = first_frames(clip, 16);
        let (w, h) = (frames[0].y.width(), frames[0].y.height());
        g.throughput(Throughput::Elements(frames.len() as u64));
        for (name, tracking) in trackings {
            g.bench_with_input(BenchmarkId::new(label, name), &tracking, |b, &tracking| {
                b.iter(|| {
                    let mut t = MotionTracker::new(w, h, tracking);
                    let mut last = (0.0, 0.0);
                    for f in &frames {
                        t.push(&f.y);
                        while let Some(d) = t.pop() {
                            last = d;
                        }
                    }
                    t.finish();
                    while let Some(d) = t.pop() {
                        last = d;
                    }
                    last
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, tracker);
criterion_main!(benches);
