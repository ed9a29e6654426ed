//! Checks on the files a command is given, before any work: only regular files are read
//! (a FIFO or `/dev/zero` would hang or fill memory), and names FFmpeg must open are
//! valid UTF-8 (the bindings cannot open anything else).

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// A video input: a regular file whose name FFmpeg can open.
pub fn video_input(path: &Path) -> Result<()> {
    tracemark_core::input::regular_file(path)?;
    if path.to_str().is_none() {
        bail!("{}", tracemark_core::Error::NonUtf8Path(path.to_path_buf()));
    }
    Ok(())
}

/// An output FFmpeg writes: its name must be valid UTF-8.
pub fn video_output(path: &Path) -> Result<()> {
    if path.to_str().is_none() {
        bail!(
            "output {}: the file name is not valid UTF-8, which FFmpeg cannot write; choose another name",
            path.display()
        );
    }
    Ok(())
}

/// SHA-256 (hex) of a regular file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = tracemark_core::input::open_regular(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
