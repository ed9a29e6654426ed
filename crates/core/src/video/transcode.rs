//! File to file: decode → parallel transform → encode, written atomically.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel as chan;
use ffmpeg_next as ff;

use super::reader::{ReadEvent, VideoInfo, VideoReader};
use super::writer::{EncodeSettings, VideoWriter};
use crate::frame::Frame;
use crate::motion::{displacement_by, MotionTracker, TrackedQueue};
use crate::output::{check_output, TempOutput};
use crate::pipeline::{FrameAt, FrameTransform, Progress, ProgressFn};
use crate::{Error, Result};

/// Settings of a transcode job. Build with [`TranscodeConfig::new`] and the `with_*`
/// methods; [`TranscodeConfig::validate`] is called by [`transcode`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TranscodeConfig {
    /// Encoder settings.
    pub encode: EncodeSettings,
    /// Threads for the frame transform; 0 means one per available core.
    pub threads: usize,
    /// Frames decoded but not yet encoded, at most; 0 means `2 * threads + 2`.
    pub frames_in_flight: usize,
    /// Replace an existing output file (never the input).
    pub overwrite: bool,
    /// Accept an input that ends well before its container says it should (see
    /// [`is_truncated`]); the report then says so. Refused by default.
    pub allow_truncated: bool,
}

/// Whether `decoded` frames fall well short of the `declared` count of a container: more
/// than a fifth and at least three frames missing. Containers' counts are estimates
/// (from a duration and a frame rate, say) and may be off by a frame or two.
pub fn is_truncated(decoded: u64, declared: Option<u64>) -> bool {
    declared.is_some_and(|d| decoded.saturating_mul(5) < d.saturating_mul(4) && d - decoded >= 3)
}

impl TranscodeConfig {
    /// Defaults: crf 18, preset medium, all cores, refuse to overwrite.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the x264 crf.
    pub fn with_crf(mut self, crf: u8) -> Self {
        self.encode.crf = crf;
        self
    }
    /// Sets the x264 preset.
    pub fn with_preset(mut self, preset: impl Into<String>) -> Self {
        self.encode.preset = preset.into();
        self
    }
    /// Sets the transform threads (0 = all cores).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }
    /// Sets the bound on frames in flight (0 = automatic).
    pub fn with_frames_in_flight(mut self, n: usize) -> Self {
        self.frames_in_flight = n;
        self
    }
    /// Allows replacing an existing output file.
    pub fn with_overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }
    /// Accepts (`true`) or refuses (`false`, the default) an input that ends early.
    pub fn with_allow_truncated(mut self, allow: bool) -> Self {
        self.allow_truncated = allow;
        self
    }
    /// Sets the odd-size policy.
    pub fn with_odd_dimensions(mut self, policy: super::OddDimensions) -> Self {
        self.encode.odd_dimensions = policy;
        self
    }
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        self.encode.validate()?;
        if self.threads > 1024 {
            return Err(Error::InvalidConfig {
                setting: "threads",
                reason: format!("{} threads is not sensible", self.threads),
            });
        }
        if self.frames_in_flight > 4096 {
            return Err(Error::InvalidConfig {
                setting: "frames_in_flight",
                reason: format!("{} frames in flight would use unbounded memory", self.frames_in_flight),
            });
        }
        Ok(())
    }
    fn effective_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }
    fn effective_in_flight(&self) -> usize {
        if self.frames_in_flight > 0 {
            self.frames_in_flight
        } else {
            2 * self.effective_threads() + 2
        }
    }
}

/// What a transcode did.
#[derive(Clone, Debug, PartialEq)]
pub struct TranscodeReport {
    /// Frames encoded.
    pub frames: u64,
    /// Facts about the input video.
    pub input: VideoInfo,
    /// Output picture size.
    pub output_size: (usize, usize),
    /// Streams that the output container could not take (not copied).
    pub skipped_streams: Vec<String>,
    /// Where the output was written.
    pub output: PathBuf,
    /// The input ended well before its container said it would ([`is_truncated`]; only
    /// with [`TranscodeConfig::allow_truncated`]): `frames` were encoded of
    /// `input.frames_estimate`.
    pub truncated: bool,
    /// Temporary files of earlier, killed runs removed from the output's directory.
    pub stale_removed: Vec<PathBuf>,
}

/// Refuses an output that is the input, sits in a missing directory, or exists already
/// (unless `overwrite`).
struct Slot<S> {
    frame: Frame,
    scratch: S,
}

