//! `officer`, `request` and `approve`: officer keys, the roster and the signed four-eyes
//! flow (see `tracemark_registry::approval`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use tracemark_core::key::Purpose;
use tracemark_core::output::{check_output, write_new_file, TempOutput};
use tracemark_registry::officer::short_id;
use tracemark_registry::{
    self as registry, names, Approval, OfficerKey, OfficerPublic, Registry, Request, RequestBody, Role,
};

use crate::{load_key, sha256_file};

/// Longest key, request, approval or checkpoint file read (they are a few kB).
const MAX_SMALL_FILE: u64 = 1 << 20;

/// `tracemark officer ...`
#[derive(clap::Subcommand, Debug)]
pub(crate) enum OfficerAction {
    /// Make an officer's key pair: FILE (secret, encrypted with a passphrase, mode 0600)
    /// and FILE.pub (to hand to whoever keeps the roster). Never overwrites.
    Keygen {
        /// The officer's name as it will appear on the roster and in exports.
        #[arg(long)]
        name: String,
        /// Where to write the secret key (FILE.pub goes beside it).
        #[arg(long)]
        out: PathBuf,
        /// Read the passphrase from the first line of this file instead of a prompt.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Put an officer (their FILE.pub) on the registry's roster, with a role.
    Add {
        /// The export registry (created if missing).
        #[arg(long)]
        registry: PathBuf,
        /// The unit's key file (authorises the roster change).
        #[arg(long)]
        key: PathBuf,
        /// `exporter` (may request exports) or `approver` (may also approve them).
        #[arg(long, value_parser = ["exporter", "approver"])]
        role: String,
        /// The officer's public key file.
        public_key: PathBuf,
    },
    /// List the roster, as the verified audit chain holds it.
    List {
        /// The export registry.
        #[arg(long)]
        registry: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an officer's key: it signs nothing valid from now on.
    Revoke {
        /// The export registry.
        #[arg(long)]
        registry: PathBuf,
        /// The unit's key file (authorises the roster change).
        #[arg(long)]
        key: PathBuf,
        /// The officer id (or its first 8+ digits; see `officer list`).
        officer_id: String,
    },
}

/// Arguments of `tracemark request`.
#[derive(clap::Args, Debug)]
pub(crate) struct RequestArgs {
    /// The export registry the export will be recorded in.
    #[arg(long)]
    registry: PathBuf,
    /// Your officer key (the secret file from `officer keygen`).
    #[arg(long)]
    officer_key: PathBuf,
    /// Read the passphrase from the first line of this file instead of a prompt.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Who is to receive the copy.
    #[arg(long)]
    recipient: String,
    /// Case reference.
    #[arg(long = "case")]
    case_ref: Option<String>,
    /// Why the clip is to leave.
    #[arg(long)]
    reason: Option<String>,
    /// How long the request (and its approval) may be used.
    #[arg(long, default_value_t = 24,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(registry::approval::MAX_VALID_HOURS)))]
    valid_hours: u32,
    /// The clip to export.
    input: PathBuf,
    /// Where to write the signed request.
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `tracemark approve`.
#[derive(clap::Args, Debug)]
pub(crate) struct ApproveArgs {
    /// Your officer key (the secret file from `officer keygen`).
    #[arg(long)]
    officer_key: PathBuf,
    /// Read the passphrase from the first line of this file instead of a prompt (and do
    /// not ask for confirmation).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// The request to approve.
    request: PathBuf,
    /// Where to write the signed approval.
    #[arg(long)]
    out: PathBuf,
}

/// Reads a small regular file as text (refuses FIFOs, devices and huge files).
pub(crate) fn read_small_file(path: &Path, what: &str) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    if !meta.is_file() {
        bail!("{what} {} is not a regular file", path.display());
    }
    if meta.len() > MAX_SMALL_FILE {
        bail!("{what} {} is too large ({} bytes) to be one", path.display(), meta.len());
    }
    let bytes = std::fs::read(path).with_context(|| format!("{what} {}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| anyhow!("{what} {} is not UTF-8 text", path.display()))
}

/// The passphrase: the first line of `file`, or typed at the terminal (twice when
/// `confirm`).
fn passphrase(file: Option<&Path>, prompt: &str, confirm: bool) -> Result<String> {
    if let Some(f) = file {
        let text = read_small_file(f, "passphrase file")?;
        let line = text.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            bail!("passphrase file {} has an empty first line", f.display());
        }
        return Ok(line);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the passphrase: pass --passphrase-file FILE (its first line is the passphrase)");
    }
    let p = rpassword::prompt_password(prompt).context("reading the passphrase")?;
    if confirm
        && rpassword::prompt_password("Same passphrase again: ").context("reading the passphrase")? != p
    {
        bail!("the two passphrases differ; nothing was written");
    }
    Ok(p)
}

/// Opens an officer's secret key file.
fn open_officer_key(path: &Path, passphrase_file: Option<&Path>) -> Result<OfficerKey> {
    let text = read_small_file(path, "officer key")?;
    if OfficerPublic::from_file_text(&text).is_ok() {
        bail!("{} is an officer's public key; pass the secret key file (without .pub)", path.display());
    }
    let pass = passphrase(passphrase_file, &format!("Passphrase for {}: ", path.display()), false)?;
    OfficerKey::open(&text, &pass).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Writes a new private file (mode 0600) without ever replacing one: a temporary beside
/// it, then committed under the final name (which fails if the name exists).
fn write_new_private(output: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    check_output(&[], output, false).map_err(|e| anyhow!("{e}"))?;
    let tmp = TempOutput::next_to(output);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp.path())
        .with_context(|| format!("cannot write {}", output.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", output.display()))?;
    drop(f);
    tmp.commit(output, false).map_err(|e| anyhow!("{e}; nothing was overwritten"))
}

fn pub_path(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

pub(crate) fn officer(action: OfficerAction) -> Result<()> {
    match action {
        OfficerAction::Keygen { name, out, passphrase_file } => {
            names::normalise(&name).map_err(|e| anyhow!("--name {e}"))?;
            let public_path = pub_path(&out);
            for p in [&out, &public_path] {
                check_output(&[], p, false).map_err(|e| anyhow!("{e}"))?;
            }
            let pass = passphrase(passphrase_file.as_deref(), &format!("New passphrase for {name}: "), true)?;
            let key = OfficerKey::generate(&name)?;
            let sealed = key.seal(&pass)?;
            write_new_private(&out, sealed.as_bytes())?;
            if let Err(e) = write_new_file(&[&out], &public_path, key.public().to_file_text().as_bytes()) {
                let _ = std::fs::remove_file(&out);
                bail!("{e}; nothing was written");
            }
            out!(
                "wrote officer key {} (secret, keep it on your machine) and {} (give this to the roster keeper); officer id {}",
                out.display(),
                public_path.display(),
                key.id()
            );
        }
        OfficerAction::Add { registry: db, key, role, public_key } => {
            let public = OfficerPublic::from_file_text(&read_small_file(&public_key, "officer public key")?)
                .map_err(|e| anyhow!("{}: {e}", public_key.display()))?;
            let role = Role::parse(&role).expect("clap checked the role");
            let unit = load_key(&key)?;
            let mac_key = unit.subkey(Purpose::Registry);
            let mut reg = Registry::open_or_create(&db, &unit.fingerprint(), &mac_key, None)?;
            let e = reg.add_officer(&public, role, &mac_key)?;
            out!(
                "added {} as {} (officer id {}) to {}",
                names::escape_for_terminal(&e.name),
                e.role.as_str(),
                e.id,
                db.display()
            );
        }
        OfficerAction::List { registry: db, json } => {
            let reg = Registry::open_read_only(&db)?;
            let rep = reg.verify(None)?;
            if json {
                let list: Vec<_> = rep
                    .roster
                    .entries
                    .iter()
                    .map(|e| {
                        json!({"officer_id": e.id, "name": e.name, "role": e.role.as_str(),
                               "added_at": registry::format_utc(e.added_at),
                               "revoked_at": e.revoked_at.map(registry::format_utc)})
                    })
                    .collect();
                out!("{}", json!({"officers": list, "registry_verified": rep.is_ok()}));
            } else {
                if !rep.is_ok() {
                    out!(
                        "WARNING: the registry FAILED verification ({} problem(s)); run `tracemark registry verify`",
                        rep.problems.len()
                    );
                }
                if rep.roster.entries.is_empty() {
                    out!("no officers on the roster: exports use declared approvals (approval declared, not signed)");
                }
                for e in &rep.roster.entries {
                    out!(
                        "{}  {:<24}  {:<8}  added {}{}",
                        short_id(&e.id),
                        names::escape_for_terminal(&e.name),
                        e.role.as_str(),
                        registry::format_utc(e.added_at),
                        e.revoked_at
                            .map(|r| format!("  REVOKED {}", registry::format_utc(r)))
                            .unwrap_or_default()
                    );
                }
            }
        }
        OfficerAction::Revoke { registry: db, key, officer_id } => {
            let unit = load_key(&key)?;
            let mac_key = unit.subkey(Purpose::Registry);
            Registry::open_read_only(&db)?.check_key(&unit.fingerprint())?;
            let mut reg = Registry::open_or_create(&db, &unit.fingerprint(), &mac_key, None)?;
            let e = reg.revoke_officer(officer_id.trim(), &mac_key)?;
            out!("revoked {} (officer id {})", names::escape_for_terminal(&e.name), e.id);
        }
    }
    Ok(())
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64
}

pub(crate) fn request(a: RequestArgs) -> Result<()> {
    check_output(&[&a.input, &a.registry, &a.officer_key], &a.out, false).map_err(|e| anyhow!("{e}"))?;
    for (flag, v) in [
        ("--recipient", Some(&a.recipient)),
        ("--case", a.case_ref.as_ref()),
        ("--reason", a.reason.as_ref()),
    ] {
        if let Some(v) = v {
            names::normalise(v).map_err(|e| anyhow!("{flag} {e}"))?;
        }
    }
    let reg = Registry::open_read_only(&a.registry)?;
    let rep = reg.verify(None)?;
    if !rep.is_ok() {
        bail!(
            "registry {} FAILED verification ({}); run `tracemark registry verify`",
            a.registry.display(),
            rep.problems[0]
        );
    }
    let key = open_officer_key(&a.officer_key, a.passphrase_file.as_deref())?;
    match rep.roster.get(&key.id()) {
        None => bail!(
            "your key ({}) is not on the roster of {}: ask for `tracemark officer add` with your .pub file",
            short_id(&key.id()),
            a.registry.display()
        ),
        Some(e) if e.is_revoked() => bail!("your key ({}) was revoked on this registry", short_id(&e.id)),
        Some(_) => {}
    }
    let meta = std::fs::metadata(&a.input).with_context(|| format!("input {}", a.input.display()))?;
    if !meta.is_file() {
        bail!("input {} is not a regular file", a.input.display());
    }
    let t = now();
    let body = RequestBody {
        registry: reg.key_fingerprint()?,
        source_sha256: sha256_file(&a.input)?,
        source_name: a.input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        recipient: a.recipient.trim().to_string(),
        case_ref: a.case_ref.map(|s| s.trim().to_string()),
        reason: a.reason.map(|s| s.trim().to_string()),
        requested_at: t,
        expires_at: t + i64::from(a.valid_hours) * 3600,
        nonce: Request::new_nonce(),
        requester_id: key.id(),
        requester_name: key.name().to_string(),
    };
    let req = Request::sign(body, &key)?;
    write_new_file(&[&a.input, &a.registry, &a.officer_key], &a.out, req.to_file_text().as_bytes())
        .map_err(|e| anyhow!("{e}"))?;
    out!(
        "wrote request {} for {} (valid until {}); a senior officer approves it with `tracemark approve`",
        a.out.display(),
        names::escape_for_terminal(&req.body.recipient),
        registry::format_utc(req.body.expires_at)
    );
    Ok(())
}

pub(crate) fn approve(a: ApproveArgs) -> Result<()> {
    check_output(&[&a.request, &a.officer_key], &a.out, false).map_err(|e| anyhow!("{e}"))?;
    let req = Request::from_file_text(&read_small_file(&a.request, "request")?)
        .map_err(|e| anyhow!("{}: {e}", a.request.display()))?;
    eprintln!("You are asked to approve this export:");
    for (k, v) in req.describe() {
        eprintln!("  {k:>13}: {v}");
    }
    let key = open_officer_key(&a.officer_key, a.passphrase_file.as_deref())?;
    if a.passphrase_file.is_none() && std::io::stdin().is_terminal() {
        eprint!("Approve it as {}? [y/N] ", names::escape_for_terminal(key.name()));
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("not approved; nothing was written");
        }
    }
    let approval = Approval::sign(&req, &key, now())?;
    write_new_file(&[&a.request, &a.officer_key], &a.out, approval.to_file_text().as_bytes())
        .map_err(|e| anyhow!("{e}"))?;
    out!(
        "wrote approval {}; the exporting officer runs `tracemark embed --approval {}`",
        a.out.display(),
        a.out.display()
    );
    Ok(())
}
