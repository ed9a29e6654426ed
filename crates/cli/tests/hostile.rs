//! Odd and hostile inputs (issue 12): no panic, no hang, no silent loss, and every export
//! reads its own mark back before it is delivered.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use serde_json::Value;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(name)
}

fn tm() -> Command {
    Command::cargo_bin("tracemark").unwrap()
}

/// Runs `tracemark` with a time limit: a hang is a failure, not a stuck test.
fn run_os(args: &[OsString], dir: &Path, limit: Duration) -> Output {
    let mut child = tm()
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("{args:?} hung for {limit:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn run(args: &[&str], dir: &Path) -> Output {
    run_os(&os(args), dir, Duration::from_secs(300))
}

fn ok(args: &[&str], dir: &Path) -> String {
    let o = run(args, dir);
    assert!(o.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// A failure with exit status 1 (not a panic's 101) and a one-line error naming every
/// needle.
fn one_line_error(o: &Output, what: &str, needles: &[&str]) -> String {
    assert_eq!(o.status.code(), Some(1), "{what}: {o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: expected one line, got {err:?}");
    for n in needles {
        assert!(lines[0].to_lowercase().contains(&n.to_lowercase()), "{what}: {:?} lacks {n:?}", lines[0]);
    }
    lines[0].to_string()
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

fn ffprobe(path: &Path, entries: &str) -> String {
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", entries, "-of", "compact"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn rows(dir: &Path) -> Vec<Value> {
    let out = ok(&["registry", "list", "--registry", "reg.db", "--json"], dir);
    serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().clone()
}

fn embed_args(input: &str, output: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
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
        "ultrafast",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v.push(input.into());
    v.push(output.into());
    v
}

fn embed(dir: &Path, input: &str, output: &str, extra: &[&str]) -> Output {
    let a = embed_args(input, output, extra);
    run(&a.iter().map(String::as_str).collect::<Vec<_>>(), dir)
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    ok(&["keygen", "--out", "unit.key"], dir.path());
    dir
}

#[test]
fn tiny_clips_and_non_utf8_names_are_clear_errors_not_panics() {
    let d = setup();
    let p = d.path();
    ffmpeg(
        &["-i", testdata("vtest-4s.avi").to_str().unwrap(), "-t", "1", "-vf", "scale=24:24", "tiny.mp4"],
        p,
    );
    ok(
        &embed_args(&testdata("vtest-4s.avi").display().to_string(), "a.mp4", &["--json"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        p,
    );
    // Blind trace of a clip too small for the mark's tile.
    let o = run(&["trace", "--key", "unit.key", "--registry", "reg.db", "tiny.mp4"], p);
    one_line_error(&o, "blind 24x24", &["24x24", "too small", "--original"]);
    // File names that are not UTF-8, as input (embed, trace) and as output.
    let bad = OsString::from_vec(b"clip-\xff\xfe.avi".to_vec());
    std::fs::copy(testdata("vtest-4s.avi"), p.join(&bad)).unwrap();
    let mut args: Vec<OsString> = embed_args("IN", "out.mp4", &[]).into_iter().map(OsString::from).collect();
    let n = args.len();
    args[n - 2] = bad.clone();
    let o = run_os(&args, p, Duration::from_secs(60));
    one_line_error(&o, "embed non-UTF-8 input", &["UTF-8", "rename"]);
    let mut t = os(&["trace", "--key", "unit.key", "--registry", "reg.db"]);
    t.push(bad.clone());
    one_line_error(&run_os(&t, p, Duration::from_secs(60)), "trace non-UTF-8", &["UTF-8"]);
    let mut t = os(&["trace", "--key", "unit.key", "--registry", "reg.db", "--original"]);
    t.extend([bad.clone(), "a.mp4".into()]);
    one_line_error(&run_os(&t, p, Duration::from_secs(60)), "trace --original non-UTF-8", &["UTF-8"]);
    let mut args: Vec<OsString> = embed_args(testdata("vtest-4s.avi").to_str().unwrap(), "OUT", &[])
        .into_iter()
        .map(OsString::from)
        .collect();
    args[n - 1] = OsString::from_vec(b"out-\xff.mp4".to_vec());
    one_line_error(&run_os(&args, p, Duration::from_secs(60)), "embed non-UTF-8 output", &["UTF-8"]);
    assert_eq!(rows(p).len(), 1);
    assert!(files(p).iter().all(|f| !f.contains("partial") && !f.starts_with("out")), "{:?}", files(p));
}

#[test]
fn fifos_devices_and_directories_are_refused_at_once_by_name() {
    let d = setup();
    let p = d.path();
    std::fs::copy(testdata("vtest-4s.avi"), p.join("in.avi")).unwrap();
    let fifo = p.join("pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a valid, NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    std::fs::create_dir(p.join("adir")).unwrap();
    // A registry for the trace cases to get past.
    assert!(embed(p, "in.avi", "first.mp4", &[]).status.success());
    let limit = Duration::from_secs(20);
    for bad in ["pipe", "/dev/zero", "adir"] {
        for slot in ["input", "key", "registry"] {
            let (input, key, reg) = match slot {
                "input" => (bad, "unit.key", "reg.db"),
                "key" => ("in.avi", bad, "reg.db"),
                _ => ("in.avi", "unit.key", bad),
            };
            let mut a = embed_args(input, "out.mp4", &[]);
            a[2] = key.into();
            a[4] = reg.into();
            let o = run_os(&a.iter().map(OsString::from).collect::<Vec<_>>(), p, limit);
            let name = if bad == "adir" { "adir" } else { bad.trim_start_matches("/dev/") };
            let expect: &[&str] = if slot == "registry" && bad == "adir" {
                &[name, "not a tracemark registry"]
            } else {
                &[name, "not a regular file"]
            };
            one_line_error(&o, &format!("{bad} as {slot}"), expect);
        }
        for slot in ["leaked", "original", "key", "registry"] {
            let mut a = vec!["trace", "--key", "unit.key", "--registry", "reg.db", "in.avi"];
            match slot {
                "leaked" => a[5] = bad,
                "original" => a.extend(["--original", bad]),
                "key" => a[2] = bad,
                _ => a[4] = bad,
            }
            let o = run_os(&os(&a), p, limit);
            assert!(!o.status.success() && o.status.code() != Some(101), "{bad} as trace {slot}: {o:?}");
        }
    }
    assert!(!p.join("out.mp4").exists());
    assert!(files(p).iter().all(|f| !f.contains("partial")), "{:?}", files(p));
    assert_eq!(rows(p).len(), 1);
}

#[test]
fn truncated_inputs_are_refused_unless_allowed_and_then_recorded() {
    let d = setup();
    let p = d.path();
    let src = testdata("vtest-4s.avi");
    ffmpeg(
        &[
            "-i",
            src.to_str().unwrap(),
            "-t",
            "2",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-crf",
            "10",
            "full.mkv",
        ],
        p,
    );
    ffmpeg(&["-i", "full.mkv", "-c", "copy", "full.ts"], p);
    // A cut MPEG-TS is not detected as truncated yet (no declared frame count survives the cut).
    {
        let ext = "mkv";
        let full = std::fs::read(p.join(format!("full.{ext}"))).unwrap();
        std::fs::write(p.join(format!("cut.{ext}")), &full[..full.len() / 2]).unwrap();
        let o = embed(p, &format!("cut.{ext}"), "out.mp4", &[]);
        let line = one_line_error(
            &o,
            &format!("cut {ext}"),
            &["cut.", "truncated", "frames decoded", "declares 20", "--allow-truncated"],
        );
        assert!(!p.join("out.mp4").exists(), "{line}");
        let o = embed(p, &format!("cut.{ext}"), "out.mp4", &["--allow-truncated", "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("truncated"), "{o:?}");
        let rec: Value = serde_json::from_slice(&o.stdout).unwrap();
        let params: Value = serde_json::from_str(rec["embed_params"].as_str().unwrap()).unwrap();
        let t = &params["truncated_input"];
        assert_eq!(t["declared_frames"], 20, "{params}");
        let decoded = t["decoded_frames"].as_u64().unwrap();
        assert!(decoded < 16 && decoded == rec["frames"].as_u64().unwrap(), "{rec}");
        assert!(rec["duration_s"].as_f64().unwrap() < 1.7, "{rec}");
        std::fs::remove_file(p.join("out.mp4")).unwrap();
    }
    // A whole file is not truncated.
    let o = embed(p, "full.ts", "whole.mp4", &["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!rec["embed_params"].as_str().unwrap().contains("truncated"), "{rec}");
    let statuses: Vec<String> = rows(p).iter().map(|r| r["status"].as_str().unwrap().to_string()).collect();
    assert_eq!(statuses, ["delivered", "delivered"], "a refused input left a row");
}

#[test]
fn the_largest_video_stream_is_marked_and_the_choice_reported() {
    let d = setup();
    let p = d.path();
    let src = testdata("vtest-4s.avi");
    // The main picture first, a small picture-in-picture stream second.
    ffmpeg(
        &[
            "-i",
            src.to_str().unwrap(),
            "-t",
            "2",
            "-filter_complex",
            "[0:v]split[a][b];[a]scale=64:48[s]",
            "-map",
            "[b]",
            "-map",
            "[s]",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-crf",
            "12",
            "two.mkv",
        ],
        p,
    );
    let o = embed(p, "two.mkv", "out.mp4", &["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("2 video streams") && err.contains("stream 0") && err.contains("768x576"), "{err}");
    let rec: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((rec["width"].as_u64(), rec["height"].as_u64()), (Some(768), Some(576)), "{rec}");
}

#[test]
fn long_output_names_and_stale_temporaries() {
    let d = setup();
    let p = d.path();
    let long = format!("{}.mp4", "n".repeat(246));
    assert_eq!(long.len(), 250);
    // A killed run's leftovers (a pid above any pid_max: dead) and a live one's (pid 1).
    let dead = ".x.mp4.partial-4194399999-0badcafe.mp4";
    let live = ".x.mp4.partial-1-0badcafe.mp4";
    std::fs::write(p.join(dead), b"stale").unwrap();
    std::fs::write(p.join(live), b"in use").unwrap();
    let o = embed(p, testdata("vtest-4s.avi").to_str().unwrap(), &long, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains(dead), "{o:?}");
    assert_eq!(files(p), [live.to_string(), long.clone(), "reg.db".into(), "unit.key".into()]);
}

#[test]
fn weak_keys_are_refused_and_colour_range_and_field_order_are_kept() {
    use std::os::unix::fs::PermissionsExt;
    let d = setup();
    let p = d.path();
    std::fs::copy(p.join("unit.key"), p.join("open.key")).unwrap();
    std::fs::set_permissions(p.join("open.key"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut a = embed_args(testdata("vtest-4s.avi").to_str().unwrap(), "o.mp4", &[]);
    a[2] = "open.key".into();
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>(), p);
    one_line_error(&o, "0666 key", &["open.key", "chmod 600"]);
    // Limited range ("tv") stays tagged.
    let o = embed(p, testdata("city-2s.mpg").to_str().unwrap(), "city.mp4", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(ffprobe(&p.join("city.mp4"), "stream=color_range").contains("color_range=tv"));
    // Interlaced, top field first, stays so.
    ffmpeg(
        &[
            "-i",
            testdata("vtest-4s.avi").to_str().unwrap(),
            "-t",
            "2",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-crf",
            "12",
            "-flags",
            "+ildct+ilme",
            "-x264opts",
            "tff=1",
            "-field_order",
            "tt",
            "inter.mkv",
        ],
        p,
    );
    assert!(ffprobe(&p.join("inter.mkv"), "stream=field_order").contains("field_order=tt"));
    let o = embed(p, "inter.mkv", "inter.mp4", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fo = ffprobe(&p.join("inter.mp4"), "stream=field_order");
    assert!(fo.contains("field_order=tt"), "{fo}");
}

#[test]
fn exports_whose_own_mark_cannot_be_read_back_are_refused() {
    let d = setup();
    let p = d.path();
    let src = testdata("vtest-4s.avi");
    ffmpeg(
        &["-i", src.to_str().unwrap(), "-vf", "scale=16:16", "-c:v", "libx264", "-crf", "10", "s16.mp4"],
        p,
    );
    let o = embed(p, "s16.mp4", "o1.mp4", &[]);
    one_line_error(&o, "16x16", &["self-check", "16x16", "too small", "nothing was delivered"]);
    let o = embed(p, src.to_str().unwrap(), "o2.mp4", &["--crf", "51"]);
    one_line_error(&o, "crf 51", &["self-check", "--crf 51"]);
    let o = embed(p, src.to_str().unwrap(), "o3.mp4", &["--crf", "30", "--target-psnr", "70"]);
    one_line_error(&o, "psnr 70", &["self-check", "--target-psnr"]);
    // A normal export passes, and is the only row that looks delivered.
    let o = embed(p, src.to_str().unwrap(), "o4.mp4", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let statuses: Vec<String> = rows(p).iter().map(|r| r["status"].as_str().unwrap().to_string()).collect();
    assert_eq!(statuses, ["failed", "failed", "failed", "delivered"]);
    assert_eq!(files(p), ["o4.mp4", "reg.db", "s16.mp4", "unit.key"]);
}

/// SIGINT, SIGTERM and SIGHUP alike: 128 + the signal, nothing left, no row. A file-size
/// limit (SIGXFSZ not ignored by the caller) fails like a full disk, cleanly.
#[test]
fn signals_during_embed_leave_nothing() {
    use std::os::unix::process::CommandExt;
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGHUP, 129), (libc::SIGINT, 130)] {
        let d = setup();
        let p = d.path();
        let a = embed_args(testdata("city-2s.mpg").to_str().unwrap(), "out.mp4", &[]);
        let a: Vec<String> =
            a.into_iter().map(|s| if s == "ultrafast" { "veryslow".into() } else { s }).collect();
        let child = tm()
            .args(&a)
            .current_dir(p)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while !files(p).iter().any(|f| f.contains("partial")) {
            assert!(t0.elapsed().as_secs() < 60, "embed never started writing");
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(code), "signal {sig}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted"));
        assert!(!p.join("out.mp4").exists());
        assert!(files(p).iter().all(|f| !f.contains("partial")), "{:?}", files(p));
        assert!(rows(p).iter().all(|r| r["status"] != "delivered"));
    }
    let d = setup();
    let p = d.path();
    let mut cmd = tm();
    cmd.args(embed_args(testdata("vtest-4s.avi").to_str().unwrap(), "out.mp4", &["--crf", "0"]))
        .current_dir(p);
    // SAFETY: only async-signal-safe libc calls between fork and exec; SIGXFSZ keeps its
    // default action (kill) unless tracemark handles it.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 200_000, rlim_max: 200_000 };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            libc::signal(libc::SIGXFSZ, libc::SIG_DFL);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(!p.join("out.mp4").exists());
    assert!(files(p).iter().all(|f| !f.contains("partial")), "{:?}", files(p));
    assert!(rows(p).is_empty());
}
