//! The `tracemark` command-line tool: a thin layer over `tracemark-core` (embedding) and
//! `tracemark-extract` (tracing), plus the export registry.

/// `println!` for the program's output: when the reader has gone (`tracemark trace --json |
/// head -c 100`) the program ends quietly, as a Unix tool killed by SIGPIPE does (status
/// 141), instead of panicking; not with success, which could hide a failure it had yet to
/// report (`registry verify | head -1`).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::print_line(format_args!($($arg)*))
    };
}

mod inputs;
mod officer;
mod report;
mod selfcheck;
mod signals;

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use tracemark_core::key::Purpose;
use tracemark_core::layout::Scheme;
use tracemark_core::output::{check_output, write_new_file};
use tracemark_core::video::{transcode_with_commit, TranscodeConfig};
use tracemark_core::{EmbedConfig, Embedder, MarkId, MasterKey, Progress};
use tracemark_extract::trace::{
    trace_blind, trace_informed, RecordSource, Registration, TraceConfig, TraceResult, DEFAULT_MEMORY_BUDGET,
    DEFAULT_WHOLE_MARK_CANDIDATES,
};
use tracemark_extract::Candidate;

use tracemark_registry::{self as registry, names, Export, ExportRecord, ExportStatus, Registry};

const EXAMPLES: &str = "\
Examples:
  tracemark keygen --out unit.key
  tracemark embed --key unit.key --registry exports.db --recipient channel-A \\
      --officer 'PC Smith' --approved-by 'Insp. Jones' --case CR-2031 cam3.avi copy-A.mp4
  tracemark trace --key unit.key --registry exports.db --original cam3.avi aired.mp4 --report evidence.html
  tracemark registry verify --registry exports.db";

