#![allow(missing_docs)] // criterion_group! generates undocumented items
//! The embed kernel alone (no decode, no encode) on real frames, at 720x576 and 1920x1080,
//! with 1 and 2 threads. Each iteration marks a batch of frames in parallel, one scratch per
//! frame slot, as the pipeline does; and a frame whose picture has moved, on one thread.
mod common;

use common::first_frame;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rayon::prelude::*;
use tracemark::core::{EmbedConfig, Embedder, Frame, MarkId, MasterKey, Plane};

/// The top-left `w` x `h` of a frame.
fn crop(f: &Frame, w: usize, h: usize) -> Frame {
    let mut y = Plane::new(w, h, 0);
    for (r, row) in y.rows_mut().enumerate() {
        row.copy_from_slice(&f.y.row(r)[..w]);
    }
    Frame::from_luma(y)
}

/// The embedder and the two frames every case marks.
fn fixtures() -> (Embedder, Frame, Frame) {
    let embedder = Embedder::new(&MasterKey::from_seed(1), MarkId(0xfeed), EmbedConfig::new()).unwrap();
    (embedder, crop(&first_frame("vtest-4s.avi"), 720, 576), first_frame("pan1080-1s.mp4"))
}

fn kernel(c: &mut Criterion) {
    let (embedder, sd, hd) = fixtures();
    const BATCH: usize = 8;
    let mut g = c.benchmark_group("embed_kernel");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, frame) in [("720x576", &sd), ("1920x1080", &hd)] {
        for threads in [1usize, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut slots: Vec<_> = (0..BATCH).map(|_| (frame.clone(), embedder.new_scratch())).collect();
            g.bench_with_input(BenchmarkId::new(name, format!("{threads}t")), &threads, |b, _| {
                b.iter(|| {
                    pool.install(|| {
                        slots.par_iter_mut().for_each(|(f, s)| {
                            // Restore the luma so every iteration marks a clean frame.
                            f.y.clone_from(&frame.y);
                            embedder.embed(f, s);
                        })
                    })
                })
            });
        }
    }
    g.finish();
}

/// A frame whose picture has moved (the mark follows it: sub-pixel resampling on both
/// grids), one thread.
fn moved(c: &mut Criterion) {
    let (embedder, sd, hd) = fixtures();
    let mut g = c.benchmark_group("embed_kernel_moved");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in [("720x576", &sd), ("1920x1080", &hd)] {
        let (mut f, mut s) = (frame.clone(), embedder.new_scratch());
        g.bench_function(BenchmarkId::new(name, "1t"), |b| {
            b.iter(|| {
                f.y.clone_from(&frame.y);
                embedder.embed_at(&mut f, (13.25, -7.5), &mut s);
            })
        });
    }
    g.finish();
}

/// The copy that restores each frame is part of the measured loop; measure it alone too so
/// the kernel's own cost can be read off.
fn restore_only(c: &mut Criterion) {
    let hd = first_frame("pan1080-1s.mp4");
    let mut f = hd.clone();
    c.bench_function("restore_copy_1920x1080", |b| b.iter(|| f.y.clone_from(&hd.y)));
}

criterion_group!(benches, kernel, moved, restore_only);
criterion_main!(benches);
