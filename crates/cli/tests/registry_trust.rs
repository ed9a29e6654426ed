//! The registry seen from the CLI: read paths never write, trace trusts only the verified
//! chain, look-alike names are refused, and a failed export never leaves a row that looks
//! delivered. Real clips, real FFmpeg.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use assert_cmd::cargo::CommandCargoExt;
use serde_json::Value;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(name)
}

fn tm() -> Command {
    Command::cargo_bin("tracemark").unwrap()
}

fn run(args: &[&str], dir: &Path) -> Output {
    tm().args(args).current_dir(dir).output().unwrap()
}

fn ok(args: &[&str], dir: &Path) -> String {
    let o = run(args, dir);
    assert!(o.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Runs a command that must fail (exit 1) with a one-line error naming `needle`.
fn fails(args: &[&str], dir: &Path, needle: &str) {
    let o = run(args, dir);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got {err:?}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "{args:?}: {:?} lacks {needle:?}",
        lines[0]
    );
}

fn embed_args<'a>(
    recipient: &'a str,
    officer: &'a str,
    approver: &'a str,
    input: &'a str,
    out: &'a str,
) -> Vec<&'a str> {
    vec![
        "embed",
        "--key",
        "unit.key",
        "--registry",
        "reg.db",
        "--recipient",
        recipient,
        "--officer",
        officer,
        "--approved-by",
        approver,
        "--preset",
        "ultrafast",
        input,
        out,
    ]
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    ok(&["keygen", "--out", "unit.key"], dir.path());
    dir
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `registry list --json` of `reg`.
fn list(dir: &Path, reg: &str) -> Vec<Value> {
    let out = ok(&["registry", "list", "--registry", reg, "--json"], dir);
    serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().clone()
}

fn statuses(dir: &Path) -> Vec<String> {
    list(dir, "reg.db").iter().map(|e| e["status"].as_str().unwrap().to_string()).collect()
}

/// A copy of `reg.db` as `name` with `sql` applied behind the tool's back (triggers and
/// constraints dropped first, as an attacker with the file would).
fn tamper(dir: &Path, name: &str, sql: &str) {
    let c = rusqlite::Connection::open(dir.join("reg.db")).unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    drop(c);
    std::fs::copy(dir.join("reg.db"), dir.join(name)).unwrap();
    let c = rusqlite::Connection::open(dir.join(name)).unwrap();
    c.execute_batch(
        "DROP TRIGGER exports_no_update; DROP TRIGGER exports_no_delete; \
         DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete; \
         CREATE TABLE x AS SELECT * FROM exports; DROP TABLE exports; \
         CREATE TABLE exports AS SELECT * FROM x; DROP TABLE x;",
    )
    .unwrap();
    c.execute_batch(sql).unwrap();
    c.execute_batch("PRAGMA journal_mode = DELETE;").unwrap();
}

