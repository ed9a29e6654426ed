#![allow(missing_docs)] // criterion_group! generates undocumented items
//! The detector's per-frame work on real frames (residual projection and accumulation at
//! the working grid of SD and HD, the blind whitening median) and the verdict over a
//! registry of 1,000 exports.
mod common;

use common::first_frame;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tracemark::core::grid::Grid;
use tracemark::core::{EmbedConfig, Embedder, MarkId, MasterKey};
use tracemark::extract::detect::{DetectScratch, SlotSums};
use tracemark::extract::image::{Downscaler, Gray};
use tracemark::extract::verdict::{decide, Candidate};
use tracemark::extract::Detector;
use tracemark_core::layout::Scheme;

fn detector(c: &mut Criterion) {
    let key = MasterKey::from_seed(3);
    let det = Detector::new(&key);
    let e = Embedder::new(&key, MarkId(77), EmbedConfig::new()).unwrap();
    let mut g = c.benchmark_group("detector");
    g.throughput(Throughput::Elements(1));
    for (name, clip) in [("768x576", "vtest-4s.avi"), ("1920x1080", "pan1080-1s.mp4")] {
        let f = first_frame(clip);
        let mut m = f.clone();
        e.embed(&mut m, &mut e.new_scratch());
        let grid = Grid::for_frame(f.width(), f.height());
        let (a, b) = (
            Gray::from_plane(&m.y, grid.work_w, grid.work_h),
            Gray::from_plane(&f.y, grid.work_w, grid.work_h),
        );
        let resid: Vec<f32> = a.data.iter().zip(&b.data).map(|(x, y)| x - y).collect();
        let mut scratch = DetectScratch::default();
        g.bench_function(format!("accumulate_{name}"), |bch| {
            bch.iter(|| {
                let mut s = SlotSums::default();
                det.accumulate(&resid, &b.data, grid.work_w, grid.work_h, (0, 0), &mut s, &mut scratch);
                s
            })
        });
        g.bench_function(format!("median3_{name}"), |bch| bch.iter(|| a.median3()));
        // The trace's per-frame path: taps and buffers made once.
        let mut down = Downscaler::new(f.width(), f.height(), grid.work_w, grid.work_h);
        let mut out = vec![0f32; grid.work_w * grid.work_h];
        g.bench_function(format!("downscale_to_grid_{name}"), |bch| bch.iter(|| down.run(&f.y, &mut out)));
    }
    let f = first_frame("vtest-4s.avi");
    let mut m = f.clone();
    e.embed(&mut m, &mut e.new_scratch());
    let (a, b) = (Gray::from_plane(&m.y, 768, 576), Gray::from_plane(&f.y, 768, 576));
    let resid: Vec<f32> = a.data.iter().zip(&b.data).map(|(x, y)| x - y).collect();
    let mut sums = SlotSums::default();
    det.accumulate(&resid, &b.data, 768, 576, (0, 0), &mut sums, &mut DetectScratch::default());
    let registry: Vec<Candidate> = (0..1000u64)
        .map(|i| Candidate {
            mark_id: MarkId(i * 7919 + 1),
            recipient: format!("r{i}"),
            scheme: Scheme::Fixed,
        })
        .collect();
    g.bench_function("decide_1000_exports", |bch| bch.iter(|| decide(&det, &sums, &registry, 1.0, 1e-6)));
    g.finish();
}

criterion_group!(benches, detector);
criterion_main!(benches);
