//! The master key: a 256-bit secret from which every keyed random stream is derived.
//!
//! File format (version 1, 74 bytes): magic `TRACEMRK`, version `u16` little-endian,
//! the 32-byte secret, and the SHA-256 of the preceding 42 bytes (detects corruption and
//! truncation). Created with mode 0600 and never overwritten.

use std::io::Write;
use std::path::Path;

use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"TRACEMRK";
const VERSION: u16 = 1;
const FILE_LEN: usize = 8 + 2 + 32 + 32;

/// What is wrong with the bytes of a key file ([`MasterKey::decode`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file does not start with the key file magic.
    #[error("not a tracemark key file (bad magic)")]
    BadMagic,
    /// A format version this build does not read.
    #[error("key file version {0} is not supported (this build reads {VERSION})")]
    UnsupportedVersion(u16),
    /// The file has the wrong length.
    #[error("key file is {0} bytes, expected {FILE_LEN} (truncated or corrupt)")]
    WrongLength(usize),
    /// The checksum does not match.
    #[error("key file checksum mismatch (corrupt)")]
    Checksum,
}

/// A 256-bit secret shared by everything one police unit marks. Debug output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    secret: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.fingerprint())
    }
}

/// What a keyed random stream is for; each purpose gets an independent stream.
// `Test` is hidden from the docs because it is for tests, not as a non-exhaustive marker.
#[allow(clippy::manual_non_exhaustive)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Chips and bit assignment of the tile layout.
    Layout,
    /// The scrambling sequence applied to every codeword.
    Scramble,
    /// Test and calibration streams (never used for marking).
    #[doc(hidden)]
    Test,
    /// Authentication of the registry's audit chain head.
    Registry,
}

impl Purpose {
    fn tag(self) -> &'static [u8] {
        match self {
            Purpose::Layout => b"tracemark/v1/layout",
            Purpose::Scramble => b"tracemark/v1/scramble",
            Purpose::Test => b"tracemark/v1/test",
            Purpose::Registry => b"tracemark/v1/registry",
        }
    }
}

