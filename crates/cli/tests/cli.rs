//! The `tracemark` binary end to end, on real clips, with real FFmpeg.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// Runs a command that must fail with a one-line error naming `needle`.
fn fails(args: &[&str], dir: &Path, needle: &str) {
    let o = run(args, dir);
    assert!(!o.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got {err:?}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "{args:?}: {:?} lacks {needle:?}",
        lines[0]
    );
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        ok(&["keygen", "--out", "unit.key"], dir.path());
        Self { dir }
    }
    fn p(&self) -> &Path {
        self.dir.path()
    }
    fn embed(&self, recipient: &str, input: &Path, out: &str) -> Output {
        self.embed_with(recipient, input, out, &[])
    }
    /// `embed` with `extra` options.
    fn embed_with(&self, recipient: &str, input: &Path, out: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "embed",
            "--key",
            "unit.key",
            "--registry",
            "reg.db",
            "--recipient",
            recipient,
            "--officer",
            "PC Smith",
            "--approved-by",
            "Insp. Jones",
            "--case",
            "CR-1",
            "--preset",
            "ultrafast",
        ];
        args.extend(extra);
        args.extend([input.to_str().unwrap(), out]);
        run(&args, self.p())
    }
    fn trace(&self, leaked: &str, original: Option<&Path>) -> Value {
        let mut args = vec!["trace", "--key", "unit.key", "--registry", "reg.db", "--json", leaked];
        if let Some(o) = original {
            args.extend(["--original", o.to_str().unwrap()]);
        }
        serde_json::from_str(ok(&args, self.p()).trim()).unwrap()
    }
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.p())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
    fn exports(&self) -> usize {
        let out = ok(&["registry", "list", "--registry", "reg.db", "--json"], self.p());
        serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().len()
    }
}

fn ffmpeg(args: &[&str], dir: &Path) {
    let o = Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-loglevel", "error"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn export_then_trace_names_the_right_recipient_and_nobody_for_a_clean_copy() {
    let s = Setup::new();
    let src = testdata("vtest-4s.avi");
    assert!(s.embed("channel-A", &src, "a.mp4").status.success());
    assert!(s.embed("channel-B", &src, "b.mp4").status.success());
    // A TV-style re-encode with a crop of the B copy.
    ffmpeg(
        &[
            "-i",
            "b.mp4",
            "-vf",
            "crop=trunc(iw*0.8/2)*2:trunc(ih*0.8/2)*2",
            "-c:v",
            "libx264",
            "-crf",
            "26",
            "aired.mp4",
        ],
        s.p(),
    );
    for original in [None, Some(src.as_path())] {
        let r = s.trace("aired.mp4", original);
        assert_eq!(r["verdict"], "identified", "{r}");
        assert_eq!(r["suspects"][0]["recipient"], "channel-B", "{r}");
        assert_eq!(r["suspects"].as_array().unwrap().len(), 1, "{r}");
        assert!(r["suspects"][0]["false_positive_probability"].as_f64().unwrap() <= 1e-6);
    }
    // The evidence report: one self-contained HTML file with the verdict, the export
    // record, charts, the registered frames and the hashes of the inputs.
    ok(
        &[
            "trace",
            "--key",
            "unit.key",
            "--registry",
            "reg.db",
            "--original",
            src.to_str().unwrap(),
            "aired.mp4",
            "--report",
            "ev.html",
        ],
        s.p(),
    );
    let html = std::fs::read_to_string(s.p().join("ev.html")).unwrap();
    for needle in [
        "IDENTIFIED",
        "channel-B",
        "Insp. Jones",
        "CR-1",
        "<svg",
        "data:image/png;base64,",
        "leaked SHA-256",
        "key fingerprint",
    ] {
        assert!(html.contains(needle), "report lacks {needle:?}");
    }
    assert_eq!(html.matches("<svg").count(), 2, "score chart and strength chart");
    // The same attack on an unmarked copy accuses nobody.
    ffmpeg(
        &[
            "-i",
            src.to_str().unwrap(),
            "-vf",
            "crop=trunc(iw*0.8/2)*2:trunc(ih*0.8/2)*2",
            "-c:v",
            "libx264",
            "-crf",
            "26",
            "clean.mp4",
        ],
        s.p(),
    );
    for original in [None, Some(src.as_path())] {
        let r = s.trace("clean.mp4", original);
        assert_ne!(r["verdict"], "identified", "{r}");
        assert!(r["suspects"].as_array().unwrap().is_empty());
    }
    let out = ok(&["registry", "verify", "--registry", "reg.db"], s.p());
    assert!(out.contains("registry OK: 2 exports"), "{out}");
}

