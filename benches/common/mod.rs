//! Helpers shared by the benches.
use std::path::Path;

use tracemark::core::video::VideoReader;
use tracemark::core::Frame;

/// The first frame of a clip in `testdata/`.
#[allow(dead_code)] // each bench compiles this module on its own
pub fn first_frame(clip: &str) -> Frame {
    first_frames(clip, 1).remove(0)
}

/// The first `n` frames of a clip in `testdata/` (all of them when it has fewer).
#[allow(dead_code)]
pub fn first_frames(clip: &str, n: usize) -> Vec<Frame> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(clip);
    let mut r = VideoReader::open(&path).unwrap();
    let mut frames = Vec::new();
    let mut f = Frame::new(2, 2);
    while frames.len() < n && r.read_frame(&mut f).unwrap() {
        frames.push(f.clone());
    }
    assert!(!frames.is_empty(), "{clip} has no frame");
    frames
}
