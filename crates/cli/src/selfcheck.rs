//! Every export checks itself: once the marked copy is encoded (still under its temporary
//! name, its registry row pending), its first seconds are decoded beside the source and its
//! own mark id must be identified at the trace threshold. A copy whose mark cannot be found
//! is never delivered: the error says what to change. The source side of the check is
//! recorded while the copy is made ([`recording`]), so only the copy is decoded again.

use std::path::Path;

use anyhow::{bail, Result};
use tracemark_core::layout::Scheme;
use tracemark_core::video::TranscodeReport;
use tracemark_core::{MarkId, MasterKey};
use tracemark_extract::trace::{check_recorded, SourceRecording};

/// Seconds of the copy read back.
pub const SECONDS: f64 = 2.0;
/// False-positive probability the copy's own mark must reach (the trace default).
pub const THRESHOLD: f64 = 1e-6;
/// Pictures with a side below this cannot be expected to carry a readable mark.
const SMALL_SIDE: usize = tracemark_extract::trace::BLIND_MIN_SIDE;

/// What the advice on a failed check is made from.
pub struct Settings {
    crf: u8,
    target_psnr: f64,
    size: (usize, usize),
}

impl Settings {
    /// The settings of an export.
    pub fn of(a: &crate::EmbedArgs, rep: &TranscodeReport) -> Self {
        Self { crf: a.crf, target_psnr: a.target_psnr, size: rep.output_size }
    }

    /// What to change, in words.
    fn advice(&self) -> String {
        let mut what = Vec::new();
        if self.size.0.min(self.size.1) < SMALL_SIDE {
            what.push(format!(
                "the picture ({}x{}) is too small to carry a mark: export from a source at least {SMALL_SIDE} pixels on each side",
                self.size.0, self.size.1
            ));
        }
        if self.crf > 23 {
            what.push(format!("--crf {} is too high: lower it (the default 18 keeps the mark)", self.crf));
        }
        if self.target_psnr > 48.0 {
            what.push(format!(
                "--target-psnr {} dB is too high (too faint a mark): lower it (the default is 46)",
                self.target_psnr
            ));
        }
        if what.is_empty() {
            what.push("lower --crf or --target-psnr".into());
        }
        what.join("; ")
    }
}

/// An empty recording of `source`'s first [`SECONDS`], to be filled by the embedding pass.
pub fn recording(source: &Path) -> Result<SourceRecording> {
    SourceRecording::open(source, SECONDS)
        .map_err(|e| anyhow::anyhow!("{}: {}", source.display(), crate::error_chain(&e)))
}

/// Reads the mark of `marked` (the export, with `mark_id`, of the source `recording` was
/// made of) back.
pub fn run(
    key: &MasterKey,
    recording: &SourceRecording,
    marked: &Path,
    (mark_id, scheme): (MarkId, Scheme),
    s: &Settings,
) -> Result<()> {
    let t0 = std::time::Instant::now();
    let check = check_recorded(key, recording, marked, mark_id, scheme, THRESHOLD).map_err(|e| {
        anyhow::anyhow!(
            "self-check: the marked copy could not be read back ({}); nothing was delivered",
            crate::error_chain(&e)
        )
    })?;
    if std::env::var_os("TRACEMARK_TIMING").is_some() {
        eprintln!(
            "tracemark: timing: self-check read {} frames in {:.3} s (score {:.6})",
            check.frames,
            t0.elapsed().as_secs_f64(),
            check.decision.candidates.first().map_or(0.0, |c| c.score)
        );
    }
    if !check.identified {
        let best = check.decision.candidates.first();
        bail!(
            "self-check failed: the copy's own mark is not found in its first {SECONDS} s (score {:.1}, \
             false-positive probability {:.1e}, needed <= {THRESHOLD:.0e}), so a leak of it could not be traced; \
             nothing was delivered: {}",
            best.map_or(0.0, |b| b.score),
            best.map_or(1.0, |b| b.false_positive_probability),
            s.advice()
        );
    }
    Ok(())
}
