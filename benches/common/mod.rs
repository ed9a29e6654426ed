//! Helpers shared by the benches.
use std::path::Path;

use tracemark::core::video::VideoReader;
use tracemark::core::Frame;

/// The first frame of a clip in `testdata/`.
pub fn first_frame(clip: &str) -> Frame {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(clip);
    let mut r = VideoReader::open(&path).unwrap();
    let mut f = Frame::new(2, 2);
    assert!(r.read_frame(&mut f).unwrap(), "{clip} has no frame");
    f
}
