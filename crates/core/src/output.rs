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
        return Err(Error::InvalidConfig {
            setting: "output",
            reason: format!("{} names no file", output.display()),
        });
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

/// Longest file name (bytes) the common file systems take.
pub const NAME_MAX: usize = 255;

/// What every temporary name holds after the final name: `.partial-PID-NONCE.EXT`.
const PARTIAL: &str = ".partial-";

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The process id in a temporary name made by [`TempOutput::next_to`], if `name` is one.
fn temporary_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let at = rest.rfind(PARTIAL)?;
    let tail = &rest[at + PARTIAL.len()..];
    let (pid, tail) = tail.split_once('-')?;
    let (nonce, ext) = tail.split_once('.')?;
    let valid = !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && nonce.len() == 8
        && nonce.bytes().all(|b| b.is_ascii_hexdigit())
        && !ext.is_empty();
    valid.then(|| pid.parse().ok()).flatten()
}

/// Whether process `pid` is alive (Linux: `/proc`). Elsewhere every process counts as
/// alive, so nothing is ever removed there.
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") && Path::new("/proc/self").exists() {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Removes, from the directory `output` is written to, the temporary files a killed run
/// left (`.NAME.partial-PID-NONCE.EXT` as made by [`TempOutput::next_to`]) whose process is
/// no longer alive. Only regular files of exactly that pattern are touched, never those of
/// this process or of a live one. Returns the files removed.
pub fn remove_stale_temporaries(output: &Path) -> Vec<PathBuf> {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temporary_owner) else { continue };
        if pid == me || process_alive(pid) {
            continue;
        }
        // Not following links: only a plain file left by a writer is removed.
        if entry.file_type().is_ok_and(|t| t.is_file()) && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// A temporary file next to a final output, removed when dropped unless
/// [`TempOutput::commit`] ran.
#[derive(Debug)]
pub struct TempOutput {
    path: PathBuf,
    committed: bool,
}

impl TempOutput {
    /// A fresh temporary name beside `output`: `.NAME.partial-PID-NONCE.EXT` (hidden, with
    /// the process id and a nonce, and `output`'s extension last: FFmpeg picks the container
    /// from it). A long NAME is shortened so the temporary name fits in [`NAME_MAX`] bytes
    /// even when the final name itself only just fits.
    pub fn next_to(output: &Path) -> Self {
        let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let ext =
            output.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| "mp4".into());
        let ext = truncate_utf8(&ext, 32);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let suffix = format!("{PARTIAL}{}-{nanos:08x}.{ext}", std::process::id());
        let stem = truncate_utf8(&name, NAME_MAX - 1 - suffix.len());
        let tmp = format!(".{stem}{suffix}");
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
    fn long_names_get_temporaries_that_fit() {
        let dir = tempfile::tempdir().unwrap();
        let names = [10usize, 200, 225, 240, 255]
            .into_iter()
            .flat_map(|len| ["a".repeat(len - 4) + ".mp4", "é".repeat((len - 4) / 2) + ".mp4"]);
        for name in names {
            let out = dir.path().join(&name);
            let tmp = TempOutput::next_to(&out);
            let tn = tmp.path().file_name().unwrap().to_str().unwrap().to_string();
            assert!(tn.len() <= NAME_MAX, "{} bytes: {tn}", tn.len());
            assert!(tn.ends_with(".mp4") && tn.starts_with('.') && tn.contains(".partial-"), "{tn}");
            assert_eq!(temporary_owner(&tn), Some(std::process::id()));
            std::fs::write(tmp.path(), b"x").unwrap();
            std::fs::write(&out, b"x").unwrap();
            drop(tmp);
            std::fs::remove_file(&out).unwrap();
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A pid far above pid_max: never alive.
        let dead = dir.path().join(".clip.mp4.partial-4194399999-0badcafe.mp4");
        let mine = TempOutput::next_to(&dir.path().join("clip.mp4"));
        let alive = dir.path().join(".clip.mp4.partial-1-00000000.mp4");
        let unrelated = dir.path().join(".clip.mp4.partial-notes.txt");
        for p in [&dead, &alive, &unrelated, &mine.path().to_path_buf()] {
            std::fs::write(p, b"x").unwrap();
        }
        let removed = remove_stale_temporaries(&dir.path().join("other.mp4"));
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists() && alive.exists() && unrelated.exists() && mine.path().exists());
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
