//! Helpers shared by the integration tests that make attacked copies with the ffmpeg CLI.

use std::path::Path;
use std::process::Command;

/// `input` through the ffmpeg filter chain `vf`, encoded by x264 (crf 23, 4:2:0) into `out`.
pub fn filtered_copy(input: &Path, vf: &str, out: &Path) {
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(input)
        .args(["-vf", vf, "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p"])
        .arg(out)
        .output()
        .expect("ffmpeg CLI");
    assert!(o.status.success(), "ffmpeg -vf {vf}: {}", String::from_utf8_lossy(&o.stderr));
}