#[test]
fn an_average_of_two_copies_names_both_colluders() {
    let s = Setup::new();
    let src = testdata("vtest-4s.avi");
    assert!(s.embed("alice", &src, "a.mp4").status.success());
    assert!(s.embed("bob", &src, "b.mp4").status.success());
    assert!(s.embed("carol", &src, "c.mp4").status.success());
    ffmpeg(
        &[
            "-i",
            "a.mp4",
            "-i",
            "b.mp4",
            "-filter_complex",
            "[0][1]blend=all_mode=average",
            "-c:v",
            "libx264",
            "-crf",
            "20",
            "avg.mp4",
        ],
        s.p(),
    );
    for original in [None, Some(src.as_path())] {
        let r = s.trace("avg.mp4", original);
        assert_eq!(r["verdict"], "identified", "{r}");
        let mut named: Vec<&str> =
            r["suspects"].as_array().unwrap().iter().map(|v| v["recipient"].as_str().unwrap()).collect();
        named.sort();
        assert_eq!(named, ["alice", "bob"], "{r}");
    }
}

#[test]
fn bad_input_gives_one_line_errors_and_loses_nothing() {
    let s = Setup::new();
    let p = s.p();
    std::fs::write(p.join("notes.txt"), "not a video\n".repeat(50)).unwrap();
    std::fs::write(p.join("empty.mp4"), b"").unwrap();
    let bytes = std::fs::read(testdata("cockatoo-3s.mp4")).unwrap();
    std::fs::write(p.join("truncated.mp4"), &bytes[..bytes.len() / 3]).unwrap();
    std::fs::copy(testdata("vtest-4s.avi"), p.join("in.avi")).unwrap();
    std::fs::write(p.join("corrupt.key"), b"TRACEMRK\x01\x00 definitely not a key").unwrap();
    std::fs::write(p.join("notdb.db"), "hello, I am not SQLite\n").unwrap();
    ok(&["keygen", "--out", "other.key"], p);
    let embed = |key: &str, reg: &str, input: &str, out: &str| {
        vec![
            "embed".to_string(),
            "--key".into(),
            key.into(),
            "--registry".into(),
            reg.into(),
            "--recipient".into(),
            "X".into(),
            "--officer".into(),
            "A".into(),
            "--approved-by".into(),
            "B".into(),
            "--preset".into(),
            "ultrafast".into(),
            input.into(),
            out.into(),
        ]
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (embed("unit.key", "reg.db", "missing.mp4", "o1.mp4"), "not found"),
        (embed("unit.key", "reg.db", "notes.txt", "o2.mp4"), "cannot read"),
        (embed("unit.key", "reg.db", "empty.mp4", "o3.mp4"), "empty"),
        (embed("unit.key", "reg.db", "truncated.mp4", "o4.mp4"), "truncated.mp4"),
        (embed("missing.key", "reg.db", "in.avi", "o5.mp4"), "key file"),
        (embed("corrupt.key", "reg.db", "in.avi", "o6.mp4"), "key file"),
        (embed("unit.key", "notdb.db", "in.avi", "o7.mp4"), "not a tracemark registry"),
        (embed("unit.key", "reg.db", "in.avi", "in.avi"), "is the input"),
        (embed("unit.key", "reg.db", "in.avi", "no/such/dir/o8.mp4"), "does not exist"),
        (embed("unit.key", "reg.db", "in.avi", "notes.txt"), "exists already"),
    ];
    let before_in = std::fs::read(p.join("in.avi")).unwrap();
    for (args, needle) in &cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&a, p, needle);
    }
    assert_eq!(std::fs::read(p.join("in.avi")).unwrap(), before_in, "input changed");
    assert_eq!(std::fs::read_to_string(p.join("notes.txt")).unwrap(), "not a video\n".repeat(50));
    // A registry made with one key refuses another.
    assert!(s.embed("first", &testdata("vtest-4s.avi"), "first.mp4").status.success());
    let a: Vec<String> = embed("other.key", "reg.db", "in.avi", "o9.mp4");
    fails(&a.iter().map(String::as_str).collect::<Vec<_>>(), p, "made with key");
    fails(&["trace", "--key", "other.key", "--registry", "reg.db", "first.mp4"], p, "made with key");
    fails(&["trace", "--key", "unit.key", "--registry", "none.db", "first.mp4"], p, "does not exist");
    fails(&["trace", "--key", "unit.key", "--registry", "reg.db", "notes.txt"], p, "cannot read");
    // The evidence report never replaces an input or an earlier file.
    let first_before = std::fs::read(p.join("first.mp4")).unwrap();
    let trace_to = |report: &str| -> Vec<String> {
        [
            "trace",
            "--key",
            "unit.key",
            "--registry",
            "reg.db",
            "--original",
            "in.avi",
            "first.mp4",
            "--report",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([report.to_string()])
        .collect()
    };
    for (report, needle) in [
        ("first.mp4", "is the input"),
        ("./in.avi", "is the input"),
        ("reg.db", "is the input"),
        ("unit.key", "is the input"),
        ("notes.txt", "exists already"),
        ("no/such/dir/r.html", "does not exist"),
    ] {
        fails(&trace_to(report).iter().map(String::as_str).collect::<Vec<_>>(), p, needle);
    }
    assert_eq!(std::fs::read(p.join("first.mp4")).unwrap(), first_before, "leaked clip changed");
    // Approval is mandatory, and nobody approves their own export.
    let o = run(
        &[
            "embed",
            "--key",
            "unit.key",
            "--registry",
            "reg.db",
            "--recipient",
            "X",
            "--officer",
            "A",
            "in.avi",
            "o10.mp4",
        ],
        p,
    );
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--approved-by"));
    let mut a = embed("unit.key", "reg.db", "in.avi", "o11.mp4");
    a[10] = "A".into();
    fails(&a.iter().map(String::as_str).collect::<Vec<_>>(), p, "different officer");
    // Nothing but the one good export was written or registered.
    assert_eq!(s.exports(), 1);
    let files = s.files();
    assert!(files.iter().all(|f| !f.starts_with('o') || f == "other.key"), "{files:?}");
    assert!(files.iter().all(|f| !f.contains("partial")), "{files:?}");
}

