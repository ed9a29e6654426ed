#![allow(missing_docs)] // criterion_group! generates undocumented items
//! The transcode pipeline with the identity transform on a real clip: the cost of the
//! decode → parallel transform → encode plumbing itself. Side-by-side ratios against the
//! `ffmpeg` CLI are in `benches/vs_ffmpeg.sh` (see BENCHMARKS.md).
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use tracemark::core::pipeline::no_progress;
use tracemark::core::video::{transcode, TranscodeConfig};
use tracemark::core::Identity;

fn pipeline(c: &mut Criterion) {
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/vtest-4s.avi");
    let dir = tempfile_dir();
    let out = dir.join("bench-out.mp4");
    let config = TranscodeConfig::new().with_preset("ultrafast").with_overwrite(true);
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10);
    g.bench_function("identity_vtest_40f_ultrafast", |b| {
        b.iter(|| transcode(&clip, &out, &config, Arc::new(Identity), &mut no_progress).unwrap())
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tracemark-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
