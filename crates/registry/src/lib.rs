//! The tracemark export registry: one SQLite file holding every export and an append-only,
//! hash-chained audit log, usable by the `tracemark` CLI and by a video management system.
//!
//! - Every write is one `BEGIN IMMEDIATE` transaction; WAL lets two exports run at once.
//!   Waiting for another writer's lock can be cancelled (see [`Registry::open_or_create`]).
//! - Read paths ([`Registry::open_read_only`]) open the file read-only (`immutable=1` when
//!   no write-ahead log exists, so a read-only mount works) and never change it: no tables,
//!   no journal-mode switch, no journal files.
//! - Each audit entry holds the SHA-256 of the entry before it; the first entry records the
//!   creation of the registry, and the chain's end (the head) is authenticated with an
//!   HMAC-SHA256 under a key derived from the unit key. [`Registry::verify`] recomputes the
//!   chain and checks every export row against it; only exports the chain holds are
//!   reported as verified.
//! - An export is recorded as *pending* before its output file takes its final name and
//!   flipped to *delivered* (or *failed*) afterwards, each an audit entry: a crash can leave
//!   a pending row, never a delivered row without its file.
//! - Four eyes, provably: officers hold Ed25519 keys ([`OfficerKey`], sealed with a
//!   passphrase); the registry's [`Roster`] of who may request and approve is replayed from
//!   the chain; an export may carry a signed [`Request`] and [`Approval`], which
//!   [`Registry::record_pending`] checks (and insists on once a roster exists).
//! - The registry's authority key, derived from the unit key, signs the head and
//!   [`Checkpoint`]s; its public half is in the chain, so [`Registry::verify`] with no secret
//!   authenticates everything, and [`Registry::verify_checkpoint`] catches rollbacks.

pub mod approval;
pub mod names;
pub mod officer;
pub mod roster;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub use approval::{Approval, Checkpoint, Request, RequestBody};
pub use names::NameError;
pub use officer::{OfficerError, OfficerKey, OfficerPublic};
pub use roster::{Role, Roster, RosterEntry};

/// Schema version written to `meta`. Version 1 (no creation entry, no delivery status) is
/// refused.
pub const SCHEMA_VERSION: i64 = 2;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// How long a write waits for another writer's lock before giving up.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// What can go wrong. Variants name what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry file does not exist (read paths never create one).
    #[error("registry {0} does not exist; pass the registry the exports were recorded in")]
    Missing(PathBuf),
    /// The directory a new registry would go in does not exist.
    #[error("registry directory {0} does not exist")]
    DirMissing(PathBuf),
    /// The file is not a tracemark registry (left untouched).
    #[error("{path} is not a tracemark registry ({why})")]
    NotARegistry {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        why: String,
    },
    /// The registry was made with another unit key.
    #[error("registry {path} was made with key {registry}, not with this key ({given}); use the key it was made with")]
    WrongKey {
        /// The registry.
        path: PathBuf,
        /// Fingerprint the registry was made with.
        registry: String,
        /// Fingerprint of the key given.
        given: String,
    },
    /// Another schema version.
    #[error("registry {path} has schema version {found}; this build reads version {SCHEMA_VERSION} (make a new registry)")]
    Schema {
        /// The registry.
        path: PathBuf,
        /// The version found.
        found: String,
    },
    /// A mark id that is not exactly 16 lowercase hexadecimal digits.
    #[error("{0:?} is not a mark id (exactly 16 lowercase hexadecimal digits)")]
    BadMarkId(String),
    /// The mark id is registered already.
    #[error("mark id {0} is registered already")]
    DuplicateMarkId(String),
    /// More than one export starts with the prefix.
    #[error("{count} exports start with {prefix:?}; give more digits")]
    AmbiguousPrefix {
        /// The prefix.
        prefix: String,
        /// How many exports matched.
        count: usize,
    },
    /// No pending export with this mark id (to mark delivered or failed).
    #[error("no pending export with mark id {0}")]
    NotPending(String),
    /// A field of an export record was refused.
    #[error("{field} {why}")]
    InvalidField {
        /// The field (e.g. `recipient`).
        field: &'static str,
        /// Why.
        why: String,
    },
    /// The exporting officer also approved the export.
    #[error("the approving officer {approved_by:?} is the exporting officer {officer:?}: an export cannot approve itself")]
    SelfApproval {
        /// Exporting officer as given.
        officer: String,
        /// Approving officer as given.
        approved_by: String,
    },
    /// A key, request, approval or checkpoint file was refused (malformed, bad signature,
    /// wrong passphrase).
    #[error(transparent)]
    Officer(#[from] OfficerError),
    /// The registry has a roster: an approval only declared by name is refused.
    #[error("this registry has an officer roster: exports need a signed approval (`tracemark request`, then `tracemark approve`, then `embed --approval FILE`); declared names are refused")]
    SignedApprovalRequired,
    /// A signed approval, but no roster to check it against.
    #[error("this registry has no officer roster: add officers first (`tracemark officer add`)")]
    NoRoster,
    /// A signed approval was refused (role, expiry, source, recipient, reuse...).
    #[error("approval refused: {0}")]
    ApprovalRefused(String),
    /// A roster change was refused (unknown officer, duplicate, revoked...).
    #[error("{0}")]
    Roster(String),
    /// The registry fails verification (for operations that need a sound chain).
    #[error("registry {path} fails verification ({first}); run `tracemark registry verify`")]
    Unverified {
        /// The registry.
        path: PathBuf,
        /// The first problem found.
        first: String,
    },
    /// Waiting for the lock was cancelled (Ctrl-C).
    #[error("interrupted while waiting for the registry lock; nothing was registered")]
    Interrupted,
    /// Another writer held the lock too long.
    #[error("registry {path} stayed locked by another export for {seconds} s; try again")]
    Locked {
        /// The registry.
        path: PathBuf,
        /// How long we waited.
        seconds: u64,
    },
    /// Reading the file failed (the cause is the error's source, not repeated here).
    #[error("I/O error on {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database failed.
    #[error("registry database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses a mark id strictly: exactly 16 lowercase hexadecimal digits, nothing around them.
pub fn parse_mark_id(s: &str) -> Result<u64> {
    if s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        u64::from_str_radix(s, 16).map_err(|_| Error::BadMarkId(s.to_string()))
    } else {
        Err(Error::BadMarkId(s.to_string()))
    }
}