/// A full disk (simulated with a file-size limit: writes fail like ENOSPC) leaves neither
/// an output file nor a registry row.
#[test]
fn full_disk_leaves_no_output_and_no_row() {
    use std::os::unix::process::CommandExt;
    let s = Setup::new();
    let mut cmd = tm();
    cmd.args([
        "embed",
        "--key",
        "unit.key",
        "--registry",
        "reg.db",
        "--recipient",
        "X",
        "--officer",
        "A",
        "--approved-by",
        "B",
        "--crf",
        "0",
        "--preset",
        "ultrafast",
        testdata("vtest-4s.avi").to_str().unwrap(),
        "out.mp4",
    ])
    .current_dir(s.p());
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 200_000, rlim_max: 200_000 };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert!(!o.status.success(), "embed succeeded with a full disk");
    assert!(!s.p().join("out.mp4").exists());
    assert!(s.files().iter().all(|f| !f.contains("partial")), "{:?}", s.files());
    assert_eq!(s.exports(), 0);
}

#[test]
fn interrupt_during_embed_leaves_no_output_and_no_row() {
    let s = Setup::new();
    let child = tm()
        .args([
            "embed",
            "--key",
            "unit.key",
            "--registry",
            "reg.db",
            "--recipient",
            "X",
            "--officer",
            "A",
            "--approved-by",
            "B",
            "--preset",
            "veryslow",
            testdata("city-2s.mpg").to_str().unwrap(),
            "out.mp4",
        ])
        .current_dir(s.p())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the temporary output exists: the export is under way.
    let t0 = std::time::Instant::now();
    while !s.files().iter().any(|f| f.contains("partial")) {
        assert!(t0.elapsed().as_secs() < 60, "embed never started writing");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted"));
    assert!(!s.p().join("out.mp4").exists());
    assert!(s.files().iter().all(|f| !f.contains("partial")), "{:?}", s.files());
    assert_eq!(s.exports(), 0);
}

#[test]
fn verify_catches_edits_deletions_and_insertions_behind_the_tools_back() {
    let s = Setup::new();
    for r in ["A", "B", "C"] {
        assert!(s.embed(r, &testdata("vtest-4s.avi"), &format!("{r}.mp4")).status.success());
    }
    ok(&["registry", "verify", "--registry", "reg.db"], s.p());
    let tamper = |sql: &str, with_key: bool| {
        eprintln!("tamper: {sql}");
        let copy = s.p().join("tampered.db");
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(s.p().join(format!("tampered.db{ext}")));
        }
        // Checkpoint the WAL into the main file so a plain copy holds everything.
        let c = rusqlite::Connection::open(s.p().join("reg.db")).unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
        drop(c);
        std::fs::copy(s.p().join("reg.db"), &copy).unwrap();
        let c = rusqlite::Connection::open(&copy).unwrap();
        c.execute_batch(
            "DROP TRIGGER exports_no_update; DROP TRIGGER exports_no_delete; DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;",
        )
        .unwrap();
        c.execute_batch(sql).unwrap();
        drop(c);
        if with_key {
            // The bookkeeping was rewritten too: the key tells, and so does the head's
            // signature by the registry's authority key, with public keys only.
            fails(&["registry", "verify", "--registry", "tampered.db"], s.p(), "failed verification");
            let o = run(&["registry", "verify", "--registry", "tampered.db"], s.p());
            assert!(String::from_utf8_lossy(&o.stdout).contains("not signed by the registry's authority key"));
            fails(
                &["registry", "verify", "--registry", "tampered.db", "--key", "unit.key"],
                s.p(),
                "failed verification",
            );
        } else {
            fails(&["registry", "verify", "--registry", "tampered.db"], s.p(), "failed verification");
        }
    };
    ok(&["registry", "verify", "--registry", "reg.db", "--key", "unit.key"], s.p());
    tamper("UPDATE exports SET recipient = 'someone else' WHERE recipient = 'B';", false);
    tamper("DELETE FROM exports WHERE recipient = 'A';", false);
    tamper("DELETE FROM exports WHERE recipient = 'C'; DELETE FROM audit WHERE seq = 3;", false);
    tamper("UPDATE audit SET payload = replace(payload, 'Insp. Jones', 'Nobody') WHERE seq = 2;", false);
    // Audit entries: 1 creation, then an export and its delivery per recipient (C: 6, 7).
    tamper(
        "DELETE FROM exports WHERE recipient = 'C'; DELETE FROM audit WHERE seq >= 6; \
         UPDATE meta SET value = '5' WHERE key = 'head_seq'; \
         UPDATE meta SET value = (SELECT hash FROM audit WHERE seq = 5) WHERE key = 'head_hash';",
        true,
    );
    tamper(
        "INSERT INTO exports SELECT NULL, 'ffffffffffffffff', 'ghost', officer, approved_by, case_ref, reason, source_path, \
         source_sha256, output_path, output_sha256, frames, duration_s, width, height, embed_params, key_fingerprint, \
         created_at, approval FROM exports LIMIT 1;",
        false,
    );
    // The tool itself cannot change history either.
    let c = rusqlite::Connection::open(s.p().join("reg.db")).unwrap();
    assert!(c.execute("DELETE FROM exports", []).is_err());
    assert!(c.execute("UPDATE audit SET action = 'x'", []).is_err());
}