enum Msg<S> {
    Done(u64, Slot<S>, std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>),
    Packet(ff::Packet),
    End(Result<u64>),
}

/// Transcodes `input` to `output` through `transform`: decode, transform frames in
/// parallel (at most `frames_in_flight` at once), encode in order, then atomically move the
/// finished file into place. On any error or cancellation no output file is left behind.
///
/// # Errors
/// Input errors ([`Error::InputNotFound`], [`Error::NotARegularFile`], [`Error::NotAVideo`],
/// [`Error::Decode`], [`Error::Truncated`] unless allowed, …), output errors
/// ([`Error::OutputExists`], [`Error::OutputIsInput`], [`Error::OutputDirMissing`],
/// [`Error::Encode`], [`Error::Io`]), [`Error::Transform`], and [`Error::Cancelled`] when
/// `progress` breaks.
///
/// ```no_run
/// use std::sync::Arc;
/// use tracemark_core::pipeline::no_progress;
/// use tracemark_core::video::{transcode, TranscodeConfig};
/// use tracemark_core::{EmbedConfig, Embedder, MarkId, MasterKey};
/// let key = MasterKey::load("unit.key".as_ref())?;
/// let embedder = Arc::new(Embedder::new(&key, MarkId::random(), EmbedConfig::new())?);
/// let config = TranscodeConfig::new().with_crf(18).with_preset("medium");
/// let report = transcode("cam3.avi".as_ref(), "copy-A.mp4".as_ref(), &config, embedder, &mut no_progress)?;
/// println!("{} frames marked", report.frames);
/// # Ok::<(), tracemark_core::Error>(())
/// ```
pub fn transcode<T: FrameTransform>(
    input: &Path,
    output: &Path,
    config: &TranscodeConfig,
    transform: Arc<T>,
    progress: &mut ProgressFn<'_>,
) -> Result<TranscodeReport> {
    transcode_with_commit(input, output, config, transform, progress, &mut |_, _| Ok(()))
}

/// Called with the finished temporary file and the report just before the output is moved
/// into place; an error here discards the output. Callers use it to record the output (its
/// hash, say) transactionally: nothing is published that was not recorded.
pub type CommitHook<'a> = dyn FnMut(&Path, &TranscodeReport) -> Result<()> + 'a;

/// [`transcode`] with a hook that runs on the finished temporary file before it is moved
/// into place.
///
/// # Errors
/// As [`transcode`], and whatever the hook returns (the output is then discarded).
pub fn transcode_with_commit<T: FrameTransform>(
    input: &Path,
    output: &Path,
    config: &TranscodeConfig,
    transform: Arc<T>,
    progress: &mut ProgressFn<'_>,
    before_commit: &mut CommitHook<'_>,
) -> Result<TranscodeReport> {
    config.validate()?;
    check_output(&[input], output, config.overwrite)?;
    let reader = VideoReader::open(input)?;
    let info = reader.info().clone();
    let stale_removed = crate::output::remove_stale_temporaries(output);
    let tmp = TempOutput::next_to(output);
    let mut writer = VideoWriter::create(tmp.path(), &reader, &config.encode)?;
    let output_size = writer.size();
    let skipped_streams = writer.skipped_streams().to_vec();

    let threads = config.effective_threads();
    // A motion tracker holds frames until their motion is final: they need slots too.
    let lag = if transform.motion_tracking().is_some() { MotionTracker::MAX_LAG } else { 0 };
    let in_flight = config.effective_in_flight() + lag;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("tracemark-frame-{i}"))
        .build()
        .map_err(|e| Error::InvalidConfig {
            setting: "threads",
            reason: format!("cannot start {threads}: {e}"),
        })?;
    let (slot_tx, slot_rx) = chan::bounded::<Slot<T::Scratch>>(in_flight);
    for _ in 0..in_flight {
        let slot = Slot { frame: Frame::new(info.width, info.height), scratch: transform.new_scratch() };
        slot_tx.send(slot).expect("channel has room for every slot");
    }
    let (done_tx, done_rx) = chan::unbounded::<Msg<T::Scratch>>();
    let cancel = Arc::new(AtomicBool::new(false));

    let frames = std::thread::scope(|scope| {
        let cancel_dec = Arc::clone(&cancel);
        let transform = Arc::clone(&transform);
        scope.spawn(move || decode_loop(reader, slot_rx, done_tx, &pool, transform, &cancel_dec));
        let result = encode_loop(&mut writer, slot_tx, done_rx, info.frames_estimate, progress);
        if result.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        result
    })?;
    writer.finish()?;
    let truncated = is_truncated(frames, info.frames_estimate);
    if truncated && !config.allow_truncated {
        return Err(Error::Truncated {
            path: input.to_path_buf(),
            decoded: frames,
            declared: info.frames_estimate.unwrap_or_default(),
        });
    }
    let report = TranscodeReport {
        frames,
        input: info,
        output_size,
        skipped_streams,
        output: output.to_path_buf(),
        truncated,
        stale_removed,
    };
    before_commit(tmp.path(), &report)?;
    tmp.commit(output, config.overwrite)?;
    Ok(report)
}