/// One export as recorded (plain data).
#[derive(Clone, Debug, PartialEq)]
pub struct ExportRecord {
    /// The mark id (16 lowercase hex digits).
    pub mark_id: String,
    /// Who received the copy.
    pub recipient: String,
    /// The exporting officer.
    pub officer: String,
    /// The approving officer.
    pub approved_by: String,
    /// Case reference.
    pub case_ref: Option<String>,
    /// Why the clip left.
    pub reason: Option<String>,
    /// Absolute path of the source.
    pub source_path: String,
    /// SHA-256 of the source (hex).
    pub source_sha256: String,
    /// Absolute path of the marked copy.
    pub output_path: String,
    /// SHA-256 of the marked copy (hex).
    pub output_sha256: String,
    /// Frames written.
    pub frames: i64,
    /// Duration of the source in seconds, when known.
    pub duration_s: Option<f64>,
    /// Output width.
    pub width: i64,
    /// Output height.
    pub height: i64,
    /// Embedding parameters (JSON text).
    pub embed_params: String,
    /// Fingerprint of the unit key (never the key).
    pub key_fingerprint: String,
    /// When it was recorded (RFC 3339, UTC).
    pub created_at: String,
    /// The signed request and approval (JSON text); `None` when the approval was only
    /// declared by name.
    pub approval: Option<String>,
}

impl ExportRecord {
    /// Canonical JSON (sorted keys) hashed into the audit chain.
    pub fn to_json(&self) -> Value {
        json!({
            "mark_id": self.mark_id, "recipient": self.recipient, "officer": self.officer,
            "approved_by": self.approved_by, "case_ref": self.case_ref, "reason": self.reason,
            "source_path": self.source_path, "source_sha256": self.source_sha256,
            "output_path": self.output_path, "output_sha256": self.output_sha256,
            "frames": self.frames, "duration_s": self.duration_s, "width": self.width,
            "height": self.height, "embed_params": self.embed_params,
            "key_fingerprint": self.key_fingerprint, "created_at": self.created_at,
            "approval": self.approval,
        })
    }

    /// How the approval is backed, in words.
    pub fn approval_kind(&self) -> &'static str {
        if self.approval.is_some() {
            "signed approval"
        } else {
            "approval declared, not signed"
        }
    }

    /// Checks the record before it is written: a strict mark id, visible names, and an
    /// approving officer who is not (by normalised name) the exporting officer.
    pub fn validate(&self) -> Result<()> {
        parse_mark_id(&self.mark_id)?;
        for (field, v) in
            [("recipient", &self.recipient), ("officer", &self.officer), ("approved_by", &self.approved_by)]
        {
            names::normalise(v).map_err(|e| Error::InvalidField { field, why: e.to_string() })?;
        }
        if names::same_name(&self.officer, &self.approved_by) {
            return Err(Error::SelfApproval {
                officer: self.officer.clone(),
                approved_by: self.approved_by.clone(),
            });
        }
        Ok(())
    }
}

/// Where an export stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportStatus {
    /// Recorded before its file took the final name; not (yet) known to be delivered.
    Pending,
    /// The marked file took its final name.
    Delivered,
    /// The export failed after it was recorded; no file was delivered.
    Failed,
}

impl ExportStatus {
    /// `pending`, `delivered` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

/// An export and its status.
#[derive(Clone, Debug, PartialEq)]
pub struct Export {
    /// The record.
    pub record: ExportRecord,
    /// Its status.
    pub status: ExportStatus,
}

/// What [`Registry::verify`] found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Exports whose row agrees with the audit chain (only these may be named by a trace).
    pub exports: Vec<Export>,
    /// Export rows in the table.
    pub export_rows: usize,
    /// Audit entries.
    pub audit_entries: usize,
    /// Hash of the last audit entry.
    pub head: String,
    /// Whether the head was checked against the unit key.
    pub authenticated: bool,
    /// Everything wrong, in words. Empty when the registry verified.
    pub problems: Vec<String>,
    /// The officer roster the chain holds.
    pub roster: Roster,
    /// The registry's authority public key (hex), when the chain records one.
    pub authority_key: Option<String>,
    /// Whether the head's signature by the authority key was checked (and held).
    pub head_signed: bool,
    /// Number of exports with a signed approval that verified.
    pub signed_approvals: usize,
}

impl VerifyReport {
    /// No problems.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn is_sqlite(path: &Path) -> Result<bool> {
    use std::io::Read;
    let io = |e| Error::Io { path: path.to_path_buf(), source: e };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut head = [0u8; 16];
    let mut n = 0;
    while n < 16 {
        match f.read(&mut head[n..]).map_err(io)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n == 16 && &head == b"SQLite format 3\0")
}