#[test]
fn two_exports_at_once_both_land() {
    let s = Setup::new();
    let spawn = |name: &str| {
        tm().args([
            "embed",
            "--key",
            "unit.key",
            "--registry",
            "reg.db",
            "--recipient",
            name,
            "--officer",
            "A",
            "--approved-by",
            "B",
            "--preset",
            "ultrafast",
            testdata("vtest-4s.avi").to_str().unwrap(),
            &format!("{name}.mp4"),
        ])
        .current_dir(s.p())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (a, b) = (spawn("one"), spawn("two"));
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(s.exports(), 2);
    ok(&["registry", "verify", "--registry", "reg.db"], s.p());
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `tracemark ... | head -c 10`: the reader is gone before the program prints.
    let dir = tempfile::tempdir().unwrap();
    let mut child = tm()
        .args(["keygen", "--out", "unit.key"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    // Quietly, with the status of a tool killed by SIGPIPE: not a success nobody saw.
    assert!(o.status.code() == Some(141) && err.is_empty(), "{:?}: {err}", o.status);
    assert!(dir.path().join("unit.key").exists());
}

#[test]
fn keygen_never_overwrites() {
    let s = Setup::new();
    let before = std::fs::read(s.p().join("unit.key")).unwrap();
    fails(&["keygen", "--out", "unit.key"], s.p(), "exists already");
    assert_eq!(std::fs::read(s.p().join("unit.key")).unwrap(), before);
}

/// Every frame's timestamp in seconds, through the library's reader.
fn timestamps(path: &Path) -> Vec<f64> {
    let mut r = tracemark_core::video::VideoReader::open(path).unwrap();
    let (n, d) = r.info().time_base;
    let mut f = tracemark_core::Frame::new(2, 2);
    let mut ts = Vec::new();
    while r.read_frame(&mut f).unwrap() {
        ts.push(f.pts.unwrap() as f64 * f64::from(n) / f64::from(d));
    }
    ts
}

/// 10-bit input is converted to 8-bit 4:2:0 (documented), and variable-frame-rate input
/// keeps its irregular timestamps; both stay traceable.
#[test]
fn ten_bit_and_variable_frame_rate_inputs() {
    let s = Setup::new();
    let src = testdata("vtest-4s.avi");
    ffmpeg(
        &["-i", src.to_str().unwrap(), "-c:v", "libx264", "-pix_fmt", "yuv420p10le", "-crf", "10", "ten.mp4"],
        s.p(),
    );
    ffmpeg(
        &[
            "-i",
            src.to_str().unwrap(),
            "-vf",
            "select='lt(mod(n\\,5)\\,3)'",
            "-fps_mode",
            "vfr",
            "-c:v",
            "libx264",
            "-crf",
            "10",
            "vfr.mp4",
        ],
        s.p(),
    );
    for (input, out) in [("ten.mp4", "ten-marked.mp4"), ("vfr.mp4", "vfr-marked.mp4")] {
        let o = s.embed("X", &s.p().join(input), out);
        assert!(o.status.success(), "{input}: {}", String::from_utf8_lossy(&o.stderr));
        let (a, b) = (timestamps(&s.p().join(input)), timestamps(&s.p().join(out)));
        assert_eq!(a.len(), b.len(), "{input}: frame count");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 0.002, "{input}: {x} became {y}");
        }
        let r = s.trace(out, None);
        assert_eq!(r["verdict"], "identified", "{input}: {r}");
    }
    let vfr = timestamps(&s.p().join("vfr.mp4"));
    let gaps: Vec<f64> = vfr.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().any(|&g| g > 0.15) && gaps.iter().any(|&g| g < 0.15),
        "the test clip is not VFR: {gaps:?}"
    );
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=pix_fmt",
            "-of",
            "csv=p=0",
            "ten-marked.mp4",
        ])
        .current_dir(s.p())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "yuv420p");
}

