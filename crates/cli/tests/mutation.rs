//! Mutation test: deterministically corrupted variants of (small re-encodes of) the testdata
//! clips, fed to `embed` and to `trace`, each under a time limit. Whatever the bytes, the
//! tool must exit 0 or 1 (never panic, never die of a signal, never hang), and leave no
//! temporary file and no output from a refused export behind.
//!
//! `a_few_corrupted_inputs_are_handled` runs the first 250 in CI (`TRACEMARK_CI_MUTATIONS`); the full run is
//! `scripts/mutation-test.sh` (`TRACEMARK_MUTATIONS` variants, default 1000).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(name)
}

/// xorshift64*: the same variants on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Small clips in several containers, made from the testdata clips.
fn bases(dir: &Path) -> Vec<PathBuf> {
    let specs = [
        ("vtest-4s.avi", "base-a.avi", &["-c:v", "mpeg4", "-q:v", "3"][..]),
        ("vtest-4s.avi", "base-b.mkv", &["-c:v", "libx264", "-preset", "ultrafast", "-crf", "12"][..]),
        ("city-2s.mpg", "base-c.mpg", &["-c:v", "mpeg2video", "-q:v", "3"][..]),
        ("cockatoo-3s.mp4", "base-d.mp4", &["-c:v", "libx264", "-preset", "ultrafast", "-crf", "12"][..]),
        ("cockatoo-3s.mp4", "base-e.ts", &["-c:v", "libx264", "-preset", "ultrafast", "-crf", "12"][..]),
    ];
    specs
        .iter()
        .map(|(src, name, codec)| {
            let out = dir.join(name);
            let o = Command::new("ffmpeg")
                .args(["-nostdin", "-y", "-loglevel", "error", "-i"])
                .arg(testdata(src))
                .args(["-t", "1", "-vf", "scale=160:-2", "-an"])
                .args(*codec)
                .arg(&out)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            out
        })
        .collect()
}

/// Variant `n` of `bytes` of one of five kinds (`kind` modulo 5): truncations, bit flips,
/// header edits, and cut or repeated runs.
fn mutate(bytes: &[u8], kind: u64, n: u64) -> (String, Vec<u8>) {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ (n + 1).wrapping_mul(0x1000_0000_01b3));
    let mut v = bytes.to_vec();
    let len = v.len();
    match kind % 5 {
        0 => {
            let at = r.below(len);
            v.truncate(at);
            (format!("truncate at {at}"), v)
        }
        1 => {
            let k = 1 + r.below(16);
            for _ in 0..k {
                let at = r.below(len);
                v[at] ^= 1 << r.below(8);
            }
            (format!("{k} bit flips"), v)
        }
        2 => {
            // The header: where container and codec parameters live.
            let span = len.min(4096);
            let k = 1 + r.below(8);
            for _ in 0..k {
                let at = r.below(span);
                v[at] = match r.below(3) {
                    0 => 0,
                    1 => 0xff,
                    _ => r.next() as u8,
                };
            }
            (format!("{k} header bytes"), v)
        }
        3 => {
            let (a, b) = (r.below(len), r.below(len));
            let (a, b) = (a.min(b), a.max(b));
            v.drain(a..b);
            (format!("cut {a}..{b}"), v)
        }
        _ => {
            let a = r.below(len);
            let b = (a + 1 + r.below(65536)).min(len);
            let run = v[a..b].to_vec();
            let at = r.below(len);
            v.splice(at..at, run);
            (format!("repeat {a}..{b} at {at}"), v)
        }
    }
}

/// Runs `tracemark` with a time limit; the exit code, or a description of what went wrong.
fn run(args: &[&str], dir: &Path, limit: Duration) -> Result<i32, String> {
    let mut child = Command::cargo_bin("tracemark")
        .unwrap()
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            return match status.code() {
                Some(c @ (0 | 1)) => Ok(c),
                Some(c) => Err(format!("exit {c}: {err}")),
                None => Err(format!("killed by a signal: {err}")),
            };
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("hung for more than {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Feeds `count` variants (spread over the bases) to `embed` and `trace`; panics with the
/// list of failures, and prints a summary of the outcomes.
fn mutation_run(count: u64) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    assert_eq!(run(&["keygen", "--out", "unit.key"], p, Duration::from_secs(30)), Ok(0));
    let bases = bases(p);
    let originals: Vec<Vec<u8>> = bases.iter().map(|b| std::fs::read(b).unwrap()).collect();
    // A registry with one export, for the traces.
    let first = bases[0].to_str().unwrap().to_string();
    let embed = |input: &str, out: &str| {
        run(
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
                "--approved-by",
                "B",
                "--preset",
                "ultrafast",
                input,
                out,
            ],
            p,
            Duration::from_secs(60),
        )
    };
    assert_eq!(embed(&first, "first.mp4"), Ok(0));
    let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    for n in 0..count {
        let b = (n as usize) % bases.len();
        let ext = bases[b].extension().unwrap().to_str().unwrap();
        let (what, bytes) = mutate(&originals[b], n / bases.len() as u64, n);
        let input = format!("variant.{ext}");
        std::fs::write(p.join(&input), &bytes).unwrap();
        let label = format!("variant {n} of {} ({what})", bases[b].file_name().unwrap().to_string_lossy());
        match embed(&input, "out.mp4") {
            Ok(0) => {
                *outcomes.entry("embed exported").or_default() += 1;
                let _ = std::fs::remove_file(p.join("out.mp4"));
            }
            Ok(_) => {
                *outcomes.entry("embed refused").or_default() += 1;
                if p.join("out.mp4").exists() {
                    failures.push(format!("{label}: embed failed but left out.mp4"));
                    let _ = std::fs::remove_file(p.join("out.mp4"));
                }
            }
            Err(e) => failures.push(format!("{label}: embed {e}")),
        }
        match run(
            &["trace", "--key", "unit.key", "--registry", "reg.db", "--json", &input],
            p,
            Duration::from_secs(60),
        ) {
            Ok(0) => *outcomes.entry("trace completed").or_default() += 1,
            Ok(_) => *outcomes.entry("trace refused").or_default() += 1,
            Err(e) => failures.push(format!("{label}: trace {e}")),
        }
        let left: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.contains("partial"))
            .collect();
        if !left.is_empty() {
            failures.push(format!("{label}: left {left:?}"));
        }
    }
    eprintln!(
        "mutation test: {count} variants of {} clips; outcomes {outcomes:?}; failures {}",
        bases.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn a_few_corrupted_inputs_are_handled() {
    let count = std::env::var("TRACEMARK_CI_MUTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(250);
    mutation_run(count);
}

/// The full run (`scripts/mutation-test.sh`).
#[test]
#[ignore = "long: run through scripts/mutation-test.sh"]
fn many_corrupted_inputs_are_handled() {
    let count = std::env::var("TRACEMARK_MUTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    mutation_run(count);
}