fn decode_loop<T: FrameTransform>(
    mut reader: VideoReader,
    slots: chan::Receiver<Slot<T::Scratch>>,
    done: chan::Sender<Msg<T::Scratch>>,
    pool: &rayon::ThreadPool,
    transform: Arc<T>,
    cancel: &AtomicBool,
) {
    let mut index = 0u64;
    let mut current: Option<Slot<T::Scratch>> = None;
    let tracking = transform.motion_tracking();
    let trackers = tracking.map(|t| MotionTracker::new(reader.info().width, reader.info().height, t));
    // Frames decoded whose motion is not final yet, oldest first.
    let mut queue: TrackedQueue<Slot<T::Scratch>> = TrackedQueue::new(trackers.into_iter().collect());
    let mut dispatched = 0u64;
    let mut dispatch = |mut slot: Slot<T::Scratch>, motion: (f64, f64)| {
        let (t, d, i) = (Arc::clone(&transform), done.clone(), dispatched);
        pool.spawn(move || {
            let at = FrameAt { index: i, motion };
            let r = t.apply(&mut slot.frame, at, &mut slot.scratch).map_err(|e| e.into());
            let _ = d.send(Msg::Done(i, slot, r));
        });
        dispatched += 1;
    };
    loop {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let mut slot = match current.take() {
            Some(s) => s,
            None => match slots.recv() {
                Ok(s) => s,
                Err(_) => return, // the encoder side has gone
            },
        };
        match reader.next(&mut slot.frame) {
            Ok(ReadEvent::Frame) => {
                // Motion is a running sum: it is tracked here, in decode order, before the
                // frames go their parallel ways.
                index += 1;
                queue.push_holding(slot, |s| &s.frame.y);
                while let Some((slot, d)) = queue.pop() {
                    dispatch(slot, displacement_by(&d, tracking));
                }
            }
            Ok(ReadEvent::Packet(p)) => {
                current = Some(slot);
                if done.send(Msg::Packet(p)).is_err() {
                    return;
                }
            }
            Ok(ReadEvent::End) => {
                queue.finish();
                while let Some((slot, d)) = queue.pop() {
                    dispatch(slot, displacement_by(&d, tracking));
                }
                debug_assert_eq!(dispatched, index);
                let _ = done.send(Msg::End(Ok(index)));
                return;
            }
            Err(e) => {
                let _ = done.send(Msg::End(Err(e)));
                return;
            }
        }
    }
}

fn encode_loop<S>(
    writer: &mut VideoWriter,
    slots: chan::Sender<Slot<S>>,
    done: chan::Receiver<Msg<S>>,
    total: Option<u64>,
    progress: &mut ProgressFn<'_>,
) -> Result<u64> {
    let mut pending: BTreeMap<u64, Slot<S>> = BTreeMap::new();
    let mut next = 0u64;
    let mut end: Option<u64> = None;
    loop {
        if end == Some(next) {
            return Ok(next);
        }
        let msg =
            done.recv().map_err(|_| Error::Encode("the decoder thread stopped without a result".into()))?;
        match msg {
            Msg::Done(i, slot, r) => {
                r.map_err(|source| Error::Transform { frame: i, source })?;
                pending.insert(i, slot);
                while let Some(slot) = pending.remove(&next) {
                    writer.write_frame(&slot.frame)?;
                    // The decoder may have stopped; then nobody needs the slot back.
                    let _ = slots.send(slot);
                    next += 1;
                    let total = total.map(|t| t.max(next));
                    if let ControlFlow::Break(()) = progress(Progress { done: next, total }) {
                        return Err(Error::Cancelled);
                    }
                }
            }
            Msg::Packet(p) => writer.write_packet(p)?,
            Msg::End(r) => end = Some(r?),
        }
    }
}
