//! Plain transcode through the tracemark pipeline (identity transform).
//!
//! `cargo run --release --example transcode -- INPUT OUTPUT [CRF] [PRESET]`
use std::sync::Arc;

use tracemark::core::pipeline::no_progress;
use tracemark::core::video::{transcode, TranscodeConfig};
use tracemark::core::Identity;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() >= 2, "usage: transcode INPUT OUTPUT [CRF] [PRESET]");
    let mut config = TranscodeConfig::new().with_overwrite(true);
    if let Some(crf) = args.get(2) {
        config = config.with_crf(crf.parse()?);
    }
    if let Some(preset) = args.get(3) {
        config = config.with_preset(preset.as_str());
    }
    let start = std::time::Instant::now();
    let report =
        transcode(args[0].as_ref(), args[1].as_ref(), &config, Arc::new(Identity), &mut no_progress)?;
    println!(
        "{} frames {}x{} -> {}x{} in {:.2} s",
        report.frames,
        report.input.width,
        report.input.height,
        report.output_size.0,
        report.output_size.1,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