impl MasterKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        Self { secret }
    }

    /// A key from known bytes (tests and calibration only).
    pub fn from_bytes(secret: [u8; 32]) -> Self {
        Self { secret }
    }

    /// A deterministic key from a seed (tests and calibration only).
    #[doc(hidden)]
    pub fn from_seed(seed: u64) -> Self {
        let mut h = Sha256::new();
        h.update(b"tracemark/v1/test-key");
        h.update(seed.to_le_bytes());
        Self { secret: h.finalize().into() }
    }

    /// Public identifier of the key: 16 hex digits of a hash; reveals nothing of the secret.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"tracemark/v1/fingerprint");
        h.update(self.secret);
        h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A random stream for `purpose` and `id` (e.g. a mark id); streams never repeat across
    /// purposes, ids or keys.
    pub fn rng(&self, purpose: Purpose, id: u64) -> ChaCha20Rng {
        let mut h = Sha256::new();
        h.update(purpose.tag());
        h.update(self.secret);
        h.update(id.to_le_bytes());
        ChaCha20Rng::from_seed(h.finalize().into())
    }

    /// A 256-bit secret for `purpose` (e.g. a MAC key), independent of every other purpose.
    pub fn subkey(&self, purpose: Purpose) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"tracemark/v1/subkey");
        h.update(purpose.tag());
        h.update(self.secret);
        h.finalize().into()
    }

    fn encode(&self) -> [u8; FILE_LEN] {
        let mut out = [0u8; FILE_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[10..42].copy_from_slice(&self.secret);
        let sum = Sha256::digest(&out[..42]);
        out[42..].copy_from_slice(&sum);
        out
    }

    /// Parses the bytes of a key file.
    ///
    /// # Errors
    /// A [`KeyFileError`] saying what is wrong with the bytes.
    ///
    /// ```
    /// use tracemark_core::key::{KeyFileError, MasterKey};
    /// assert!(matches!(MasterKey::decode(b"not a key"), Err(KeyFileError::BadMagic)));
    /// ```
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, KeyFileError> {
        if bytes.len() < 10 || &bytes[..8] != MAGIC {
            return Err(KeyFileError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(KeyFileError::UnsupportedVersion(version));
        }
        if bytes.len() != FILE_LEN {
            return Err(KeyFileError::WrongLength(bytes.len()));
        }
        if Sha256::digest(&bytes[..42]).as_slice() != &bytes[42..] {
            return Err(KeyFileError::Checksum);
        }
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&bytes[10..42]);
        Ok(Self { secret })
    }

    /// Reads a key file. Only a regular file is read, and no more than a key file's size
    /// (a FIFO or `/dev/zero` cannot hang or exhaust memory). The key is refused when group
    /// or other users may read or write it (any of the mode bits `0o077`): chmod 600.
    ///
    /// # Errors
    /// [`Error::BadKey`] naming the file and what is wrong: missing, not a regular file,
    /// unreadable, corrupt, of another version, or open to other users.
    pub fn load(path: &Path) -> Result<Self> {
        use std::io::Read;
        let bad = |reason: String| Error::BadKey { path: path.into(), reason };
        let f = crate::input::open_regular(path).map_err(|e| match e {
            Error::InputNotFound(_) => bad("file not found".into()),
            Error::NotARegularFile { kind, .. } => bad(format!("not a regular file ({kind})")),
            Error::Io { source, .. } => bad(source.to_string()),
            other => bad(other.to_string()),
        })?;
        let mut bytes = Vec::with_capacity(FILE_LEN + 1);
        f.take(FILE_LEN as u64 + 1).read_to_end(&mut bytes).map_err(|e| bad(e.to_string()))?;
        let key = Self::decode(&bytes).map_err(|e| bad(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(bad(format!(
                    "mode {:04o} lets other users read or change the secret key; run `chmod 600 {}` (and check \
                     who may have copied it)",
                    mode & 0o7777,
                    path.display()
                )));
            }
        }
        Ok(key)
    }

    /// Writes a new key file with mode 0600. Refuses to replace an existing file.
    ///
    /// # Errors
    /// [`Error::OutputExists`] (nothing is overwritten), [`Error::OutputDirMissing`],
    /// [`Error::Io`] when writing fails (no partial key is left).
    ///
    /// ```
    /// use tracemark_core::MasterKey;
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("unit.key");
    /// let key = MasterKey::generate();
    /// key.save_new(&path)?;
    /// assert_eq!(MasterKey::load(&path)?, key);
    /// assert!(MasterKey::generate().save_new(&path).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_new(&self, path: &Path) -> Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::OutputExists(path.into()),
            std::io::ErrorKind::NotFound => {
                Error::OutputDirMissing(path.parent().unwrap_or(Path::new(".")).to_path_buf())
            }
            _ => Error::io(path, e),
        })?;
        let written = f.write_all(&self.encode()).and_then(|()| f.sync_all());
        if let Err(e) = written {
            drop(f);
            let _ = std::fs::remove_file(path);
            return Err(Error::io(path, e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::RngCore;

    #[test]
    fn file_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let k = MasterKey::generate();
        k.save_new(&p).unwrap();
        assert_eq!(MasterKey::load(&p).unwrap(), k);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(MasterKey::generate().save_new(&p), Err(Error::OutputExists(_))));
        assert_eq!(MasterKey::load(&p).unwrap(), k, "existing key was overwritten");
    }

    #[test]
    fn corrupt_and_truncated_files_are_refused() {
        let bytes = MasterKey::from_seed(1).encode();
        let mut flipped = bytes;
        flipped[20] ^= 1;
        assert_eq!(MasterKey::decode(&flipped), Err(KeyFileError::Checksum));
        assert!(MasterKey::decode(&flipped).unwrap_err().to_string().contains("checksum"));
        assert_eq!(MasterKey::decode(&bytes[..50]), Err(KeyFileError::WrongLength(50)));
        assert!(MasterKey::decode(&bytes[..50]).unwrap_err().to_string().contains("truncated"));
        assert!(MasterKey::decode(b"hello world, not a key").unwrap_err().to_string().contains("magic"));
        let mut v2 = bytes;
        v2[8] = 2;
        assert_eq!(MasterKey::decode(&v2), Err(KeyFileError::UnsupportedVersion(2)));
        assert!(MasterKey::decode(&v2).unwrap_err().to_string().contains("version"));
    }

    #[cfg(unix)]
    #[test]
    fn keys_open_to_others_and_non_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        MasterKey::from_seed(3).save_new(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = MasterKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("0666"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(MasterKey::load(&p).unwrap(), MasterKey::from_seed(3));
        let e = MasterKey::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file") && e.contains(&dir.path().display().to_string()), "{e}");
        #[cfg(target_os = "linux")]
        {
            let t0 = std::time::Instant::now();
            let e = MasterKey::load(Path::new("/dev/zero")).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
            assert!(t0.elapsed().as_secs() < 2);
        }
    }

    #[test]
    fn streams_differ_by_purpose_id_and_key() {
        let k = MasterKey::from_seed(7);
        let a = k.rng(Purpose::Layout, 0).next_u64();
        assert_ne!(a, k.rng(Purpose::Scramble, 0).next_u64());
        assert_ne!(a, k.rng(Purpose::Layout, 1).next_u64());
        assert_ne!(a, MasterKey::from_seed(8).rng(Purpose::Layout, 0).next_u64());
        assert_eq!(a, k.rng(Purpose::Layout, 0).next_u64());
        assert!(!format!("{k:?}").contains(&format!("{:02x}", k.secret[0]).repeat(4)));
    }
}