#[test]
fn traces_through_real_ffmpeg_mirrors_rotations_and_perspective() {
    let s = Setup::new();
    let src = testdata("vtest-4s.avi");
    assert!(s.embed("channel-A", &src, "a.mp4").status.success());
    assert!(s.embed("channel-B", &src, "b.mp4").status.success());
    let x264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p"];
    let attacks: [(&str, &str); 4] = [
        ("hflip", "hflip,crop=trunc(iw*0.9/2)*2:trunc(ih*0.9/2)*2"),
        ("rotate", "rotate=-4*PI/180:fillcolor=black"),
        (
            "perspective",
            "perspective=x0=W*0.06:y0=H*0.02:x1=W*0.95:y1=H*0.05:x2=W*0.03:y2=H*0.97:x3=W*0.98:y3=H*0.94,\
             gblur=sigma=0.8",
        ),
        ("letterbox", "crop=iw:trunc(iw/1.85/2)*2,pad=iw:576:0:(oh-ih)/2:black"),
    ];
    for (name, vf) in attacks {
        let out = format!("{name}.mp4");
        let mut args = vec!["-i", "b.mp4", "-vf", vf];
        args.extend(x264);
        args.push(&out);
        ffmpeg(&args, s.p());
        let informed = s.trace(&out, Some(&src));
        assert_eq!(informed["verdict"], "identified", "{name}: {informed}");
        assert_eq!(informed["suspects"][0]["recipient"], "channel-B", "{name}: {informed}");
        assert_eq!(informed["suspects"].as_array().unwrap().len(), 1, "{name}: {informed}");
        let reg = &informed["registration"];
        assert_eq!(reg["mirrored"], name == "hflip", "{name}: {reg}");
        if name == "rotate" {
            let deg = reg["rotation_deg"].as_f64().unwrap();
            assert!((deg.abs() - 4.0).abs() < 0.3, "{name}: rotation {deg}");
        }
        // With the source at hand the trace is never weaker than without it.
        let blind = s.trace(&out, None);
        let p = |r: &Value| r["candidates"][0]["false_positive_probability"].as_f64().unwrap();
        assert!(
            blind["candidates"][0]["recipient"] != "channel-B" || p(&informed) <= p(&blind),
            "{name}: informed {informed} weaker than blind {blind}"
        );
        if name == "hflip" {
            assert_eq!(blind["verdict"], "identified", "{name}: {blind}");
            assert_eq!(blind["registration"]["mirrored_horizontally"], true, "{name}: {blind}");
        }
    }
}

