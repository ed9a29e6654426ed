//! The signed four-eyes flow end to end with the real binary: officer keys, roster,
//! request, approval, export, refusals, verification without secrets, checkpoints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use assert_cmd::cargo::CommandCargoExt;
use serde_json::Value;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(name)
}

fn run(args: &[&str], dir: &Path) -> Output {
    Command::cargo_bin("tracemark").unwrap().args(args).current_dir(dir).output().unwrap()
}

fn ok(args: &[&str], dir: &Path) -> String {
    let o = run(args, dir);
    assert!(o.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// A command that must fail with one line on stderr containing `needle`.
fn fails(args: &[&str], dir: &Path, needle: &str) {
    let o = run(args, dir);
    assert!(!o.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("  ")).collect();
    let last = lines.last().copied().unwrap_or_default();
    assert!(last.starts_with("tracemark: error: "), "{args:?}: {err:?}");
    assert!(last.to_lowercase().contains(&needle.to_lowercase()), "{args:?}: {last:?} lacks {needle:?}");
}

struct Unit {
    dir: tempfile::TempDir,
    clip: String,
}

impl Unit {
    /// A unit key, three officers (PC Smith exporter; Insp. Jones and Sgt. Brown
    /// approvers) on the roster of reg.db.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        ok(&["keygen", "--out", "unit.key"], p);
        for (file, name, role) in [
            ("smith", "PC Smith", "exporter"),
            ("jones", "Insp. Jones", "approver"),
            ("brown", "Sgt. Brown", "approver"),
        ] {
            std::fs::write(p.join(format!("{file}.pass")), format!("{file} passphrase\n")).unwrap();
            let pass = format!("{file}.pass");
            ok(&["officer", "keygen", "--name", name, "--out", file, "--passphrase-file", &pass], p);
            let public = format!("{file}.pub");
            ok(&["officer", "add", "--registry", "reg.db", "--key", "unit.key", "--role", role, &public], p);
        }
        let clip = testdata("vtest-4s.avi").to_str().unwrap().to_string();
        Self { dir, clip }
    }
    fn p(&self) -> &Path {
        self.dir.path()
    }
    fn request(&self, who: &str, recipient: &str, out: &str) {
        let (key, pass) = (who.to_string(), format!("{who}.pass"));
        ok(
            &[
                "request",
                "--registry",
                "reg.db",
                "--officer-key",
                &key,
                "--passphrase-file",
                &pass,
                "--recipient",
                recipient,
                "--case",
                "CR-9",
                "--reason",
                "news request",
                &self.clip,
                "--out",
                out,
            ],
            self.p(),
        );
    }
    fn approve_args<'a>(
        &'a self,
        who: &'a str,
        pass: &'a str,
        request: &'a str,
        out: &'a str,
    ) -> Vec<&'a str> {
        vec!["approve", "--officer-key", who, "--passphrase-file", pass, request, "--out", out]
    }
    fn embed_args<'a>(&'a self, approval: &'a str, out: &'a str) -> Vec<&'a str> {
        vec![
            "embed",
            "--key",
            "unit.key",
            "--registry",
            "reg.db",
            "--approval",
            approval,
            "--preset",
            "ultrafast",
            &self.clip,
            out,
        ]
    }
}

#[test]
fn the_signed_story_from_request_to_trace() {
    let u = Unit::new();
    let p = u.p();
    // Officer files: a private secret, a public half beside it; never overwritten.
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(p.join("smith")).unwrap().permissions().mode() & 0o777, 0o600);
        let before = std::fs::read(p.join("smith")).unwrap();
        fails(
            &["officer", "keygen", "--name", "X", "--out", "smith", "--passphrase-file", "smith.pass"],
            p,
            "exists",
        );
        assert_eq!(std::fs::read(p.join("smith")).unwrap(), before);
    }
    let list = ok(&["officer", "list", "--registry", "reg.db", "--json"], p);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["officers"].as_array().unwrap().len(), 3);
    assert_eq!(list["registry_verified"], true);

    // Once a roster exists, a declared approval is refused before any work.
    fails(
        &[
            "embed",
            "--key",
            "unit.key",
            "--registry",
            "reg.db",
            "--recipient",
            "C4",
            "--officer",
            "PC Smith",
            "--approved-by",
            "Insp. Jones",
            &u.clip,
            "declared.mp4",
        ],
        p,
        "signed approval",
    );
    assert!(!p.join("declared.mp4").exists());

    u.request("smith", "Channel 4", "req.json");
    fails(&u.approve_args("jones", "smith.pass", "req.json", "x.json"), p, "wrong passphrase");
    ok(&u.approve_args("jones", "jones.pass", "req.json", "ok.json"), p);
    let out = ok(&u.embed_args("ok.json", "c4.mp4"), p);
    assert!(out.contains("signed approval"), "{out}");
    assert!(p.join("c4.mp4").exists());

    // The record holds who asked and who approved, by key, and verifies without a secret.
    let all: Value =
        serde_json::from_str(&ok(&["registry", "list", "--registry", "reg.db", "--json"], p)).unwrap();
    let e = &all[0];
    assert_eq!((e["recipient"].as_str(), e["officer"].as_str()), (Some("Channel 4"), Some("PC Smith")));
    assert_eq!((e["approved_by"].as_str(), e["case_ref"].as_str()), (Some("Insp. Jones"), Some("CR-9")));
    assert_eq!(e["approval_kind"], "signed approval");
    let v = ok(&["registry", "verify", "--registry", "reg.db"], p);
    assert!(v.contains("1 with signed approvals verified") && v.contains("head signature verified"), "{v}");

    // The evidence report shows the approval chain.
    let leaked = p.join("c4.mp4");
    ok(
        &[
            "trace",
            "--key",
            "unit.key",
            "--registry",
            "reg.db",
            "--original",
            &u.clip,
            "--report",
            "ev.html",
            "--json",
            leaked.to_str().unwrap(),
        ],
        p,
    );
    let html = std::fs::read_to_string(p.join("ev.html")).unwrap();
    for needle in ["Channel 4", "PC Smith", "Insp. Jones", "signatures verified"] {
        assert!(html.contains(needle), "report lacks {needle:?}");
    }

    // One approval allows one export.
    fails(&u.embed_args("ok.json", "again.mp4"), p, "used for an export already");
    assert!(!p.join("again.mp4").exists());
}

