//! Opening input files safely: only regular files are read, so a FIFO, a device such as
//! `/dev/zero` or a directory is refused at once with its name instead of hanging a job,
//! filling memory or failing later with an error that names no file.

use std::path::Path;

use crate::{Error, Result};

/// What a non-regular file is, in words.
fn kind_of(ft: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// The metadata of `path` (links followed) if it is a regular file.
///
/// # Errors
/// [`Error::InputNotFound`] when nothing is there, [`Error::NotARegularFile`] for a
/// directory, FIFO, device or socket, [`Error::Io`] when it cannot be inspected.
pub fn regular_file(path: &Path) -> Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::InputNotFound(path.to_path_buf())
        } else {
            Error::io(path, e)
        }
    })?;
    if !meta.is_file() {
        return Err(Error::NotARegularFile { path: path.to_path_buf(), kind: kind_of(meta.file_type()) });
    }
    Ok(meta)
}

/// Opens `path` for reading if it is a regular file, and checks again on the opened file
/// (a file swapped for another kind between the look and the open is refused too).
///
/// # Errors
/// As [`regular_file`].
pub fn open_regular(path: &Path) -> Result<std::fs::File> {
    regular_file(path)?;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::NotARegularFile { path: path.to_path_buf(), kind: kind_of(meta.file_type()) });
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_pass() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert!(regular_file(&f).is_ok());
        assert!(open_regular(&f).is_ok());
        let e = regular_file(dir.path()).unwrap_err();
        assert!(matches!(e, Error::NotARegularFile { kind: "a directory", .. }), "{e}");
        assert!(e.to_string().contains(&dir.path().display().to_string()), "{e}");
        #[cfg(target_os = "linux")]
        {
            let e = open_regular(Path::new("/dev/zero")).unwrap_err();
            assert!(matches!(e, Error::NotARegularFile { kind: "a character device", .. }), "{e}");
        }
        assert!(matches!(regular_file(&dir.path().join("none")), Err(Error::InputNotFound(_))));
    }
}
