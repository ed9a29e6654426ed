//! Stamp a sequence of still images through the library API, the way another Rust tool
//! (a video management system exporting stills, say) would, then check the mark is there.
//!
//! `cargo run --release --example stamp_images -- OUT_DIR [IMAGE...]`
//!
//! Without images, three synthetic textured pictures are used. Colour images are marked in
//! their luma (BT.601 full-range YCbCr) and written back as PNG.
use std::path::PathBuf;

use anyhow::{Context, Result};
use tracemark::core::layout::Scheme;
use tracemark::core::{EmbedConfig, Embedder, Frame, MarkId, MasterKey, Plane};
use tracemark::extract::detect::{DetectScratch, SlotSums};
use tracemark::extract::verdict::{decide, Candidate};
use tracemark::extract::Detector;

fn to_frame(img: &image::RgbImage) -> (Frame, Vec<(f32, f32)>) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut y = Plane::new(w, h, 0);
    let mut chroma = Vec::with_capacity(w * h);
    for (r, row) in y.rows_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            let p = img.get_pixel(c as u32, r as u32).0.map(f32::from);
            let luma = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
            *v = luma.round().clamp(0.0, 255.0) as u8;
            chroma.push((p[2] - luma, p[0] - luma));
        }
    }
    (Frame::from_luma(y), chroma)
}

fn to_rgb(f: &Frame, chroma: &[(f32, f32)]) -> image::RgbImage {
    let w = f.width();
    image::RgbImage::from_fn(w as u32, f.height() as u32, |x, y| {
        let luma = f32::from(f.y.get(x as usize, y as usize));
        let (db, dr) = chroma[y as usize * w + x as usize];
        let (r, b) = (luma + dr, luma + db);
        let g = (luma - 0.299 * r - 0.114 * b) / 0.587;
        image::Rgb([r, g, b].map(|v| v.round().clamp(0.0, 255.0) as u8))
    })
}

fn synthetic(i: usize) -> image::RgbImage {
    image::RgbImage::from_fn(640, 480, |x, y| {
        let (xf, yf) = (x as f32, y as f32);
        let v = 120.0
            + 50.0 * ((xf * 0.05 + i as f32).sin() * (yf * 0.033).cos())
            + 30.0 * ((xf + yf) * 0.21).sin();
        image::Rgb([v as u8, (v * 0.9) as u8, (255.0 - v) as u8])
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out_dir = PathBuf::from(args.first().context("usage: stamp_images OUT_DIR [IMAGE...]")?);
    std::fs::create_dir_all(&out_dir)?;
    let images: Vec<(String, image::RgbImage)> = if args.len() > 1 {
        args[1..]
            .iter()
            .map(|p| Ok((p.clone(), image::open(p).with_context(|| format!("cannot read {p}"))?.to_rgb8())))
            .collect::<Result<_>>()?
    } else {
        (0..3).map(|i| (format!("synthetic-{i}"), synthetic(i))).collect()
    };

    // In a real tool the key comes from the unit's key file (MasterKey::load) and the id
    // is recorded with the export; here both are made up for the demonstration.
    let key = MasterKey::generate();
    let id = MarkId::random();
    let embedder = Embedder::new(&key, id, EmbedConfig::new())?;
    let mut scratch = embedder.new_scratch();
    let detector = Detector::new(&key);
    let mut sums = SlotSums::default();
    for (i, (name, img)) in images.iter().enumerate() {
        let (original, chroma) = to_frame(img);
        let mut marked = original.clone();
        let stats = embedder.embed(&mut marked, &mut scratch);
        let psnr = tracemark::core::frame::psnr(&original.y, &marked.y);
        let out = out_dir.join(format!("stamped-{i:03}.png"));
        to_rgb(&marked, &chroma).save(&out)?;
        println!(
            "{name}: {} ({}x{}), mark RMS {:.2}, luma PSNR {psnr:.1} dB",
            out.display(),
            img.width(),
            img.height(),
            stats.mark_rms
        );
        // Read it back from the PNG as an investigator would, knowing the original.
        let back = to_frame(&image::open(&out)?.to_rgb8()).0;
        accumulate(&detector, &back, &original, &mut sums);
    }
    let d = decide(
        &detector,
        &sums,
        &[Candidate { mark_id: id, recipient: "this export".into(), scheme: Scheme::default() }],
        1.0,
        1e-6,
    );
    println!(
        "detector: {} (score {:.1}, false-positive probability {:.1e})",
        d.verdict.as_str(),
        d.candidates[0].score,
        d.candidates[0].false_positive_probability
    );
    Ok(())
}

/// Informed read: the residual is the stamped image minus the original, on the working grid.
fn accumulate(det: &Detector, stamped: &Frame, original: &Frame, sums: &mut SlotSums) {
    let g = tracemark::core::grid::Grid::for_frame(original.width(), original.height());
    let a = tracemark::extract::image::Gray::from_plane(&stamped.y, g.work_w, g.work_h);
    let b = tracemark::extract::image::Gray::from_plane(&original.y, g.work_w, g.work_h);
    let resid: Vec<f32> = a.data.iter().zip(&b.data).map(|(x, y)| x - y).collect();
    det.accumulate(&resid, &b.data, g.work_w, g.work_h, (0, 0), sums, &mut DetectScratch::default());
    det.end_frame(sums);
}