/// Forensic video watermarking: mark every exported copy, trace leaks to their recipient.
#[derive(Parser, Debug)]
#[command(name = "tracemark", version, about, after_help = EXAMPLES)]
struct Cli {
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new secret key file (mode 0600; never overwrites).
    Keygen {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Export a marked copy of a clip for one recipient and record it in the registry.
    Embed(EmbedArgs),
    /// Find out which export a leaked clip came from.
    Trace {
        /// The unit's key file.
        #[arg(long)]
        key: PathBuf,
        /// The export registry.
        #[arg(long)]
        registry: PathBuf,
        /// The source clip the exports were made from (informed mode: stronger).
        #[arg(long)]
        original: Option<PathBuf>,
        /// Family-wise false-positive probability needed to name an export.
        #[arg(long, default_value_t = 1e-6)]
        threshold: f64,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Write a self-contained HTML evidence report.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Trace even if the registry fails verification, naming recipients from rows the
        /// audit chain does not vouch for (the output and report then say so).
        #[arg(long)]
        trust_unverified_registry: bool,
        /// Memory an informed trace may use to keep decoded frames so that each file is
        /// decoded once; past it, frames are decoded again (slower, same result).
        #[arg(long, value_name = "MB", default_value_t = DEFAULT_MEMORY_BUDGET >> 20)]
        memory_mb: usize,
        /// When the blind pilot search names nobody, search for each export's whole mark
        /// (pilot and codeword: finds fainter marks) if the registry holds at most this
        /// many exports of the key; each costs about one more search (0 = never).
        #[arg(long, value_name = "N", default_value_t = DEFAULT_WHOLE_MARK_CANDIDATES)]
        whole_mark_candidates: usize,
        /// The leaked clip.
        leaked: PathBuf,
    },
    /// Inspect and verify the registry.
    Registry {
        #[command(subcommand)]
        action: RegistryAction,
    },
    /// Officer keys and the registry's roster of who may request and approve exports.
    Officer {
        #[command(subcommand)]
        action: officer::OfficerAction,
    },
    /// Ask for an export (exporting officer): writes a signed request for an approver.
    Request(officer::RequestArgs),
    /// Approve a request (senior officer, on their own machine): writes a signed approval.
    Approve(officer::ApproveArgs),
}

#[derive(Subcommand, Debug)]
enum RegistryAction {
    /// List all exports.
    List {
        #[arg(long)]
        registry: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Show one export (by mark id or a unique prefix).
    Show {
        id: String,
        #[arg(long)]
        registry: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check the audit chain and every export against it.
    Verify {
        #[arg(long)]
        registry: PathBuf,
        /// The unit's key: also authenticates the end of the chain (catches truncation
        /// even by someone who rewrote the bookkeeping).
        #[arg(long)]
        key: Option<PathBuf>,
        /// A checkpoint from `registry checkpoint`: fails on anything removed, truncated
        /// or rolled back up to it (needs no secret).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Write a signed checkpoint (entry count and head) for an auditor to keep elsewhere.
    Checkpoint {
        #[arg(long)]
        registry: PathBuf,
        /// The unit's key file (signs the checkpoint).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the checkpoint (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Writes one line of output (see [`out!`]).
fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(128 + 13);
        }
        panic!("failed printing to stdout: {e}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // FFmpeg's own messages would break the one-line error contract: errors come back as
    // values and are reported by us. (Process-wide; the libraries leave it alone.)
    tracemark_core::video::ffmpeg_next::util::log::set_level(
        tracemark_core::video::ffmpeg_next::util::log::Level::Fatal,
    );
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the chain of causes joined.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("tracemark: error: {msg}");
            if let Some(i) = e.downcast_ref::<Interrupted>() {
                ExitCode::from(signals::exit_code(i.signal))
            } else if matches!(e.downcast_ref::<registry::Error>(), Some(registry::Error::Interrupted)) {
                ExitCode::from(signals::exit_code(signals::received()))
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// The export was stopped by a signal (the one received, if known).
#[derive(Debug)]
struct Interrupted {
    signal: Option<i32>,
}
impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interrupted by {}: no output was written and nothing was registered",
            signals::name(self.signal)
        )
    }
}
impl std::error::Error for Interrupted {}

fn run(cli: Cli) -> Result<ExitCode> {
    let show_progress = !cli.quiet && std::io::stderr().is_terminal();
    match cli.command {
        Command::Keygen { out } => {
            let key = MasterKey::generate();
            key.save_new(&out)?;
            out!(
                "wrote key {} (fingerprint {}); keep it secret, keep a backup",
                out.display(),
                key.fingerprint()
            );
        }
        Command::Embed(args) => embed(args, show_progress)?,
        Command::Trace {
            key: key_path,
            registry,
            original,
            threshold,
            json,
            report,
            trust_unverified_registry,
            memory_mb,
            whole_mark_candidates,
            leaked,
        } => {
            // The evidence report is a new file: never over an input or an earlier report.
            let mut inputs = vec![leaked.as_path(), registry.as_path(), key_path.as_path()];
            inputs.extend(original.as_deref());
            if let Some(path) = &report {
                check_output(&inputs, path, false).context("--report")?;
            }
            let key = load_key(&key_path)?;
            let reg = Registry::open_read_only(&registry)?;
            reg.check_key(&key.fingerprint())?;
            let trust = verified_exports(&reg, &key, trust_unverified_registry)?;
            let (candidates, unreadable) = candidates(&trust.exports);
            if !unreadable.is_empty() {
                eprintln!(
                    "tracemark: warning: {} export(s) use a mark layout this build cannot read and are not tested (first: {}); trace with a newer tracemark",
                    unreadable.len(),
                    unreadable[0]
                );
            }
            let config = TraceConfig::new()
                .with_threshold(threshold)
                .with_memory_budget(memory_mb.saturating_mul(1 << 20))
                .with_whole_mark_candidates(whole_mark_candidates);
            let bar = progress_bar(show_progress, "tracing");
            let mut cb = |p: Progress| {
                show(bar.as_ref(), p);
                ControlFlow::Continue(())
            };
            let result = match &original {
                Some(src) => trace_informed(&key, &leaked, src, &candidates, &config, &mut cb),
                None => trace_blind(&key, &leaked, &candidates, &config, &mut cb),
            }?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if let Some(path) = &report {
                let html = report_html(&result, &reg, &trust, &key, &leaked, original.as_deref())?;
                write_new_file(&inputs, path, html.as_bytes()).context("--report")?;
            }
            if json {
                let mut v = trace_json(&result);
                v["registry"] = trust.to_json();
                out!("{v}");
            } else {
                if !trust.verified {
                    out!("WARNING: {}", trust.statement);
                }
                print_trace(&result, report.as_deref(), &trust.exports);
                if trust.verified {
                    out!("{}", trust.statement);
                }
            }
        }
        Command::Registry { action } => match action {
            RegistryAction::List { registry, json } => {
                let reg = Registry::open_read_only(&registry)?;
                let all = reg.exports()?;
                if json {
                    out!("{}", serde_json::Value::Array(all.iter().map(export_json).collect()));
                } else {
                    out!(
                        "{:<16}  {:<20}  {:<16}  {:<16}  {:<12}  {:<9}  {:<29}  created",
                        "mark id",
                        "recipient",
                        "officer",
                        "approved by",
                        "case",
                        "status",
                        "approval"
                    );
                    for x in all {
                        let e = &x.record;
                        let t = |s: &str| names::escape_for_terminal(s);
                        out!(
                            "{:<16}  {:<20}  {:<16}  {:<16}  {:<12}  {:<9}  {:<29}  {}",
                            t(&e.mark_id),
                            t(&e.recipient),
                            t(&e.officer),
                            t(&e.approved_by),
                            t(e.case_ref.as_deref().unwrap_or("-")),
                            x.status.as_str(),
                            e.approval_kind(),
                            t(&e.created_at)
                        );
                    }
                }
            }
            RegistryAction::Show { id, registry, json } => {
                let reg = Registry::open_read_only(&registry)?;
                let e = reg
                    .find(&id)?
                    .ok_or_else(|| anyhow!("no export with mark id {id:?} in {}", registry.display()))?;
                if json {
                    out!("{}", export_json(&e));
                } else {
                    for (k, v) in export_json(&e).as_object().expect("record is an object") {
                        let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                        out!("{k:>16}: {}", names::escape_for_terminal(&v));
                    }
                }
            }
            RegistryAction::Verify { registry, key, checkpoint } => {
                let reg = Registry::open_read_only(&registry)?;
                let mac_key = key.as_deref().map(load_key).transpose()?.map(|k| k.subkey(Purpose::Registry));
                if let Some(k) = &key {
                    reg.check_key(&load_key(k)?.fingerprint())?;
                }
                let cp = checkpoint
                    .as_deref()
                    .map(|p| {
                        registry::Checkpoint::from_file_text(&officer::read_small_file(p, "checkpoint")?)
                            .map_err(|e| anyhow!("{}: {e}", p.display()))
                    })
                    .transpose()?;
                let mut rep = reg.verify(mac_key.as_ref())?;
                if let Some(cp) = &cp {
                    reg.verify_checkpoint(cp, &mut rep)?;
                }
                if rep.problems.is_empty() {
                    let declared = rep.exports.len() - rep.signed_approvals;
                    out!(
                        "registry OK: {} exports ({} with signed approvals verified, {} approval declared, not signed), \
                         {} officers on the roster, {} audit entries, chain head {}{}{}{}",
                        rep.exports.len(),
                        rep.signed_approvals,
                        declared,
                        rep.roster.entries.len(),
                        rep.audit_entries,
                        rep.head,
                        if rep.head_signed { " (head signature verified)" } else { " (head not signed: older registry)" },
                        if mac_key.is_some() { " (authenticated with the key)" } else { "" },
                        cp.as_ref()
                            .map(|c| format!(
                                " (consistent with the checkpoint of {} at entry {})",
                                registry::format_utc(c.body.made_at),
                                c.body.entries
                            ))
                            .unwrap_or_default()
                    );
                } else {
                    for p in &rep.problems {
                        out!("PROBLEM: {}", names::escape_for_terminal(p));
                    }
                    bail!(
                        "registry {} FAILED verification: {} problem(s)",
                        registry.display(),
                        rep.problems.len()
                    );
                }
            }
            RegistryAction::Checkpoint { registry, key, out } => {
                let unit = load_key(&key)?;
                let mac_key = unit.subkey(Purpose::Registry);
                check_output(&[&registry, &key], &out, false).map_err(|e| anyhow!("{e}"))?;
                Registry::open_read_only(&registry)?.check_key(&unit.fingerprint())?;
                // Writable only so that a registry older than authority keys gets one.
                let reg = Registry::open_or_create(&registry, &unit.fingerprint(), &mac_key, None)?;
                let cp = reg.checkpoint(&mac_key)?;
                write_new_file(&[&registry, &key], &out, cp.to_file_text().as_bytes())
                    .map_err(|e| anyhow!("{e}"))?;
                out!(
                    "wrote checkpoint {} ({} audit entries, head {}); keep it away from the registry: \
                     `registry verify --checkpoint {}` proves nothing up to it was removed",
                    out.display(),
                    cp.body.entries,
                    cp.body.head,
                    out.display()
                );
            }
        },
        Command::Officer { action } => officer::officer(action)?,
        Command::Request(args) => officer::request(args)?,
        Command::Approve(args) => officer::approve(args)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// What a trace may rely on in the registry.
struct Trust {
    /// The exports a trace may name.
    exports: Vec<Export>,
    verified: bool,
    authenticated: bool,
    problems: Vec<String>,
    /// In words, for the text output and the report.
    statement: String,
}

impl Trust {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "verified": self.verified,
            "authenticated": self.authenticated,
            "problems": self.problems,
            "exports_considered": self.exports.len(),
            "names_from": if self.verified { "verified audit chain" } else { "UNVERIFIED registry rows" },
            "statement": self.statement,
        })
    }
}

/// Verifies the registry (head authenticated with the unit key) before a trace names
/// anyone: only exports the chain holds are candidates. A registry that fails
/// verification is refused unless `trust_unverified`; then its rows are used and the
/// statement says so.
fn verified_exports(reg: &Registry, key: &MasterKey, trust_unverified: bool) -> Result<Trust> {
    let rep = reg.verify(Some(&key.subkey(Purpose::Registry)))?;
    // A failed export never delivered a file: its recipient cannot have leaked it.
    let usable = |e: &Export| e.status != ExportStatus::Failed;
    if rep.is_ok() {
        let exports: Vec<Export> = rep.exports.into_iter().filter(usable).collect();
        return Ok(Trust {
            statement: format!(
                "registry verified: {} exports held by the audit chain, head authenticated with the key",
                exports.len()
            ),
            exports,
            verified: true,
            authenticated: true,
            problems: vec![],
        });
    }
    if !trust_unverified {
        bail!(
            "registry {} FAILED verification ({} problem(s), first: {}); nobody is named from a registry that may              have been tampered with. Run `tracemark registry verify --registry {0} --key KEY` for details, or pass              --trust-unverified-registry to trace anyway",
            reg.path().display(),
            rep.problems.len(),
            names::escape_for_terminal(&rep.problems[0]),
        );
    }
    let exports: Vec<Export> = reg
        .exports()?
        .into_iter()
        .filter(|e| usable(e) && registry::parse_mark_id(&e.record.mark_id).is_ok())
        .collect();
    Ok(Trust {
        statement: format!(
            "the registry FAILED verification ({} problem(s)); recipients are named from {} UNVERIFIED rows              (--trust-unverified-registry) and may have been forged or edited",
            rep.problems.len(),
            exports.len()
        ),
        exports,
        verified: false,
        authenticated: false,
        problems: rep.problems,
    })
}

/// The mark layout an export was made with: `embed_params.scheme`, `tracemark/v1` for rows
/// from before it was recorded, `None` for a layout this build does not know.
fn scheme_of(e: &Export) -> Option<Scheme> {
    let params: serde_json::Value = serde_json::from_str(&e.record.embed_params).ok()?;
    match params.get("scheme") {
        Some(name) => Scheme::parse(name.as_str()?),
        None => Some(Scheme::Fixed),
    }
}

/// Trace candidates: one per distinct, strictly parsed mark id whose layout this build
/// reads; the ids of rows it cannot read come second.
fn candidates(exports: &[Export]) -> (Vec<Candidate>, Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    let mut unreadable = Vec::new();
    let found = exports
        .iter()
        .filter_map(|e| {
            let id = registry::parse_mark_id(&e.record.mark_id).ok()?;
            let Some(scheme) = scheme_of(e) else {
                unreadable.push(e.record.mark_id.clone());
                return None;
            };
            seen.insert(id).then(|| Candidate {
                mark_id: MarkId(id),
                recipient: e.record.recipient.clone(),
                scheme,
            })
        })
        .collect();
    (found, unreadable)
}

/// An export as JSON: the record plus its status and how its approval is backed.
fn export_json(e: &Export) -> serde_json::Value {
    let mut v = e.record.to_json();
    v["status"] = json!(e.status.as_str());
    v["approval_kind"] = json!(e.record.approval_kind());
    v
}

/// An error and its causes, joined as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn load_key(path: &Path) -> Result<MasterKey> {
    MasterKey::load(path).map_err(|e| anyhow!("{e}; pass the key file made by `tracemark keygen`"))
}

fn progress_bar(show: bool, what: &str) -> Option<indicatif::ProgressBar> {
    show.then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} frames ({eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_message(what.to_string());
        b
    })
}

/// Moves a progress bar (if there is one) to `p`.
fn show(bar: Option<&indicatif::ProgressBar>, p: Progress) {
    if let Some(b) = bar {
        if let Some(t) = p.total {
            b.set_length(t);
        }
        b.set_position(p.done);
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    inputs::sha256_file(path)
}

/// Arguments of `tracemark embed`.
#[derive(clap::Args, Debug)]
struct EmbedArgs {
    /// The unit's key file.
    #[arg(long)]
    key: PathBuf,
    /// The export registry (created if missing).
    #[arg(long)]
    registry: PathBuf,
    /// Who receives this copy (with `--approval`: taken from it, and must match if given).
    #[arg(long, required_unless_present = "approval")]
    recipient: Option<String>,
    /// The exporting officer (declared approvals, registries without a roster).
    #[arg(long, required_unless_present = "approval", conflicts_with = "approval")]
    officer: Option<String>,
    /// The senior officer who approved the export (declared, registries without a roster).
    #[arg(long = "approved-by", required_unless_present = "approval", conflicts_with = "approval")]
    approved_by: Option<String>,
    /// A signed approval from `tracemark approve` (required once the registry has a roster).
    #[arg(long)]
    approval: Option<PathBuf>,
    /// Case reference (with `--approval`: taken from it).
    #[arg(long = "case", conflicts_with = "approval")]
    case_ref: Option<String>,
    /// Why the clip leaves the building (with `--approval`: taken from it).
    #[arg(long, conflicts_with = "approval")]
    reason: Option<String>,
    /// x264 constant rate factor (0 = lossless).
    #[arg(long, default_value_t = 18, value_parser = clap::value_parser!(u8).range(0..=51))]
    crf: u8,
    /// x264 preset.
    #[arg(long, default_value = "medium")]
    preset: String,
    /// Mark strength as the luma PSNR of the mark alone (higher = fainter).
    #[arg(long = "target-psnr", default_value_t = EmbedConfig::new().target_psnr_db)]
    target_psnr: f64,
    /// Mark layout: `v4` moves the mark with the picture's global motion on a pan (far
    /// cheaper for the encoder) and keeps it still on a still camera; `v5` as v4 with
    /// every frequency of the mark at the same amplitude (more of it survives a small
    /// picture-in-picture and heavy downscaling, as faint by PSNR); `v3` also follows
    /// the fractions of a pixel a still camera's measure drifts by as people cross the
    /// picture; `v1` keeps the mark fixed on the screen; `v2` as v3 with the older motion
    /// measure that lets the mark slide on long pans.
    #[arg(long, default_value = "v4", value_parser = ["v1", "v2", "v3", "v4", "v5"])]
    scheme: String,
    /// Print the export record as JSON.
    #[arg(long)]
    json: bool,
    /// Export an input that ends well before its container says it should (a cut or
    /// partly copied file); the registry row records it. Refused otherwise.
    #[arg(long)]
    allow_truncated: bool,
    /// The clip to export.
    input: PathBuf,
    /// The marked copy to write (must not exist).
    output: PathBuf,
}

/// Declared four eyes: visible names, and an approving officer who is not the exporting
/// officer once names are normalised (case, white space, look-alike characters).
fn check_declared_approval(a: &EmbedArgs) -> Result<()> {
    let (recipient, officer, approved_by) = (
        a.recipient.as_deref().unwrap_or_default(),
        a.officer.as_deref().unwrap_or_default(),
        a.approved_by.as_deref().unwrap_or_default(),
    );
    for (name, v) in [("--recipient", recipient), ("--officer", officer), ("--approved-by", approved_by)] {
        match names::normalise(v) {
            Ok(_) => {}
            Err(names::NameError::Empty) => bail!(
                "{name} must not be empty: every export needs a recipient, an exporting officer and an approving officer"
            ),
            Err(e) => bail!("{name} {e}"),
        }
    }
    if names::same_name(officer, approved_by) {
        bail!(
            "--approved-by must name a different officer than --officer ({:?} and {:?} are the same name): an export \
             cannot approve itself",
            names::escape_for_terminal(officer),
            names::escape_for_terminal(approved_by)
        );
    }
    Ok(())
}

/// Who asked, who approved, for whom: from the signed approval or the declared names.
struct Approved {
    recipient: String,
    officer: String,
    approved_by: String,
    case_ref: Option<String>,
    reason: Option<String>,
    /// The signed approval (compact JSON) when there is one.
    signed: Option<String>,
}

/// Checks the export's approval before any work: a signed approval against the roster,
/// the input and this registry; declared names only while the registry has no roster.
fn check_approval(a: &EmbedArgs, reg: &Registry, source_sha256: &str) -> Result<Approved> {
    let Some(path) = &a.approval else {
        if reg.roster()?.exists() {
            return Err(registry::Error::SignedApprovalRequired.into());
        }
        return Ok(Approved {
            recipient: a.recipient.as_deref().unwrap_or_default().trim().to_string(),
            officer: a.officer.as_deref().unwrap_or_default().trim().to_string(),
            approved_by: a.approved_by.as_deref().unwrap_or_default().trim().to_string(),
            case_ref: a.case_ref.clone(),
            reason: a.reason.clone(),
            signed: None,
        });
    };
    let text = officer::read_small_file(path, "approval")?;
    let ap = reg.check_approval(&text, source_sha256).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let rq = &ap.request.body;
    if let Some(r) = &a.recipient {
        if r.trim() != rq.recipient {
            bail!(
                "--recipient {:?} is not the approved recipient {:?}; the approval allows only that recipient",
                names::escape_for_terminal(r),
                names::escape_for_terminal(&rq.recipient)
            );
        }
    }
    Ok(Approved {
        recipient: rq.recipient.clone(),
        officer: rq.requester_name.clone(),
        approved_by: ap.body.approver_name.clone(),
        case_ref: rq.case_ref.clone(),
        reason: rq.reason.clone(),
        signed: Some(ap.to_compact()),
    })
}

/// Output paths refused before any work: a name ending in a slash (a directory, not a
/// file) and a dangling symbolic link (existing files are refused by `check_output`).
fn refuse_unsafe_output(output: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    if output.as_os_str().as_bytes().ends_with(b"/") {
        bail!("output {} ends with '/': name a file to write, not a directory", output.display());
    }
    // Existing files and links to them are refused by the output check; a link to nothing
    // would pass it and the final link would then fail after the work.
    let dangling =
        std::fs::symlink_metadata(output).is_ok_and(|m| m.file_type().is_symlink()) && !output.exists();
    if dangling {
        bail!(
            "output {} exists already as a link to a missing file; choose a new file name, nothing is overwritten",
            output.display()
        );
    }
    Ok(())
}

/// A flag set by SIGINT, SIGTERM or SIGHUP (installed before the registry lock is
/// awaited, so the wait can be interrupted too).
fn interrupt_flag() -> Arc<AtomicBool> {
    signals::install()
}

/// Settles a pending registry row after the transcode: delivered when the file took its
/// final name, failed otherwise. A row that cannot be settled stays pending (never looks
/// delivered).
fn settle_export(
    reg: &mut Registry,
    rec: Option<&ExportRecord>,
    delivered: Result<(), &tracemark_core::Error>,
    mac_key: &[u8; 32],
) -> Result<()> {
    let Some(rec) = rec else { return Ok(()) };
    match delivered {
        Ok(()) => reg.mark_delivered(&rec.mark_id, mac_key).with_context(|| {
            format!("the marked copy was written, but its registry row {} stays 'pending'", rec.mark_id)
        }),
        Err(e) => {
            // Best effort: if even this fails the row stays 'pending', not 'delivered'.
            let _ = reg.mark_failed(&rec.mark_id, &error_chain(e), mac_key);
            Ok(())
        }
    }
}

fn embed(a: EmbedArgs, show_progress: bool) -> Result<()> {
    if a.approval.is_none() {
        check_declared_approval(&a)?;
    }
    refuse_unsafe_output(&a.output)?;
    inputs::video_output(&a.output)?;
    let key = load_key(&a.key)?;
    let config = TranscodeConfig::new()
        .with_crf(a.crf)
        .with_preset(a.preset.as_str())
        .with_allow_truncated(a.allow_truncated);
    config.validate()?;
    inputs::video_input(&a.input)?;
    let mac_key = key.subkey(Purpose::Registry);
    let interrupted = interrupt_flag();
    let mut reg =
        Registry::open_or_create(&a.registry, &key.fingerprint(), &mac_key, Some(Arc::clone(&interrupted)))?;
    let mark_id = loop {
        let id = MarkId::random();
        if !reg.contains(&id.to_string())? {
            break id;
        }
    };
    let scheme = Scheme::parse(&format!("tracemark/{}", a.scheme)).context("--scheme")?;
    let embed_config = EmbedConfig::new().with_target_psnr_db(a.target_psnr).with_scheme(scheme);
    embed_config.validate().context("--target-psnr")?;
    let recording = Arc::new(selfcheck::recording(&a.input)?);
    let embedder =
        Arc::new(RecordSource::new(Embedder::new(&key, mark_id, embed_config)?, Arc::clone(&recording)));
    let source_sha256 = sha256_file(&a.input)?;
    let approved = check_approval(&a, &reg, &source_sha256)?;

    let bar = progress_bar(show_progress, "marking");
    let mut cb = |p: Progress| {
        show(bar.as_ref(), p);
        if interrupted.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let mut record: Option<ExportRecord> = None;
    let mut commit =
        |tmp: &Path, rep: &tracemark_core::video::TranscodeReport| -> tracemark_core::Result<()> {
            let fail = |e: anyhow::Error| tracemark_core::Error::Commit(format!("{e:#}"));
            let output_sha256 = sha256_file(tmp).map_err(fail)?;
            let rec = ExportRecord {
                mark_id: mark_id.to_string(),
                recipient: approved.recipient.clone(),
                officer: approved.officer.clone(),
                approved_by: approved.approved_by.clone(),
                case_ref: approved.case_ref.clone(),
                reason: approved.reason.clone(),
                source_path: std::fs::canonicalize(&a.input).unwrap_or(a.input.clone()).display().to_string(),
                source_sha256: source_sha256.clone(),
                output_path: std::path::absolute(&a.output).unwrap_or(a.output.clone()).display().to_string(),
                output_sha256,
                frames: rep.frames as i64,
                // A truncated input lasts as long as its frames, not as its header says.
                duration_s: if rep.truncated {
                    rep.input.frame_rate.map(|(n, d)| rep.frames as f64 * f64::from(d) / f64::from(n))
                } else {
                    rep.input.duration_seconds
                },
                width: rep.output_size.0 as i64,
                height: rep.output_size.1 as i64,
                embed_params: {
                    let mut p = json!({
                        "crf": a.crf, "preset": a.preset, "target_psnr_db": embed_config.target_psnr_db,
                        "scheme": embed_config.scheme.as_str(), "tool_version": env!("CARGO_PKG_VERSION"),
                        "video_stream": rep.input.stream_index,
                    });
                    if rep.truncated {
                        p["truncated_input"] = json!({
                            "decoded_frames": rep.frames,
                            "declared_frames": rep.input.frames_estimate,
                            "declared_duration_s": rep.input.duration_seconds,
                            "allowed_by": "--allow-truncated",
                        });
                    }
                    p.to_string()
                },
                key_fingerprint: key.fingerprint(),
                created_at: registry::now_utc(),
                approval: approved.signed.clone(),
            };
            if interrupted.load(Ordering::SeqCst) {
                return Err(tracemark_core::Error::Cancelled);
            }
            reg.record_pending(&rec, &mac_key).map_err(|e| match e {
                registry::Error::Interrupted => tracemark_core::Error::Cancelled,
                e => fail(e.into()),
            })?;
            record = Some(rec);
            // The row is pending: read the mark back before anything is delivered. A copy
            // whose own mark cannot be found is refused (the row is then marked failed).
            selfcheck::run(&key, &recording, tmp, (mark_id, scheme), &selfcheck::Settings::of(&a, rep))
                .map_err(|e| tracemark_core::Error::Commit(format!("{e:#}")))?;
            Ok(())
        };
    let result = transcode_with_commit(&a.input, &a.output, &config, embedder, &mut cb, &mut commit);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    settle_export(&mut reg, record.as_ref(), result.as_ref().map(|_| ()), &mac_key)?;
    if let Ok(rep) = &result {
        report_input_notes(&a.input, rep);
    }
    match result {
        Err(tracemark_core::Error::Cancelled) => {
            return Err(Interrupted { signal: signals::received() }.into())
        }
        Err(e @ tracemark_core::Error::Truncated { .. }) => {
            return Err(anyhow!(
                "{e}; pass --allow-truncated to export what there is (the registry row then records it)"
            ))
        }
        Err(e) => return Err(e.into()),
        Ok(rep) => {
            let rec = record.expect("the commit hook ran");
            if a.json {
                out!("{}", rec.to_json());
            } else {
                out!(
                    "exported {} -> {} for {} (mark {}, {} frames {}x{}; approved by {}, {}; recorded in {})",
                    a.input.display(),
                    a.output.display(),
                    rec.recipient,
                    rec.mark_id,
                    rep.frames,
                    rep.output_size.0,
                    rep.output_size.1,
                    rec.approved_by,
                    rec.approval_kind(),
                    reg.path().display()
                );
                if rep.input.height % 2 == 1 || rep.input.width % 2 == 1 {
                    eprintln!(
                        "tracemark: note: {}x{} is odd; H.264 4:2:0 needs even sizes, so the copy is {}x{} (last row/column dropped)",
                        rep.input.width, rep.input.height, rep.output_size.0, rep.output_size.1
                    );
                }
                for s in &rep.skipped_streams {
                    eprintln!(
                        "tracemark: note: {s} could not be copied into this container and was left out"
                    );
                }
            }
        }
    }
    Ok(())
}

/// Notes on stderr about how the input was read: which video stream when there are
/// several, an accepted truncated input, temporaries of killed runs cleaned up.
fn report_input_notes(input: &Path, rep: &tracemark_core::video::TranscodeReport) {
    let i = &rep.input;
    if i.video_streams > 1 {
        eprintln!(
            "tracemark: note: {} has {} video streams; marked stream {} ({}x{}, the largest, as ffmpeg chooses); \
             the other video streams are not in the copy",
            input.display(),
            i.video_streams,
            i.stream_index,
            i.width,
            i.height
        );
    }
    if rep.truncated {
        eprintln!(
            "tracemark: note: {} is truncated: {} frames decoded of {} declared; exported as allowed by \
             --allow-truncated and recorded as such",
            input.display(),
            rep.frames,
            i.frames_estimate.unwrap_or_default()
        );
    }
    for p in &rep.stale_removed {
        eprintln!("tracemark: note: removed {}, left by an earlier run that was killed", p.display());
    }
}

fn registration_json(r: &Registration) -> serde_json::Value {
    match r {
        Registration::Informed { geometry, homography, mirrored, rotation_deg, time_offset_s, ncc } => {
            json!({
                "kind": "informed", "scale_x": geometry.sx, "scale_y": geometry.sy,
                "offset_x": geometry.tx, "offset_y": geometry.ty, "time_offset_s": time_offset_s, "ncc": ncc,
                "homography": homography.0, "mirrored": mirrored, "rotation_deg": rotation_deg,
            })
        }
        Registration::Blind {
            scale,
            analysis_factor,
            shift,
            hypotheses,
            mirrored,
            transposed,
            rotation_deg,
            stretch,
            window,
        } => json!({
            "kind": "blind", "scale": scale, "analysis_factor": analysis_factor,
            "tile_shift": [shift.0, shift.1], "hypotheses": hypotheses,
            "mirrored": mirrored.0 || mirrored.1, "mirrored_horizontally": mirrored.0,
            "mirrored_vertically": mirrored.1, "transposed": transposed,
            "orientation": r.orientation().map(|o| o.as_str()),
            "rotation_deg": rotation_deg, "stretch": stretch, "window": window,
        }),
    }
}

fn trace_json(r: &TraceResult) -> serde_json::Value {
    let d = &r.decision;
    let scored = |s: &tracemark_extract::Scored| {
        json!({"recipient": s.recipient, "mark_id": s.mark_id.to_string(),
               "false_positive_probability": s.false_positive_probability, "score": s.score})
    };
    json!({
        "verdict": d.verdict.as_str(),
        "suspects": d.suspects.iter().map(scored).collect::<Vec<_>>(),
        "mode": if r.informed { "informed" } else { "blind" },
        "frames_used": r.frames_used,
        "registration": registration_json(&r.registration),
        "threshold": r.threshold,
        "candidates": d.candidates.iter().map(scored).collect::<Vec<_>>(),
        "pilot": {"z": d.pilot_z, "probability_without_mark": d.pilot_p},
        "decoded": {"mark_id": d.decoded.0.to_string(), "score": d.decoded.1, "false_positive_probability": d.decoded.2},
    })
}

fn print_trace(r: &TraceResult, report: Option<&Path>, exports: &[Export]) {
    let d = &r.decision;
    let mode = if r.informed { "informed" } else { "blind" };
    match d.verdict {
        tracemark_extract::Verdict::Identified => {
            out!("IDENTIFIED ({mode}, {} frames):", r.frames_used);
            for s in &d.suspects {
                out!(
                    "  {}  mark {}  score {:.1}  false-positive probability {:.2e}",
                    names::escape_for_terminal(&s.recipient),
                    s.mark_id,
                    s.score,
                    s.false_positive_probability
                );
                if let Some(e) = exports.iter().find(|e| e.record.mark_id == s.mark_id.to_string()) {
                    let e = &e.record;
                    out!(
                        "    exported {} by {}, approved by {} ({})",
                        names::escape_for_terminal(&e.created_at),
                        names::escape_for_terminal(&e.officer),
                        names::escape_for_terminal(&e.approved_by),
                        e.approval_kind()
                    );
                }
            }
        }
        tracemark_extract::Verdict::Inconclusive => out!(
            "INCONCLUSIVE ({mode}, {} frames): signs of a mark, but no export reaches p <= {:.0e}{}",
            r.frames_used,
            r.threshold,
            d.candidates.first().map_or(String::new(), |s| format!(
                " (best: {} score {:.1}, p {:.2e})",
                names::escape_for_terminal(&s.recipient),
                s.score,
                s.false_positive_probability
            ))
        ),
        tracemark_extract::Verdict::NoMark => {
            out!(
                "NO MARK found ({mode}, {} frames): no export of this key is evident in this clip",
                r.frames_used
            )
        }
    }
    if let Some(p) = report {
        out!("evidence report: {}", p.display());
    }
}

fn report_html(
    r: &TraceResult,
    reg: &Registry,
    trust: &Trust,
    key: &MasterKey,
    leaked: &Path,
    original: Option<&Path>,
) -> Result<String> {
    let original = match original {
        Some(p) => Some((p, sha256_file(p)?)),
        None => None,
    };
    report::render(&report::ReportInput {
        result: r,
        exports: &trust.exports,
        registry_statement: trust.statement.clone(),
        registry_verified: trust.verified,
        key_fingerprint: key.fingerprint(),
        leaked,
        leaked_sha256: sha256_file(leaked)?,
        original,
        registry: reg.path(),
        created_at: registry::now_utc(),
    })
}
