//! Writing output files so that nothing is lost: never over an input, never over an
//! existing file unless asked, and never a half-written file under the final name.
//!
//! Output goes to a temporary file next to the final one ([`TempOutput`]), is synced, and
//! only then takes the final name: by a hard link, which fails rather than replace a file
//! that appeared meanwhile, or by a rename when overwriting was asked for.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Checks, before any work, that `output` can be written: its directory exists, it names
/// a file, it is none of `inputs` (compared after resolving links and `..`), and it does
/// not exist unless `overwrite`.
pub fn check_output(inputs: &[&Path], output: &Path, overwrite: bool) -> Result<()> {
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::OutputDirMissing(parent));
    }
    let Some(file_name) = output.file_name() else {
        return Err(Error::InvalidConfig(format!("output {} names no file", output.display())));
    };
    let canon_out = output.canonicalize().or_else(|_| parent.canonicalize().map(|p| p.join(file_name)));
    for input in inputs {
        if let (Ok(i), Ok(o)) = (input.canonicalize(), canon_out.as_ref()) {
            if &i == o {
                return Err(Error::OutputIsInput(output.to_path_buf()));
            }
        }
    }
    if output.exists() && !overwrite {
        return Err(Error::OutputExists(output.to_path_buf()));
    }
    Ok(())
}

/// A temporary file next to a final output, removed when dropped unless
/// [`TempOutput::commit`] ran.
#[derive(Debug)]
pub struct TempOutput {
    path: PathBuf,
    committed: bool,
}

impl TempOutput {
    /// A fresh temporary name beside `output` (hidden, with the process id and a nonce, and
    /// `output`'s extension last: FFmpeg picks the container from it).
    pub fn next_to(output: &Path) -> Self {
        let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let ext =
            output.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| "mp4".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = format!(".{name}.partial-{}-{nanos:08x}.{ext}", std::process::id());
        Self { path: output.with_file_name(tmp), committed: false }
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the file durable and moves it to `output` (without clobbering unless
    /// `overwrite`).
    pub fn commit(mut self, output: &Path, overwrite: bool) -> Result<()> {
        let f = std::fs::File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        f.sync_all().map_err(|e| Error::io(&self.path, e))?;
        if overwrite {
            std::fs::rename(&self.path, output).map_err(|e| Error::io(output, e))?;
        } else {
            // A hard link fails if the name was taken meanwhile: no race can clobber a file.
            match std::fs::hard_link(&self.path, output) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&self.path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(Error::OutputExists(output.to_path_buf()));
                }
                Err(_) => std::fs::rename(&self.path, output).map_err(|e| Error::io(output, e))?,
            }
        }
        if let Some(dir) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `bytes` as a new file `output` through a [`TempOutput`]: fails if `output`
/// exists, is one of `inputs`, or its directory is missing; leaves nothing on failure.
pub fn write_new_file(inputs: &[&Path], output: &Path, bytes: &[u8]) -> Result<()> {
    check_output(inputs, output, false)?;
    let tmp = TempOutput::next_to(output);
    std::fs::write(tmp.path(), bytes).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.commit(output, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_files_never_replace_anything_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.mp4");
        std::fs::write(&input, b"input").unwrap();
        let out = dir.path().join("report.html");
        write_new_file(&[&input], &out, b"one").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"one");
        assert!(matches!(write_new_file(&[&input], &out, b"two"), Err(Error::OutputExists(_))));
        assert!(matches!(write_new_file(&[&input], &input, b"x"), Err(Error::OutputIsInput(_))));
        let via_dots = dir.path().join(".").join("in.mp4");
        assert!(matches!(write_new_file(&[&input], &via_dots, b"x"), Err(Error::OutputIsInput(_))));
        assert!(matches!(
            write_new_file(&[], &dir.path().join("missing/r.html"), b"x"),
            Err(Error::OutputDirMissing(_))
        ));
        assert_eq!(std::fs::read(&out).unwrap(), b"one");
        assert_eq!(std::fs::read(&input).unwrap(), b"input");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn an_uncommitted_temporary_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = TempOutput::next_to(&dir.path().join("x.mp4"));
        std::fs::write(tmp.path(), b"partial").unwrap();
        assert!(tmp.path().extension().is_some_and(|e| e == "mp4"));
        drop(tmp);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
