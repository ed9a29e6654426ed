//! The export registry: one SQLite file with the exports and an append-only, hash-chained
//! audit log. Every write is one transaction; WAL and a busy timeout let two exports run at
//! once. The registry remembers the fingerprint of the key it was made with and refuses
//! any other key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Schema version written to `meta`.
pub const SCHEMA_VERSION: i64 = 1;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One export as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportRecord {
    pub mark_id: String,
    pub recipient: String,
    pub officer: String,
    pub approved_by: String,
    pub case_ref: Option<String>,
    pub reason: Option<String>,
    pub source_path: String,
    pub source_sha256: String,
    pub output_path: String,
    pub output_sha256: String,
    pub frames: i64,
    pub duration_s: Option<f64>,
    pub width: i64,
    pub height: i64,
    pub embed_params: String,
    pub key_fingerprint: String,
    pub created_at: String,
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
        })
    }
}

/// An open registry.
pub struct Registry {
    conn: Connection,
    path: PathBuf,
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub exports: usize,
    pub audit_rows: usize,
    pub head: String,
    pub problems: Vec<String>,
}

fn is_sqlite(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open registry {}", path.display()))?;
    let mut head = [0u8; 16];
    let n = f.read(&mut head)?;
    Ok(n == 0 || (n == 16 && &head == b"SQLite format 3\0"))
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8; 32], msg: &[u8]) -> String {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(key);
    let (mut inner, mut outer) = (Sha256::new(), Sha256::new());
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn head_mac(key: &[u8; 32], seq: i64, head: &str) -> String {
    hmac(key, format!("{seq}\0{head}").as_bytes())
}

fn chain_hash(prev: &str, seq: i64, at: &str, action: &str, payload: &str) -> String {
    let mut h = Sha256::new();
    for part in [prev, &seq.to_string(), at, action, payload] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Current UTC time as RFC 3339 (seconds).
pub fn now_utc() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
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

impl Registry {
    fn connect(path: &Path) -> Result<Connection> {
        let conn =
            Connection::open(path).with_context(|| format!("cannot open registry {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL").with_context(|| {
            format!("{} is not a tracemark registry (not an SQLite database)", path.display())
        })?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(conn)
    }

    /// Opens the registry at `path`, creating it (for `key_fingerprint`) if it does not
    /// exist. Refuses a file that is not a registry or was made with another key.
    pub fn open_or_create(path: &Path, key_fingerprint: &str) -> Result<Self> {
        if path.exists() && !is_sqlite(path)? {
            bail!("{} is not a tracemark registry (not an SQLite database)", path.display());
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                bail!("registry directory {} does not exist", dir.display());
            }
        }
        let mut conn = Self::connect(path)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS exports (
                 id INTEGER PRIMARY KEY,
                 mark_id TEXT NOT NULL UNIQUE,
                 recipient TEXT NOT NULL, officer TEXT NOT NULL, approved_by TEXT NOT NULL,
                 case_ref TEXT, reason TEXT,
                 source_path TEXT NOT NULL, source_sha256 TEXT NOT NULL,
                 output_path TEXT NOT NULL, output_sha256 TEXT NOT NULL,
                 frames INTEGER NOT NULL, duration_s REAL, width INTEGER NOT NULL, height INTEGER NOT NULL,
                 embed_params TEXT NOT NULL, key_fingerprint TEXT NOT NULL, created_at TEXT NOT NULL);
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
                 BEGIN SELECT RAISE(ABORT, 'exports are append-only'); END;",
        )?;
        let fp: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'key_fingerprint'", [], |r| r.get(0))
            .optional()?;
        match fp {
            None => {
                tx.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?1)", [SCHEMA_VERSION.to_string()])?;
                tx.execute("INSERT INTO meta (key, value) VALUES ('key_fingerprint', ?1)", [key_fingerprint])?;
                tx.execute("INSERT INTO meta (key, value) VALUES ('created_at', ?1)", [now_utc()])?;
            }
            Some(fp) if fp != key_fingerprint => bail!(
                "registry {} was made with key {fp}, not with this key ({key_fingerprint}); use the key it was made with",
                path.display()
            ),
            Some(_) => {}
        }
        let version: i64 = tx.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| {
            r.get::<_, String>(0).map(|v| v.parse().unwrap_or(-1))
        })?;
        if version != SCHEMA_VERSION {
            bail!(
                "registry {} has schema version {version}; this build reads version {SCHEMA_VERSION}",
                path.display()
            );
        }
        tx.commit()?;
        Ok(Self { conn, path: path.to_path_buf() })
    }

    /// Opens an existing registry (never creates one).
    pub fn open_existing(path: &Path, key_fingerprint: &str) -> Result<Self> {
        if !path.exists() {
            bail!(
                "registry {} does not exist; pass the registry the exports were recorded in",
                path.display()
            );
        }
        if std::fs::metadata(path)?.len() == 0 {
            bail!("{} is empty, not a tracemark registry", path.display());
        }
        Self::open_or_create(path, key_fingerprint)
    }

    /// Opens a registry for reading without knowing the key (list/show/verify).
    pub fn open_readonly(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!("registry {} does not exist", path.display());
        }
        if !is_sqlite(path)? || std::fs::metadata(path)?.len() == 0 {
            bail!("{} is not a tracemark registry (not an SQLite database)", path.display());
        }
        let conn = Self::connect(path)?;
        let has: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('meta', 'exports', 'audit')",
            [],
            |r| r.get(0),
        )?;
        if has != 3 {
            bail!("{} is an SQLite database but not a tracemark registry", path.display());
        }
        Ok(Self { conn, path: path.to_path_buf() })
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a mark id is taken.
    pub fn contains(&self, mark_id: &str) -> Result<bool> {
        Ok(self.conn.query_row("SELECT count(*) FROM exports WHERE mark_id = ?1", [mark_id], |r| {
            r.get::<_, i64>(0)
        })? > 0)
    }

    /// Records an export and its audit entry in one transaction, and moves the chain head
    /// (authenticated with `mac_key`, so truncating the log is evident to key holders).
    pub fn insert_export(&mut self, rec: &ExportRecord, mac_key: &[u8; 32]) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO exports (mark_id, recipient, officer, approved_by, case_ref, reason, source_path,
                 source_sha256, output_path, output_sha256, frames, duration_s, width, height, embed_params,
                 key_fingerprint, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
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
                rec.created_at
            ],
        )?;
        let last: Option<(i64, String)> = tx
            .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let (seq, prev) = last.map_or((1, GENESIS.to_string()), |(s, h)| (s + 1, h));
        let payload = rec.to_json().to_string();
        let at = now_utc();
        let hash = chain_hash(&prev, seq, &at, "export", &payload);
        tx.execute(
            "INSERT INTO audit (seq, at, action, payload, prev_hash, hash) VALUES (?1, ?2, 'export', ?3, ?4, ?5)",
            params![seq, at, payload, prev, hash],
        )?;
        for (k, v) in [
            ("head_seq", seq.to_string()),
            ("head_hash", hash.clone()),
            ("head_mac", head_mac(mac_key, seq, &hash)),
        ] {
            tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", params![k, v])?;
        }
        tx.commit()?;
        Ok(())
    }

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
        })
    }

    const COLUMNS: &'static str = "mark_id, recipient, officer, approved_by, case_ref, reason, source_path, \
        source_sha256, output_path, output_sha256, frames, duration_s, width, height, embed_params, \
        key_fingerprint, created_at";

    /// All exports, oldest first.
    pub fn exports(&self) -> Result<Vec<ExportRecord>> {
        let mut st = self.conn.prepare(&format!("SELECT {} FROM exports ORDER BY id", Self::COLUMNS))?;
        let rows = st.query_map([], Self::row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The export whose mark id starts with `prefix` (must be unique).
    pub fn find(&self, prefix: &str) -> Result<Option<ExportRecord>> {
        let all: Vec<ExportRecord> =
            self.exports()?.into_iter().filter(|e| e.mark_id.starts_with(&prefix.to_lowercase())).collect();
        match all.len() {
            0 => Ok(None),
            1 => Ok(all.into_iter().next()),
            n => bail!("{n} exports start with {prefix:?}; give more digits"),
        }
    }

    /// Re-computes the audit chain and checks every export against it, and the chain's end
    /// against the recorded head (authenticated when `mac_key` is given).
    pub fn verify(&self, mac_key: Option<&[u8; 32]>) -> Result<VerifyReport> {
        let mut rep = VerifyReport { head: GENESIS.to_string(), ..Default::default() };
        let mut st =
            self.conn.prepare("SELECT seq, at, action, payload, prev_hash, hash FROM audit ORDER BY seq")?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut audited = std::collections::BTreeMap::new();
        let mut expect_seq = 1;
        for (seq, at, action, payload, prev, hash) in rows {
            if seq != expect_seq {
                rep.problems.push(format!("audit entry {expect_seq} is missing (next is {seq})"));
            }
            expect_seq = seq + 1;
            if prev != rep.head {
                rep.problems.push(format!("audit entry {seq} does not link to the entry before it"));
            }
            if chain_hash(&prev, seq, &at, &action, &payload) != hash {
                rep.problems.push(format!("audit entry {seq} was altered (hash mismatch)"));
            }
            rep.head = hash;
            rep.audit_rows += 1;
            if action == "export" {
                match serde_json::from_str::<Value>(&payload) {
                    Ok(v) => {
                        let id = v["mark_id"].as_str().unwrap_or_default().to_string();
                        audited.insert(id, v);
                    }
                    Err(_) => rep.problems.push(format!("audit entry {seq} holds no valid record")),
                }
            }
        }
        for e in self.exports()? {
            rep.exports += 1;
            match audited.remove(&e.mark_id) {
                None => rep.problems.push(format!(
                    "export {} has no audit entry (inserted behind the tool's back)",
                    e.mark_id
                )),
                Some(v) if v != e.to_json() => {
                    rep.problems.push(format!("export {} differs from its audit entry (edited)", e.mark_id))
                }
                Some(_) => {}
            }
        }
        for id in audited.keys() {
            rep.problems
                .push(format!("export {id} is in the audit log but missing from the exports (deleted)"));
        }
        let meta = |k: &str| -> Result<Option<String>> {
            Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0)).optional()?)
        };
        let (seq, hash, mac) = (meta("head_seq")?, meta("head_hash")?, meta("head_mac")?);
        let last_seq = (expect_seq - 1).to_string();
        if rep.audit_rows > 0 || seq.is_some() {
            if seq.as_deref() != Some(last_seq.as_str()) || hash.as_deref() != Some(rep.head.as_str()) {
                rep.problems.push(format!(
                    "the audit log ends at entry {last_seq} but the recorded head is entry {} (entries removed)",
                    seq.as_deref().unwrap_or("none")
                ));
            }
            if let Some(key) = mac_key {
                let recorded = seq.as_deref().and_then(|s| s.parse().ok()).unwrap_or(-1);
                let want = head_mac(key, recorded, hash.as_deref().unwrap_or(""));
                if mac.as_deref() != Some(want.as_str()) {
                    rep.problems.push(
                        "the recorded head is not authentic for this key (forged or rolled back)".into(),
                    );
                }
            }
        }
        Ok(rep)
    }
}