/// New exports' marks move with the picture on a pan (`tracemark/v4`): the marked file is
/// far smaller than with the mark fixed on the screen, and the copy is traced with and
/// without the source, mirrored and rescaled too.
#[test]
fn a_pan_exported_with_the_moving_mark_is_small_and_traced() {
    let s = Setup::new();
    let src = testdata("pan1080-1s.mp4");
    assert!(s.embed("channel-A", &src, "a.mp4").status.success());
    assert!(s.embed("channel-B", &src, "b.mp4").status.success());
    let list: Value =
        serde_json::from_str(&ok(&["registry", "list", "--registry", "reg.db", "--json"], s.p())).unwrap();
    let params: Value = serde_json::from_str(list[0]["embed_params"].as_str().unwrap()).unwrap();
    assert_eq!(params["scheme"], "tracemark/v4", "{params}");
    // The same export with the mark fixed on the screen (the older layout).
    assert!(s.embed_with("channel-C", &src, "c.mp4", &["--scheme", "v1"]).status.success());
    let size = |f: &str| std::fs::metadata(s.p().join(f)).unwrap().len() as f64;
    // On this 30-frame cut at preset ultrafast: 0.61x measured (v2, whose mark slid against
    // the picture and whose mask stayed on the screen's grid: 0.82x; on 6 s of the pan at
    // preset medium, 2.7x the plain file with the fixed mark, 0.95x with v3, BENCHMARKS.md).
    assert!(size("b.mp4") < 0.7 * size("c.mp4"), "moving mark {} vs fixed {}", size("b.mp4"), size("c.mp4"));
    let x264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p"];
    for (name, vf) in [("scaled", "scale=1280:720"), ("hflip", "hflip,scale=1280:720")] {
        let out = format!("{name}.mp4");
        let mut args = vec!["-i", "b.mp4", "-vf", vf];
        args.extend(x264);
        args.push(&out);
        ffmpeg(&args, s.p());
        for original in [Some(src.as_path()), None] {
            let r = s.trace(&out, original);
            assert_eq!(r["verdict"], "identified", "{name} {original:?}: {r}");
            assert_eq!(r["suspects"][0]["recipient"], "channel-B", "{name}: {r}");
            assert_eq!(r["suspects"].as_array().unwrap().len(), 1, "{name}: {r}");
        }
    }
}