#[test]
fn every_refusal_of_the_contract() {
    let u = Unit::new();
    let p = u.p();
    // Self-approval: refused when signing.
    u.request("jones", "Channel 5", "own.json");
    fails(&u.approve_args("jones", "jones.pass", "own.json", "own-ok.json"), p, "yourself");
    assert!(!p.join("own-ok.json").exists());
    // An exporter's approval is refused at export.
    u.request("brown", "Channel 5", "b.json");
    ok(&u.approve_args("smith", "smith.pass", "b.json", "by-smith.json"), p);
    fails(&u.embed_args("by-smith.json", "x1.mp4"), p, "not an approver");
    // Another source clip than the one requested.
    u.request("smith", "Channel 6", "s.json");
    ok(&u.approve_args("jones", "jones.pass", "s.json", "s-ok.json"), p);
    let other = testdata("city-2s.mpg");
    fails(
        &[
            "embed",
            "--key",
            "unit.key",
            "--registry",
            "reg.db",
            "--approval",
            "s-ok.json",
            other.to_str().unwrap(),
            "x2.mp4",
        ],
        p,
        "sha-256",
    );
    // Another recipient than approved.
    let mut args = u.embed_args("s-ok.json", "x3.mp4");
    args.extend(["--recipient", "Channel 7"]);
    fails(&args, p, "approved recipient");
    // An edited approval (recipient changed after signing).
    let edited = std::fs::read_to_string(p.join("s-ok.json")).unwrap().replace("Channel 6", "Channel 7");
    std::fs::write(p.join("edited.json"), edited).unwrap();
    fails(&u.embed_args("edited.json", "x4.mp4"), p, "signature");
    // A revoked approver.
    u.request("smith", "Channel 8", "r.json");
    ok(&u.approve_args("brown", "brown.pass", "r.json", "r-ok.json"), p);
    let roster: Value =
        serde_json::from_str(&ok(&["officer", "list", "--registry", "reg.db", "--json"], p)).unwrap();
    let brown = roster["officers"].as_array().unwrap().iter().find(|o| o["name"] == "Sgt. Brown").unwrap();
    let brown_id = brown["officer_id"].as_str().unwrap()[..12].to_string();
    ok(&["officer", "revoke", "--registry", "reg.db", "--key", "unit.key", &brown_id], p);
    fails(&u.embed_args("r-ok.json", "x5.mp4"), p, "revoked");
    // Roster changes need the unit key.
    ok(&["keygen", "--out", "other.key"], p);
    fails(&["officer", "revoke", "--registry", "reg.db", "--key", "other.key", &brown_id], p, "key");
    for n in 1..=5 {
        assert!(!p.join(format!("x{n}.mp4")).exists());
    }
    // Nothing of that was recorded, and the registry still verifies.
    let all: Value =
        serde_json::from_str(&ok(&["registry", "list", "--registry", "reg.db", "--json"], p)).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 0);
    ok(&["registry", "verify", "--registry", "reg.db", "--key", "unit.key"], p);
}

#[test]
fn a_checkpoint_catches_a_rolled_back_registry() {
    let u = Unit::new();
    let p = u.p();
    u.request("smith", "Channel 4", "a.json");
    ok(&u.approve_args("jones", "jones.pass", "a.json", "a-ok.json"), p);
    std::fs::copy(p.join("reg.db"), p.join("old.db")).unwrap();
    ok(&u.embed_args("a-ok.json", "a.mp4"), p);
    ok(&["registry", "checkpoint", "--registry", "reg.db", "--key", "unit.key", "--out", "cp.json"], p);
    fails(
        &["registry", "checkpoint", "--registry", "reg.db", "--key", "unit.key", "--out", "cp.json"],
        p,
        "exists",
    );
    let v = ok(&["registry", "verify", "--registry", "reg.db", "--checkpoint", "cp.json"], p);
    assert!(v.contains("consistent with the checkpoint"), "{v}");
    // The export's trace in the registry is rolled back by restoring an older copy: it
    // verifies on its own (it is a genuine older state), the checkpoint exposes it.
    std::fs::copy(p.join("old.db"), p.join("reg.db")).unwrap();
    ok(&["registry", "verify", "--registry", "reg.db"], p);
    fails(
        &["registry", "verify", "--registry", "reg.db", "--checkpoint", "cp.json"],
        p,
        "failed verification",
    );
    let o = run(&["registry", "verify", "--registry", "reg.db", "--checkpoint", "cp.json"], p);
    assert!(String::from_utf8_lossy(&o.stdout).contains("truncated or rolled back"));
    // A forged checkpoint is refused.
    let forged =
        std::fs::read_to_string(p.join("cp.json")).unwrap().replace("\"entries\": ", "\"entries\": 1");
    std::fs::write(p.join("forged.json"), forged).unwrap();
    fails(&["registry", "verify", "--registry", "reg.db", "--checkpoint", "forged.json"], p, "signature");
}