#[test]
fn read_paths_never_write_and_work_on_a_read_only_registry() {
    let dir = setup();
    let p = dir.path();
    // Another program's database, with an `exports` table of its own.
    let c = rusqlite::Connection::open(p.join("other.db")).unwrap();
    c.execute_batch(
        "CREATE TABLE exports (id INTEGER PRIMARY KEY, what TEXT); INSERT INTO exports (what) VALUES ('x');",
    )
    .unwrap();
    drop(c);
    let before = std::fs::read(p.join("other.db")).unwrap();
    let before_files = files(p);
    fails(
        &["trace", "--key", "unit.key", "--registry", "other.db", "whatever.mp4"],
        p,
        "not a tracemark registry",
    );
    fails(&["registry", "list", "--registry", "other.db"], p, "not a tracemark registry");
    fails(&["registry", "show", "00", "--registry", "other.db"], p, "not a tracemark registry");
    fails(&["registry", "verify", "--registry", "other.db"], p, "not a tracemark registry");
    let src = testdata("city-2s.mpg");
    let mut a = embed_args("A", "PC Smith", "Insp. Jones", src.to_str().unwrap(), "x.mp4");
    a[4] = "other.db";
    fails(&a, p, "not a tracemark registry");
    assert_eq!(std::fs::read(p.join("other.db")).unwrap(), before, "a foreign database was changed");
    assert_eq!(files(p), before_files, "journal files appeared");

    // A real registry, read-only file in a read-only directory.
    ok(&embed_args("A", "PC Smith", "Insp. Jones", src.to_str().unwrap(), "A.mp4"), p);
    let ro = p.join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::copy(p.join("reg.db"), ro.join("reg.db")).unwrap();
    std::fs::copy(p.join("unit.key"), ro.join("unit.key")).unwrap();
    std::fs::copy(p.join("A.mp4"), ro.join("A.mp4")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for f in ["reg.db", "A.mp4"] {
        std::fs::set_permissions(ro.join(f), std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    // Read-only for its owner alone: a key others may read is refused.
    std::fs::set_permissions(ro.join("unit.key"), std::fs::Permissions::from_mode(0o400)).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let before = std::fs::read(ro.join("reg.db")).unwrap();
    let rows = list(&ro, "reg.db");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["status"], "delivered");
    assert_eq!(rows[0]["approval_kind"], "approval declared, not signed");
    let out = ok(&["registry", "list", "--registry", "reg.db"], &ro);
    assert!(out.contains("approval declared, not signed"), "{out}");
    let id = rows[0]["mark_id"].as_str().unwrap();
    assert!(ok(&["registry", "show", id, "--registry", "reg.db"], &ro).contains("delivered"));
    ok(&["registry", "verify", "--registry", "reg.db", "--key", "unit.key"], &ro);
    let t: Value = serde_json::from_str(
        ok(
            &[
                "trace",
                "--key",
                "unit.key",
                "--registry",
                "reg.db",
                "--original",
                src.to_str().unwrap(),
                "--json",
                "A.mp4",
            ],
            &ro,
        )
        .trim(),
    )
    .unwrap();
    assert_eq!(t["verdict"], "identified");
    assert_eq!(t["suspects"][0]["recipient"], "A");
    assert_eq!(t["registry"]["verified"], true);
    assert_eq!(std::fs::read(ro.join("reg.db")).unwrap(), before, "a read path changed the registry");
    assert_eq!(files(&ro), ["A.mp4", "reg.db", "unit.key"]);
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn trace_names_nobody_from_rows_the_chain_does_not_hold() {
    let dir = setup();
    let p = dir.path();
    let src = testdata("city-2s.mpg");
    let src_s = src.to_str().unwrap();
    ok(&embed_args("A", "PC Smith", "Insp. Jones", src_s, "A.mp4"), p);
    let id = list(p, "reg.db")[0]["mark_id"].as_str().unwrap().to_string();
    let copy_row = |mark: &str, who: &str| {
        format!(
            "INSERT INTO exports SELECT 99, {mark}, '{who}', officer, approved_by, case_ref, reason, source_path, \
             source_sha256, output_path, output_sha256, frames, duration_s, width, height, embed_params, \
             key_fingerprint, created_at, approval FROM exports LIMIT 1;"
        )
    };
    // The attacks: the mark id copied (leading space, upper case) under an innocent
    // recipient, and the recipient column edited.
    tamper(p, "space.db", &copy_row(&format!("' {id}'"), "innocent"));
    tamper(p, "upper.db", &copy_row(&format!("'{}'", id.to_uppercase()), "innocent"));
    tamper(p, "edited.db", "UPDATE exports SET recipient = 'innocent';");
    tamper(
        p,
        "emptied.db",
        "DELETE FROM exports; DELETE FROM audit; DELETE FROM meta WHERE key LIKE 'head_%';",
    );
    let trace = |reg: &str, extra: &[&str]| {
        let mut a = vec!["trace", "--key", "unit.key", "--registry", reg, "--original", src_s, "--json"];
        a.extend_from_slice(extra);
        a.push("A.mp4");
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let strs = |v: &[String]| v.iter().map(String::clone).collect::<Vec<_>>();
    for reg in ["space.db", "upper.db", "edited.db", "emptied.db"] {
        let a = strs(&trace(reg, &[]));
        fails(&a.iter().map(String::as_str).collect::<Vec<_>>(), p, "failed verification");
        fails(&["registry", "verify", "--registry", reg, "--key", "unit.key"], p, "failed verification");
    }
    // Asked explicitly to trust the tampered registry: strictly parsed ids only, and the
    // output says in words that the names are unverified.
    for (reg, named) in [("space.db", "A"), ("upper.db", "A"), ("edited.db", "innocent")] {
        let a = strs(&trace(reg, &["--trust-unverified-registry"]));
        let out = ok(&a.iter().map(String::as_str).collect::<Vec<_>>(), p);
        let t: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(t["registry"]["verified"], false);
        assert!(t["registry"]["statement"].as_str().unwrap().contains("UNVERIFIED"), "{t}");
        let suspects: Vec<&str> =
            t["suspects"].as_array().unwrap().iter().map(|s| s["recipient"].as_str().unwrap()).collect();
        assert_eq!(suspects, [named], "{reg}");
        assert!(t["verdict"].is_string() && t["mode"] == "informed" && t["threshold"].is_number());
    }
    let out = ok(
        &[
            "trace",
            "--key",
            "unit.key",
            "--registry",
            "edited.db",
            "--original",
            src_s,
            "--trust-unverified-registry",
            "--report",
            "r.html",
            "A.mp4",
        ],
        p,
    );
    assert!(out.starts_with("WARNING: the registry FAILED verification"), "{out}");
    let html = std::fs::read_to_string(p.join("r.html")).unwrap();
    assert!(html.contains("Warning: the registry FAILED verification"), "report lacks the warning");
    // The untouched registry traces normally and says it verified.
    let out = ok(&["trace", "--key", "unit.key", "--registry", "reg.db", "--original", src_s, "A.mp4"], p);
    assert!(out.contains("IDENTIFIED") && out.contains("registry verified: 1 exports"), "{out}");
}

#[test]
fn look_alike_and_invisible_names_are_refused_as_four_eyes() {
    let dir = setup();
    let p = dir.path();
    let src = testdata("city-2s.mpg");
    let s = src.to_str().unwrap();
    for approver in ["pc smith", "PC  Smith", "PC\u{a0}Smith", "ＰＣ Ｓｍｉｔｈ"] {
        fails(&embed_args("A", "PC Smith", approver, s, "o.mp4"), p, "different officer");
    }
    fails(&embed_args("A", "PC Smith", "PC\u{200b}Smith", s, "o.mp4"), p, "invisible");
    fails(&embed_args("A\u{202e}", "PC Smith", "Insp. Jones", s, "o.mp4"), p, "--recipient");
    assert!(!p.join("reg.db").exists() && !p.join("o.mp4").exists());
}

#[test]
fn refused_output_paths_register_nothing() {
    let dir = setup();
    let p = dir.path();
    let src = testdata("city-2s.mpg");
    let s = src.to_str().unwrap();
    ok(&embed_args("first", "PC Smith", "Insp. Jones", s, "first.mp4"), p);
    std::os::unix::fs::symlink("nowhere.mp4", p.join("dangling.mp4")).unwrap();
    std::fs::write(p.join("taken.mp4"), b"someone's file").unwrap();
    fails(&embed_args("B", "PC Smith", "Insp. Jones", s, "dangling.mp4"), p, "exists already");
    fails(&embed_args("B", "PC Smith", "Insp. Jones", s, "taken.mp4"), p, "exists already");
    fails(&embed_args("B", "PC Smith", "Insp. Jones", s, "slash.mp4/"), p, "ends with '/'");
    assert!(!p.join("nowhere.mp4").exists());
    assert_eq!(std::fs::read(p.join("taken.mp4")).unwrap(), b"someone's file");
    assert_eq!(statuses(p), ["delivered"]);
    ok(&["registry", "verify", "--registry", "reg.db", "--key", "unit.key"], p);
}

#[test]
fn five_embeds_to_one_output_deliver_exactly_one() {
    let dir = setup();
    let p = dir.path();
    let src = testdata("city-2s.mpg");
    let s = src.to_str().unwrap();
    let names = ["r1", "r2", "r3", "r4", "r5"];
    let children: Vec<_> = names
        .iter()
        .map(|n| {
            tm().args(embed_args(n, "PC Smith", "Insp. Jones", s, "same.mp4"))
                .current_dir(p)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let ok_count =
        children.into_iter().map(|c| c.wait_with_output().unwrap()).filter(|o| o.status.success()).count();
    assert_eq!(ok_count, 1);
    let st = statuses(p);
    assert_eq!(st.iter().filter(|s| *s == "delivered").count(), 1, "{st:?}");
    assert!(st.iter().all(|s| s == "delivered" || s == "failed"), "{st:?}");
    // The one delivered row is the recipient whose copy is in the file.
    let delivered: Vec<Value> =
        list(p, "reg.db").into_iter().filter(|e| e["status"] == "delivered").collect();
    let t: Value = serde_json::from_str(
        ok(&["trace", "--key", "unit.key", "--registry", "reg.db", "--original", s, "--json", "same.mp4"], p)
            .trim(),
    )
    .unwrap();
    assert_eq!(t["suspects"][0]["recipient"], delivered[0]["recipient"]);
    assert_eq!(t["suspects"].as_array().unwrap().len(), 1);
    assert!(files(p).iter().all(|f| !f.contains("partial")), "{:?}", files(p));
    ok(&["registry", "verify", "--registry", "reg.db", "--key", "unit.key"], p);
}

/// Waits until a temporary output exists (the export is under way).
fn wait_for_partial(p: &Path) {
    let t0 = std::time::Instant::now();
    while !files(p).iter().any(|f| f.contains("partial")) {
        assert!(t0.elapsed().as_secs() < 120, "embed never started writing");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn an_output_created_during_the_embed_is_not_clobbered_and_nothing_looks_delivered() {
    let dir = setup();
    let p = dir.path();
    let src = testdata("city-2s.mpg");
    let mut a = embed_args("A", "PC Smith", "Insp. Jones", src.to_str().unwrap(), "out.mp4");
    a[12] = "veryslow";
    let child = tm().args(&a).current_dir(p).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_partial(p);
    std::fs::write(p.join("out.mp4"), b"theirs").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(std::fs::read(p.join("out.mp4")).unwrap(), b"theirs");
    assert_eq!(statuses(p), ["failed"]);
    assert!(files(p).iter().all(|f| !f.contains("partial")), "{:?}", files(p));
    ok(&["registry", "verify", "--registry", "reg.db", "--key", "unit.key"], p);
    let out = ok(&["registry", "list", "--registry", "reg.db"], p);
    assert!(out.contains("failed"), "{out}");
}

#[test]
fn ctrl_c_while_waiting_for_the_registry_lock_exports_nothing() {
    let dir = setup();
    let p = dir.path();
    let src = testdata("city-2s.mpg");
    let s = src.to_str().unwrap();
    ok(&embed_args("first", "PC Smith", "Insp. Jones", s, "first.mp4"), p);
    let holder = rusqlite::Connection::open(p.join("reg.db")).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let child = tm()
        .args(embed_args("B", "PC Smith", "Insp. Jones", s, "B.mp4"))
        .current_dir(p)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let o = child.wait_with_output().unwrap();
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    assert_eq!(o.status.code(), Some(130), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted"));
    assert!(!p.join("B.mp4").exists());
    assert!(files(p).iter().all(|f| !f.contains("partial")), "{:?}", files(p));
    assert_eq!(statuses(p), ["delivered"]);
}