/// A still camera with people crossing it, where a v3 mark drifted with them and a v4 mark
/// stays still: an export of each layout is traced after a re-encode, with and without the
/// source.
#[test]
fn still_camera_exports_of_both_moving_layouts_are_traced() {
    let s = Setup::new();
    let src = testdata("vtest-54s-4s.avi");
    assert!(s.embed("desk-v4", &src, "v4.mp4").status.success());
    assert!(s.embed_with("desk-v3", &src, "v3.mp4", &["--scheme", "v3"]).status.success());
    for (file, recipient) in [("v4.mp4", "desk-v4"), ("v3.mp4", "desk-v3")] {
        let out = format!("re-{file}");
        ffmpeg(
            &[
                "-i", file, "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
                &out,
            ],
            s.p(),
        );
        for original in [Some(src.as_path()), None] {
            let r = s.trace(&out, original);
            assert_eq!(r["verdict"], "identified", "{file} {original:?}: {r}");
            assert_eq!(r["suspects"][0]["recipient"], recipient, "{file} {original:?}: {r}");
            assert_eq!(r["suspects"].as_array().unwrap().len(), 1, "{file} {original:?}: {r}");
        }
    }
}

/// A `tracemark/v5` export (every band at the same amplitude) is recorded as such and traced
/// from a small picture-in-picture of it (a 0.375x inset on a 1280x720 background), the
/// attack its low frequencies are for, and from a plain re-encode without the source.
#[test]
fn an_even_band_export_is_traced_from_a_small_picture_in_picture() {
    let s = Setup::new();
    let src = testdata("vtest-4s.avi");
    assert!(s.embed_with("desk-v5", &src, "v5.mp4", &["--scheme", "v5"]).status.success());
    assert!(s.embed("desk-v4", &src, "v4.mp4").status.success());
    let list: Value =
        serde_json::from_str(&ok(&["registry", "list", "--registry", "reg.db", "--json"], s.p())).unwrap();
    let scheme_of = |e: &Value| {
        serde_json::from_str::<Value>(e["embed_params"].as_str().unwrap()).unwrap()["scheme"].clone()
    };
    let schemes: Vec<Value> = list.as_array().unwrap().iter().map(scheme_of).collect();
    assert!(schemes.contains(&Value::from("tracemark/v5")), "{schemes:?}");
    let pip = "color=c=0x406080:s=1280x720:r=10[bg];[0:v]scale=288:216,setsar=1[fg];\
               [bg][fg]overlay=x=W-w-32:y=32:shortest=1,format=yuv420p[v]";
    ffmpeg(
        &[
            "-i",
            "v5.mp4",
            "-filter_complex",
            pip,
            "-map",
            "[v]",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "23",
            "pip.mp4",
        ],
        s.p(),
    );
    ffmpeg(&["-i", "v5.mp4", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "re.mp4"], s.p());
    for (file, original) in [("pip.mp4", Some(src.as_path())), ("re.mp4", None)] {
        let r = s.trace(file, original);
        assert_eq!(r["verdict"], "identified", "{file}: {r}");
        assert_eq!(r["suspects"][0]["recipient"], "desk-v5", "{file}: {r}");
        assert_eq!(r["suspects"].as_array().unwrap().len(), 1, "{file}: {r}");
    }
}