/// Whether `path` is an SQLite database with no tables, indexes or triggers (read through
/// SQLite's locks, so a concurrent creator's uncommitted schema counts as absent).
fn schema_is_empty(path: &Path) -> Result<bool> {
    if !is_sqlite(path)? {
        return Ok(false);
    }
    let flags =
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(sqlite_uri(path, "mode=ro")?, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let n: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    Ok(n == 0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn head_mac(key: &[u8; 32], seq: i64, head: &str) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"tracemark registry head v2\0");
    m.update(format!("{seq}\0{head}").as_bytes());
    hex(&m.finalize().into_bytes())
}

const HEAD_CONTEXT: &str = "tracemark registry head signature v1";

fn head_message(seq: i64, head: &str) -> String {
    format!("{seq}\0{head}")
}

/// The authority key the chain records (in the creation entry, or an `authority` entry for
/// registries made before authority keys), read inside a transaction.
fn recorded_authority(c: &Connection) -> Result<Option<String>> {
    let mut st =
        c.prepare("SELECT payload FROM audit WHERE action IN ('create', 'authority') ORDER BY seq")?;
    let payloads = st.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(payloads.iter().rev().find_map(|p| {
        serde_json::from_str::<Value>(p).ok()?.get("authority_key")?.as_str().map(str::to_string)
    }))
}

/// The roster replayed from the audit table (unverified; [`Registry::verify`] checks it).
fn replay_roster(c: &Connection) -> Result<Roster> {
    let mut st = c.prepare(
        "SELECT at, action, payload FROM audit WHERE action IN ('officer_add', 'officer_revoke') ORDER BY seq",
    )?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut roster = Roster::default();
    for (at, action, payload) in rows {
        let v: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
        let _ = roster.apply(&action, &v, roster::parse_utc(&at).unwrap_or(0));
    }
    Ok(roster)
}

/// Request digests of every signed approval already used by an export.
fn used_requests(c: &Connection) -> Result<HashSet<String>> {
    let mut st = c.prepare("SELECT approval FROM exports WHERE approval IS NOT NULL")?;
    let texts = st.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(texts
        .iter()
        .filter_map(|t| serde_json::from_str::<Approval>(t).ok())
        .map(|a| a.request.digest())
        .collect())
}

/// Checks that `rec` says what its signed approval says.
fn approval_matches(a: &Approval, rec: &ExportRecord) -> std::result::Result<(), String> {
    let rq = &a.request.body;
    let mismatch = |what: &str| Err(format!("the export's {what} differs from the approved request's"));
    if rq.source_sha256 != rec.source_sha256 {
        return Err("the source clip is not the one the request was made for (SHA-256 differs)".into());
    }
    if rq.recipient != rec.recipient {
        return mismatch("recipient");
    }
    if rq.requester_name != rec.officer || a.body.approver_name != rec.approved_by {
        return mismatch("officers");
    }
    if rq.case_ref != rec.case_ref || rq.reason != rec.reason {
        return mismatch("case or reason");
    }
    if rq.registry != rec.key_fingerprint {
        return Err("the request was made for another registry (unit key)".into());
    }
    Ok(())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64
}

fn chain_hash(prev: &str, seq: i64, at: &str, action: &str, payload: &str) -> String {
    let mut h = Sha256::new();
    for part in [prev, &seq.to_string(), at, action, payload] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex(&h.finalize())
}

/// Current UTC time as RFC 3339 (seconds).
pub fn now_utc() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    format_utc(secs)
}

