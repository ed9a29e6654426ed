//! Without its `video` feature the library links no FFmpeg (issue 12): other Rust tools can
//! mark and read frames without the system FFmpeg libraries.

#[test]
fn without_video_no_ffmpeg_is_linked() {
    let o = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "tracemark",
            "--no-default-features",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tree = String::from_utf8_lossy(&o.stdout);
    assert!(tree.contains("tracemark-core") && tree.contains("tracemark-extract"), "{tree}");
    assert!(!tree.to_lowercase().contains("ffmpeg"), "{tree}");
    // And with it (the default), FFmpeg is there: the test would notice a renamed crate.
    let o = std::process::Command::new(env!("CARGO"))
        .args(["tree", "-p", "tracemark", "-e", "normal", "--prefix", "none", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("ffmpeg-next"));
}