/// Traces an export made by an older build (`testdata/PROVENANCE.md`): its key, registry
/// and marked copy of `pan1080-1s.mp4`, with and without the source.
fn trace_old_export(version: &str, recipient: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("unit.key");
    std::fs::copy(testdata(&format!("{version}-export.key")), &key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let registry = dir.path().join("reg.db");
    std::fs::copy(testdata(&format!("{version}-export.db")), &registry).unwrap();
    let (leak, src) = (testdata(&format!("pan1080-1s-{version}-export.mp4")), testdata("pan1080-1s.mp4"));
    for original in [Some(src.as_path()), None] {
        let mut args =
            vec!["trace", "--key", "unit.key", "--registry", "reg.db", "--json", leak.to_str().unwrap()];
        if let Some(o) = original {
            args.extend(["--original", o.to_str().unwrap()]);
        }
        let r: Value = serde_json::from_str(ok(&args, dir.path()).trim()).unwrap();
        assert_eq!(r["verdict"], "identified", "{version} {original:?}: {r}");
        assert_eq!(r["suspects"][0]["recipient"], recipient, "{version} {original:?}: {r}");
    }
}

/// A copy whose pilot x264 crushed below the blind search's null peaks while its codeword
/// survived (`testdata/PROVENANCE.md`: the gauntlet's pan at 48.3 dB after crf 38) is named
/// blind by searching each export's whole mark, and only then.
#[test]
fn a_copy_whose_pilot_is_lost_is_named_by_searching_its_whole_mark() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("unit.key");
    std::fs::copy(testdata("faint-pilot.key"), &key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::copy(testdata("faint-pilot.db"), dir.path().join("reg.db")).unwrap();
    let leak = testdata("pan1080-5s-48db-crf38.mp4");
    let trace = |whole_marks: &str| -> Value {
        let args = [
            "trace",
            "--key",
            "unit.key",
            "--registry",
            "reg.db",
            "--json",
            "--whole-mark-candidates",
            whole_marks,
            leak.to_str().unwrap(),
        ];
        serde_json::from_str(ok(&args, dir.path()).trim()).unwrap()
    };
    let pilot_only = trace("0");
    assert_eq!(pilot_only["verdict"], "no_mark", "{pilot_only}");
    let r = trace("16");
    assert_eq!(r["verdict"], "identified", "{r}");
    let suspects = r["suspects"].as_array().unwrap();
    assert_eq!(suspects.len(), 1, "{r}");
    assert_eq!(suspects[0]["recipient"], "channel-C", "{r}");
    // Over every geometry of three whole-mark searches, and half the error budget.
    let p = suspects[0]["false_positive_probability"].as_f64().unwrap();
    assert!(p < 1e-9, "{r}");
}

/// An export made before the mark moved with the picture (`tracemark/v1`, by the build of
/// commit ccdb74a) is still traced, with and without the source.
#[test]
fn an_export_made_with_the_fixed_mark_is_still_traced() {
    trace_old_export("v1", "old-export");
}

/// An export whose mark followed the older, biased motion measure (`tracemark/v2`, by the
/// build of commit c356757) is still traced, with and without the source.
#[test]
fn an_export_made_with_the_v2_moving_mark_is_still_traced() {
    trace_old_export("v2", "old-export-v2");
}

/// An export whose mark followed every clean translation, however slow (`tracemark/v3`, by
/// the build of commit 3593af3), is still traced, with and without the source.
#[test]
fn an_export_made_with_the_v3_moving_mark_is_still_traced() {
    trace_old_export("v3", "old-export-v3");
}

/// An export whose mark follows pans only, every band at Watson's relative amplitude
/// (`tracemark/v4`, by the build of commit 6cda208), is still traced, with and without the
/// source.
#[test]
fn an_export_made_with_the_v4_watson_band_mark_is_still_traced() {
    trace_old_export("v4", "old-export-v4");
}