/// Seconds since 1970 as RFC 3339 (UTC).
pub fn format_utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `path` as an SQLite URI (`file:` + percent-encoded absolute path + `query`).
fn sqlite_uri(path: &Path, query: &str) -> Result<String> {
    use std::os::unix::ffi::OsStrExt;
    let abs = std::path::absolute(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
    let mut uri = String::from("file:");
    for &b in abs.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push('?');
    uri.push_str(query);
    Ok(uri)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS exports (
    id INTEGER PRIMARY KEY,
    mark_id TEXT NOT NULL UNIQUE CHECK (length(mark_id) = 16 AND mark_id NOT GLOB '*[^0-9a-f]*'),
    recipient TEXT NOT NULL, officer TEXT NOT NULL, approved_by TEXT NOT NULL,
    case_ref TEXT, reason TEXT,
    source_path TEXT NOT NULL, source_sha256 TEXT NOT NULL,
    output_path TEXT NOT NULL, output_sha256 TEXT NOT NULL,
    frames INTEGER NOT NULL, duration_s REAL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    embed_params TEXT NOT NULL, key_fingerprint TEXT NOT NULL, created_at TEXT NOT NULL,
    approval TEXT);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, at TEXT NOT NULL, action TEXT NOT NULL,
    payload TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS exports_no_update BEFORE UPDATE ON exports
    BEGIN SELECT RAISE(ABORT, 'exports are append-only'); END;
CREATE TRIGGER IF NOT EXISTS exports_no_delete BEFORE DELETE ON exports
    BEGIN SELECT RAISE(ABORT, 'exports are append-only'); END;";

const COLUMNS: &str = "mark_id, recipient, officer, approved_by, case_ref, reason, source_path, \
    source_sha256, output_path, output_sha256, frames, duration_s, width, height, embed_params, \
    key_fingerprint, created_at, approval";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExportRecord> {
    Ok(ExportRecord {
        mark_id: r.get(0)?,
        recipient: r.get(1)?,
        officer: r.get(2)?,
        approved_by: r.get(3)?,
        case_ref: r.get(4)?,
        reason: r.get(5)?,
        source_path: r.get(6)?,
        source_sha256: r.get(7)?,
        output_path: r.get(8)?,
        output_sha256: r.get(9)?,
        frames: r.get(10)?,
        duration_s: r.get(11)?,
        width: r.get(12)?,
        height: r.get(13)?,
        embed_params: r.get(14)?,
        key_fingerprint: r.get(15)?,
        created_at: r.get(16)?,
        approval: r.get(17)?,
    })
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// One audit entry as stored.
struct AuditRow {
    seq: i64,
    at: String,
    action: String,
    payload: String,
    prev: String,
    hash: String,
}

/// An open registry.
pub struct Registry {
    conn: Connection,
    path: PathBuf,
    writable: bool,
    cancel: Option<Arc<AtomicBool>>,
    lock_timeout: Duration,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("path", &self.path).field("writable", &self.writable).finish()
    }
}

impl Registry {
    /// Opens the registry at `path` for writing, creating it (for the unit key with
    /// `key_fingerprint`, whose registry subkey is `mac_key`) if it does not exist or is
    /// empty. Refuses, without changing it, a file that is not a registry or was made with
    /// another key. While waiting for another writer's lock, `cancel` (when set to true,
    /// e.g. by a Ctrl-C handler) aborts with [`Error::Interrupted`].
    ///
    /// # Errors
    /// [`Error::DirMissing`], [`Error::NotARegistry`] (also for directories, FIFOs and
    /// devices), [`Error::WrongKey`], [`Error::Schema`], [`Error::Interrupted`],
    /// [`Error::Locked`], [`Error::Io`], [`Error::Sqlite`].
    ///
    /// ```
    /// use tracemark_registry::Registry;
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("exports.db");
    /// let reg = Registry::open_or_create(&path, "fingerprint", &[7u8; 32], None)?;
    /// assert!(reg.exports()?.is_empty());
    /// assert!(Registry::open_or_create(&path, "another key", &[8u8; 32], None).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_or_create(
        path: &Path,
        key_fingerprint: &str,
        mac_key: &[u8; 32],
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(Error::DirMissing(dir.to_path_buf()));
            }
        }
        let fresh = match std::fs::metadata(path) {
            // A FIFO or a device would hang SQLite (or feed it endless bytes): only regular
            // files are registries.
            Ok(m) if !m.is_file() => {
                return Err(Error::NotARegistry {
                    path: path.to_path_buf(),
                    why: "not a regular file".into(),
                })
            }
            Ok(m) => m.len() == 0,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(Error::Io { path: path.to_path_buf(), source: e }),
        };
        if !fresh {
            // Look before touching: a foreign database must stay exactly as it is. A database
            // with no schema at all holds nothing to lose: it is what another tracemark
            // creating this registry right now leaves visible before its first commit.
            // A creator that commits between our two looks is seen on a second try.
            let mut tries = 0;
            loop {
                match Self::open_read_only(path) {
                    Ok(ro) => break ro.check_key(key_fingerprint)?,
                    Err(Error::NotARegistry { .. }) if schema_is_empty(path)? => break,
                    Err(Error::NotARegistry { .. }) if tries < 5 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(40));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_millis(100))?;
        let mut reg = Self {
            conn,
            path: path.to_path_buf(),
            writable: true,
            cancel,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        };
        reg.retry_busy(|c| c.pragma_update(None, "journal_mode", "WAL"))?;
        reg.conn.pragma_update(None, "synchronous", "FULL")?;
        let path_buf = reg.path.clone();
        reg.write(|c| {
            c.execute_batch(SCHEMA)?;
            let meta = |k: &str| -> rusqlite::Result<Option<String>> {
                c.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0)).optional()
            };
            match meta("key_fingerprint")? {
                None => {
                    let at = now_utc();
                    for (k, v) in [
                        ("schema_version", SCHEMA_VERSION.to_string()),
                        ("key_fingerprint", key_fingerprint.to_string()),
                        ("created_at", at.clone()),
                    ] {
                        c.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", params![k, v])?;
                    }
                    let payload = json!({"key_fingerprint": key_fingerprint, "schema_version": SCHEMA_VERSION,
                                         "created_at": at,
                                         "authority_key": officer::authority_key(mac_key).id()});
                    append_audit(c, "create", &payload, mac_key)?;
                }
                Some(fp) if fp != key_fingerprint => {
                    return Err(Error::WrongKey {
                        path: path_buf.clone(),
                        registry: fp,
                        given: key_fingerprint.to_string(),
                    })
                }
                Some(_) => {}
            }
            let version = meta("schema_version")?.unwrap_or_default();
            if version != SCHEMA_VERSION.to_string() {
                return Err(Error::Schema { path: path_buf.clone(), found: version });
            }
            // Registries made before authority keys get theirs recorded on first write.
            if recorded_authority(c)?.is_none() {
                let payload = json!({"authority_key": officer::authority_key(mac_key).id()});
                append_audit(c, "authority", &payload, mac_key)?;
            }
            Ok(())
        })?;
        Ok(reg)
    }

    /// Opens an existing registry read-only; never creates, converts or changes anything
    /// (`immutable=1` when there is no write-ahead log, so read-only files and mounts
    /// work). Refuses files that are not tracemark registries.
    ///
    /// # Errors
    /// [`Error::Missing`], [`Error::NotARegistry`], [`Error::Schema`], [`Error::Io`],
    /// [`Error::Sqlite`].
    pub fn open_read_only(path: &Path) -> Result<Self> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Missing(path.to_path_buf()))
            }
            Err(e) => return Err(Error::Io { path: path.to_path_buf(), source: e }),
        };
        let not = |why: &str| Error::NotARegistry { path: path.to_path_buf(), why: why.to_string() };
        if !meta.is_file() {
            return Err(not("not a regular file"));
        }
        if meta.len() == 0 {
            return Err(not("empty file"));
        }
        if !is_sqlite(path)? {
            return Err(not("not an SQLite database"));
        }
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let query = if Path::new(&wal).exists() { "mode=ro" } else { "immutable=1" };
        let flags =
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(sqlite_uri(path, query)?, flags)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('meta', 'exports', 'audit')",
                [],
                |r| r.get(0),
            )
            .map_err(|_| not("not a readable SQLite database"))?;
        if tables != 3 {
            return Err(not("an SQLite database without the registry's tables"));
        }
        let reg = Self {
            conn,
            path: path.to_path_buf(),
            writable: false,
            cancel: None,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        };
        let version = reg.meta("schema_version")?;
        if reg.meta("key_fingerprint")?.is_none() {
            return Err(not("no key fingerprint recorded"));
        }
        if version.as_deref() != Some(SCHEMA_VERSION.to_string().as_str()) {
            return Err(Error::Schema { path: path.to_path_buf(), found: version.unwrap_or_default() });
        }
        Ok(reg)
    }

    /// Sets how long a write waits for another writer (default [`DEFAULT_LOCK_TIMEOUT`]).
    pub fn set_lock_timeout(&mut self, t: Duration) {
        self.lock_timeout = t;
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    /// Fingerprint of the unit key the registry was made with.
    pub fn key_fingerprint(&self) -> Result<String> {
        Ok(self.meta("key_fingerprint")?.unwrap_or_default())
    }

    /// Refuses a key other than the one the registry was made with.
    pub fn check_key(&self, key_fingerprint: &str) -> Result<()> {
        let fp = self.key_fingerprint()?;
        if fp == key_fingerprint {
            Ok(())
        } else {
            Err(Error::WrongKey { path: self.path.clone(), registry: fp, given: key_fingerprint.to_string() })
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::SeqCst))
    }

    /// Runs `f` until it does not fail with "busy", giving up on cancel or timeout.
    fn retry_busy<T>(&mut self, mut f: impl FnMut(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let t0 = Instant::now();
        loop {
            if self.cancelled() {
                return Err(Error::Interrupted);
            }
            match f(&self.conn) {
                Ok(v) => return Ok(v),
                Err(e) if is_busy(&e) => {
                    if t0.elapsed() > self.lock_timeout {
                        return Err(Error::Locked {
                            path: self.path.clone(),
                            seconds: t0.elapsed().as_secs(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One `BEGIN IMMEDIATE` transaction around `f`: committed if `f` succeeds, rolled
    /// back otherwise.
    fn write<T>(&mut self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        assert!(self.writable, "write on a registry opened read-only");
        self.retry_busy(|c| c.execute_batch("BEGIN IMMEDIATE"))?;
        let out = f(&self.conn).and_then(|v| {
            self.conn.execute_batch("COMMIT")?;
            Ok(v)
        });
        if out.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        out
    }

    /// Whether a mark id is taken.
    pub fn contains(&self, mark_id: &str) -> Result<bool> {
        Ok(self.conn.query_row("SELECT count(*) FROM exports WHERE mark_id = ?1", [mark_id], |r| {
            r.get::<_, i64>(0)
        })? > 0)
    }

    /// Records an export as *pending* (row and audit entry in one transaction); call
    /// [`Registry::mark_delivered`] once the file has its final name, or
    /// [`Registry::mark_failed`] if that failed. `mac_key` authenticates the new head.
    pub fn record_pending(&mut self, rec: &ExportRecord, mac_key: &[u8; 32]) -> Result<()> {
        rec.validate()?;
        self.write(|c| {
            let taken: i64 =
                c.query_row("SELECT count(*) FROM exports WHERE mark_id = ?1", [&rec.mark_id], |r| r.get(0))?;
            if taken > 0 {
                return Err(Error::DuplicateMarkId(rec.mark_id.clone()));
            }
            let roster = replay_roster(c)?;
            match (&rec.approval, roster.exists()) {
                (None, true) => return Err(Error::SignedApprovalRequired),
                (Some(_), false) => return Err(Error::NoRoster),
                (Some(text), true) => {
                    let a = Approval::from_file_text(text)?;
                    roster.check(&a, now_secs()).map_err(Error::ApprovalRefused)?;
                    approval_matches(&a, rec).map_err(Error::ApprovalRefused)?;
                    if used_requests(c)?.contains(&a.request.digest()) {
                        return Err(Error::ApprovalRefused(
                            "this approval was used for an export already; each approval allows one export"
                                .into(),
                        ));
                    }
                }
                (None, false) => {}
            }
            c.execute(
                &format!(
                    "INSERT INTO exports ({COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
                ),
                params![
                    rec.mark_id,
                    rec.recipient,
                    rec.officer,
                    rec.approved_by,
                    rec.case_ref,
                    rec.reason,
                    rec.source_path,
                    rec.source_sha256,
                    rec.output_path,
                    rec.output_sha256,
                    rec.frames,
                    rec.duration_s,
                    rec.width,
                    rec.height,
                    rec.embed_params,
                    rec.key_fingerprint,
                    rec.created_at,
                    rec.approval,
                ],
            )?;
            append_audit(c, "export", &rec.to_json(), mac_key)
        })
    }

    /// The roster as the audit table says (not verified: see [`VerifyReport::roster`]).
    pub fn roster(&self) -> Result<Roster> {
        replay_roster(&self.conn)
    }

    /// Checks, before any work, that a signed approval (the file's text) allows an export of
    /// the source with SHA-256 `source_sha256` now: signatures, roster roles at signing time
    /// and now, different keys, expiry, the source, this registry, not used before.
    /// The registry must verify first: a roster edited behind the tool's back authorises
    /// nobody.
    pub fn check_approval(&self, text: &str, source_sha256: &str) -> Result<Approval> {
        let rep = self.verify(None)?;
        if let Some(first) = rep.problems.first() {
            return Err(Error::Unverified { path: self.path.clone(), first: first.clone() });
        }
        let roster = rep.roster;
        if !roster.exists() {
            return Err(Error::NoRoster);
        }
        let a = Approval::from_file_text(text)?;
        roster.check(&a, now_secs()).map_err(Error::ApprovalRefused)?;
        if a.request.body.source_sha256 != source_sha256 {
            return Err(Error::ApprovalRefused(
                "the input is not the clip the request was made for (SHA-256 differs)".into(),
            ));
        }
        if a.request.body.registry != self.key_fingerprint()? {
            return Err(Error::ApprovalRefused(
                "the request was made for another registry (unit key)".into(),
            ));
        }
        if used_requests(&self.conn)?.contains(&a.request.digest()) {
            return Err(Error::ApprovalRefused(
                "this approval was used for an export already; each approval allows one export".into(),
            ));
        }
        Ok(a)
    }

    fn check_authority(&self, mac_key: &[u8; 32]) -> Result<officer::OfficerKey> {
        let authority = officer::authority_key(mac_key);
        if recorded_authority(&self.conn)?.as_deref() != Some(authority.id().as_str()) {
            return Err(Error::WrongKey {
                path: self.path.clone(),
                registry: self.key_fingerprint()?,
                given: "a key whose registry authority differs".into(),
            });
        }
        Ok(authority)
    }

    /// Puts an officer on the roster (an audit entry under the unit key's authority).
    /// Refuses a key or a (normalised) name already on it.
    pub fn add_officer(
        &mut self,
        officer: &OfficerPublic,
        role: Role,
        mac_key: &[u8; 32],
    ) -> Result<RosterEntry> {
        self.check_authority(mac_key)?;
        officer::parse_officer_id(&officer.id)?;
        names::normalise(&officer.name)
            .map_err(|e| Error::InvalidField { field: "name", why: e.to_string() })?;
        self.write(|c| {
            let roster = replay_roster(c)?;
            if let Some(e) = roster.get(&officer.id) {
                return Err(Error::Roster(format!(
                    "officer key {} is on the roster already (as {}{})",
                    officer::short_id(&e.id),
                    names::escape_for_terminal(&e.name),
                    if e.is_revoked() { ", revoked: make a new key" } else { "" }
                )));
            }
            if let Some(e) =
                roster.entries.iter().find(|e| !e.is_revoked() && names::same_name(&e.name, &officer.name))
            {
                return Err(Error::Roster(format!(
                    "an active officer is named {} already (key {}); names on the roster must differ",
                    names::escape_for_terminal(&e.name),
                    officer::short_id(&e.id)
                )));
            }
            append_audit(c, "officer_add", &Roster::add_payload(&officer.id, &officer.name, role), mac_key)?;
            let roster = replay_roster(c)?;
            Ok(roster.get(&officer.id).cloned().expect("just added"))
        })
    }

    /// Revokes the officer whose id starts with `id_prefix` (at least 8 digits): their
    /// key signs nothing valid from now on.
    pub fn revoke_officer(&mut self, id_prefix: &str, mac_key: &[u8; 32]) -> Result<RosterEntry> {
        self.check_authority(mac_key)?;
        self.write(|c| {
            let roster = replay_roster(c)?;
            let e = roster.find(id_prefix).map_err(Error::Roster)?.clone();
            if e.is_revoked() {
                return Err(Error::Roster(format!(
                    "officer {} is revoked already",
                    names::escape_for_terminal(&e.name)
                )));
            }
            append_audit(c, "officer_revoke", &json!({"officer_id": e.id}), mac_key)?;
            let roster = replay_roster(c)?;
            Ok(roster.get(&e.id).cloned().expect("on the roster"))
        })
    }

    /// A signed checkpoint of the registry as it stands (it must verify, authenticated
    /// with `mac_key`).
    pub fn checkpoint(&self, mac_key: &[u8; 32]) -> Result<Checkpoint> {
        let authority = self.check_authority(mac_key)?;
        let rep = self.verify(Some(mac_key))?;
        if let Some(first) = rep.problems.first() {
            return Err(Error::Unverified { path: self.path.clone(), first: first.clone() });
        }
        let body = approval::CheckpointBody {
            registry: self.key_fingerprint()?,
            authority_key: authority.id(),
            entries: rep.audit_entries as i64,
            head: rep.head,
            made_at: now_secs(),
        };
        Ok(Checkpoint::sign(body, &authority))
    }

    /// Adds to `rep` (from [`Registry::verify`]) everything that shows the registry lost,
    /// truncated or rewrote what it held at checkpoint `cp`.
    pub fn verify_checkpoint(&self, cp: &Checkpoint, rep: &mut VerifyReport) -> Result<()> {
        let b = &cp.body;
        if b.registry != self.key_fingerprint()? {
            rep.problems.push("the checkpoint is for another registry (another unit key)".into());
            return Ok(());
        }
        if rep.authority_key.as_deref() != Some(b.authority_key.as_str()) {
            rep.problems.push(
                "the registry's authority key is not the one that signed the checkpoint (the registry was replaced or rewritten)"
                    .into(),
            );
        }
        let at: Option<String> = self
            .conn
            .query_row("SELECT hash FROM audit WHERE seq = ?1", [b.entries], |r| r.get(0))
            .optional()?;
        if (rep.audit_entries as i64) < b.entries || at.is_none() {
            rep.problems.push(format!(
                "the registry holds {} audit entries, fewer than the {} at the checkpoint of {} (truncated or rolled back)",
                rep.audit_entries,
                b.entries,
                format_utc(b.made_at)
            ));
        } else if at.as_deref() != Some(b.head.as_str()) {
            rep.problems.push(format!(
                "audit entry {} is not the one at the checkpoint of {} (history rewritten)",
                b.entries,
                format_utc(b.made_at)
            ));
        }
        Ok(())
    }

    fn finish(
        &mut self,
        mark_id: &str,
        status: ExportStatus,
        why: Option<&str>,
        mac_key: &[u8; 32],
    ) -> Result<()> {
        let statuses = self.statuses()?;
        if statuses.get(mark_id) != Some(&ExportStatus::Pending) || !self.contains(mark_id)? {
            return Err(Error::NotPending(mark_id.to_string()));
        }
        let mut payload = json!({"mark_id": mark_id});
        if let Some(w) = why {
            payload["why"] = json!(w);
        }
        self.write(|c| append_audit(c, status.as_str(), &payload, mac_key))
    }

    /// Records that the pending export's file took its final name.
    pub fn mark_delivered(&mut self, mark_id: &str, mac_key: &[u8; 32]) -> Result<()> {
        self.finish(mark_id, ExportStatus::Delivered, None, mac_key)
    }

    /// Records that the pending export failed (no file delivered), and why.
    pub fn mark_failed(&mut self, mark_id: &str, why: &str, mac_key: &[u8; 32]) -> Result<()> {
        self.finish(mark_id, ExportStatus::Failed, Some(why), mac_key)
    }

    fn audit_rows(&self) -> Result<Vec<AuditRow>> {
        let mut st =
            self.conn.prepare("SELECT seq, at, action, payload, prev_hash, hash FROM audit ORDER BY seq")?;
        let rows = st
            .query_map([], |r| {
                Ok(AuditRow {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    action: r.get(2)?,
                    payload: r.get(3)?,
                    prev: r.get(4)?,
                    hash: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Status of every export as the audit table says (not verified).
    fn statuses(&self) -> Result<HashMap<String, ExportStatus>> {
        let mut out = HashMap::new();
        for a in self.audit_rows()? {
            let id = serde_json::from_str::<Value>(&a.payload)
                .ok()
                .and_then(|v| v["mark_id"].as_str().map(str::to_string))
                .unwrap_or_default();
            let s = match a.action.as_str() {
                "export" => ExportStatus::Pending,
                "delivered" => ExportStatus::Delivered,
                "failed" => ExportStatus::Failed,
                _ => continue,
            };
            out.insert(id, s);
        }
        Ok(out)
    }

    fn rows(&self) -> Result<Vec<ExportRecord>> {
        let mut st = self.conn.prepare(&format!("SELECT {COLUMNS} FROM exports ORDER BY id"))?;
        let rows = st.query_map([], row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// All export rows, oldest first, as the tables say (not verified: see
    /// [`Registry::verify`] for the rows the audit chain holds).
    pub fn exports(&self) -> Result<Vec<Export>> {
        let statuses = self.statuses()?;
        Ok(self
            .rows()?
            .into_iter()
            .map(|r| Export {
                status: statuses.get(&r.mark_id).copied().unwrap_or(ExportStatus::Pending),
                record: r,
            })
            .collect())
    }

    /// The export whose mark id starts with `prefix` (lower-cased; must be unique).
    pub fn find(&self, prefix: &str) -> Result<Option<Export>> {
        let p = prefix.trim().to_lowercase();
        let mut all: Vec<Export> =
            self.exports()?.into_iter().filter(|e| e.record.mark_id.starts_with(&p)).collect();
        match all.len() {
            0 => Ok(None),
            1 => Ok(all.pop()),
            count => Err(Error::AmbiguousPrefix { prefix: prefix.to_string(), count }),
        }
    }

    /// Recomputes the audit chain from its creation entry, checks every export row against
    /// it (strict, unique mark ids) and the chain's end against the recorded head,
    /// authenticated when the registry subkey `mac_key` is given. Needs no secret otherwise.
    pub fn verify(&self, mac_key: Option<&[u8; 32]>) -> Result<VerifyReport> {
        let mut rep = VerifyReport {
            head: GENESIS.to_string(),
            authenticated: mac_key.is_some(),
            ..Default::default()
        };
        let fp = self.key_fingerprint()?;
        // Payload text per mark id: rows are compared with it as text (the canonical JSON the
        // tool wrote), since parsing floats back may be off by one unit in the last place.
        let mut chain: BTreeMap<String, (String, ExportStatus)> = BTreeMap::new();
        let mut expect_seq = 1;
        let mut created = false;
        let mut authority: Option<String> = None;
        let mut roster = Roster::default();
        let mut used = HashSet::new();
        for a in self.audit_rows()? {
            let seq = a.seq;
            if seq != expect_seq {
                rep.problems.push(format!("audit entry {expect_seq} is missing (next is {seq})"));
            }
            expect_seq = seq + 1;
            if a.prev != rep.head {
                rep.problems.push(format!("audit entry {seq} does not link to the entry before it"));
            }
            if chain_hash(&a.prev, seq, &a.at, &a.action, &a.payload) != a.hash {
                rep.problems.push(format!("audit entry {seq} was altered (hash mismatch)"));
            }
            rep.head = a.hash.clone();
            rep.audit_entries += 1;
            let Ok(v) = serde_json::from_str::<Value>(&a.payload) else {
                rep.problems.push(format!("audit entry {seq} holds no valid record"));
                continue;
            };
            let id = v["mark_id"].as_str().unwrap_or_default().to_string();
            match a.action.as_str() {
                "create" => {
                    if seq != 1 || created {
                        rep.problems.push(format!("audit entry {seq} creates the registry a second time"));
                    }
                    created = true;
                    authority = v["authority_key"].as_str().map(str::to_string);
                    if v["key_fingerprint"].as_str() != Some(fp.as_str()) {
                        rep.problems.push(
                            "the registry's key fingerprint differs from the one it was created with".into(),
                        );
                    }
                }
                "authority" => {
                    if authority.is_some() || roster.exists() {
                        rep.problems.push(format!("audit entry {seq} replaces the registry's authority key"));
                    }
                    authority = v["authority_key"].as_str().map(str::to_string);
                }
                "officer_add" | "officer_revoke" => {
                    if authority.is_none() {
                        rep.problems
                            .push(format!("audit entry {seq} changes the roster before any authority key"));
                    }
                    let t = roster::parse_utc(&a.at).unwrap_or(i64::MIN);
                    if let Err(w) = roster.apply(&a.action, &v, t) {
                        rep.problems.push(format!("audit entry {seq}: {w}"));
                    }
                }
                "export" => {
                    match v["approval"].as_str() {
                        None if roster.exists() => rep.problems.push(format!(
                            "export {id} has only a declared approval although the registry has a roster"
                        )),
                        None => {}
                        Some(text) => match Approval::from_file_text(text) {
                            Err(e) => {
                                rep.problems.push(format!("export {id}: its approval does not verify: {e}"))
                            }
                            Ok(ap) => {
                                let t = roster::parse_utc(&a.at).unwrap_or(i64::MAX);
                                if let Err(w) = roster.check(&ap, t) {
                                    rep.problems.push(format!("export {id}: {w}"));
                                }
                                if !used.insert(ap.request.digest()) {
                                    rep.problems.push(format!("export {id} reuses an approval used before"));
                                }
                            }
                        },
                    }
                    if parse_mark_id(&id).is_err() {
                        rep.problems.push(format!("audit entry {seq} holds a malformed mark id {id:?}"));
                    } else if let std::collections::btree_map::Entry::Vacant(slot) = chain.entry(id.clone()) {
                        slot.insert((a.payload.clone(), ExportStatus::Pending));
                    } else {
                        rep.problems.push(format!("audit entry {seq} registers mark id {id} a second time"));
                    }
                }
                "delivered" | "failed" => match chain.get_mut(&id) {
                    Some((_, s)) if *s == ExportStatus::Pending => {
                        *s = if a.action == "delivered" {
                            ExportStatus::Delivered
                        } else {
                            ExportStatus::Failed
                        };
                    }
                    _ => rep
                        .problems
                        .push(format!("audit entry {seq} settles mark id {id:?}, which is not pending")),
                },
                other => rep.problems.push(format!("audit entry {seq} has an unknown action {other:?}")),
            }
        }
        if !created {
            rep.problems.push(
                "the registry's creation entry is missing (the audit log was emptied or cut at the start)"
                    .into(),
            );
        }
        let mut seen = HashSet::new();
        for r in self.rows()? {
            rep.export_rows += 1;
            if parse_mark_id(&r.mark_id).is_err() {
                rep.problems.push(format!(
                    "export row with malformed mark id {:?} (inserted behind the tool's back)",
                    r.mark_id
                ));
                continue;
            }
            if !seen.insert(r.mark_id.clone()) {
                rep.problems.push(format!("mark id {} appears in more than one export row", r.mark_id));
                continue;
            }
            let row_text = r.to_json().to_string();
            match chain.get(&r.mark_id) {
                None => rep.problems.push(format!(
                    "export {} has no audit entry (inserted behind the tool's back)",
                    r.mark_id
                )),
                Some((text, _)) if *text != row_text => {
                    rep.problems.push(format!("export {} differs from its audit entry (edited)", r.mark_id))
                }
                Some((_, status)) => {
                    if let Some(text) = &r.approval {
                        if let Ok(ap) = Approval::from_file_text(text) {
                            match approval_matches(&ap, &r) {
                                Ok(()) => rep.signed_approvals += 1,
                                Err(w) => rep.problems.push(format!("export {}: {w}", r.mark_id)),
                            }
                        }
                    }
                    rep.exports.push(Export { status: *status, record: r })
                }
            }
        }
        for id in chain.keys().filter(|id| !seen.contains(*id)) {
            rep.problems
                .push(format!("export {id} is in the audit log but missing from the exports (deleted)"));
        }
        let (seq, hash, mac) = (self.meta("head_seq")?, self.meta("head_hash")?, self.meta("head_mac")?);
        let last_seq = (expect_seq - 1).to_string();
        if seq.as_deref() != Some(last_seq.as_str()) || hash.as_deref() != Some(rep.head.as_str()) {
            rep.problems.push(format!(
                "the audit log ends at entry {last_seq} but the recorded head is entry {} (entries removed)",
                seq.as_deref().unwrap_or("none")
            ));
        }
        if let Some(k) = &authority {
            let recorded = seq.as_deref().and_then(|s| s.parse().ok()).unwrap_or(-1);
            let sig = self.meta("head_sig")?.unwrap_or_default();
            let msg = head_message(recorded, hash.as_deref().unwrap_or(""));
            if officer::verify_signature(k, HEAD_CONTEXT, msg.as_bytes(), &sig, "head").is_ok() {
                rep.head_signed = true;
            } else {
                rep.problems.push(
                    "the recorded head is not signed by the registry's authority key (forged or rolled back)"
                        .into(),
                );
            }
        }
        rep.roster = roster;
        rep.authority_key = authority;
        if let Some(key) = mac_key {
            let recorded = seq.as_deref().and_then(|s| s.parse().ok()).unwrap_or(-1);
            let want = head_mac(key, recorded, hash.as_deref().unwrap_or(""));
            if mac.as_deref() != Some(want.as_str()) {
                rep.problems
                    .push("the recorded head is not authentic for this key (forged or rolled back)".into());
            }
        }
        Ok(rep)
    }
}

/// Appends an audit entry and moves the authenticated head (inside the caller's
/// transaction).
fn append_audit(c: &Connection, action: &str, payload: &Value, mac_key: &[u8; 32]) -> Result<()> {
    let last: Option<(i64, String)> = c
        .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let (seq, prev) = last.map_or((1, GENESIS.to_string()), |(s, h)| (s + 1, h));
    let payload = payload.to_string();
    let at = now_utc();
    let hash = chain_hash(&prev, seq, &at, action, &payload);
    c.execute(
        "INSERT INTO audit (seq, at, action, payload, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![seq, at, action, payload, prev, hash],
    )?;
    for (k, v) in [
        ("head_seq", seq.to_string()),
        ("head_hash", hash.clone()),
        ("head_mac", head_mac(mac_key, seq, &hash)),
        ("head_sig", officer::authority_key(mac_key).sign(HEAD_CONTEXT, head_message(seq, &hash).as_bytes())),
    ] {
        c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", params![k, v])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod officer_tests;
