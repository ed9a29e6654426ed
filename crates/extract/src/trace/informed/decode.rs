//! Decoding both clips once: thumbnails for registration and, within the memory budget,
//! every frame at reading resolution, in fixed point.

use super::*;

/// Stored frames are fixed point in 1/64 grey level: far below any codec's noise, and half
/// the bytes of f32.
pub(super) const FIXED_ONE: f32 = 64.0;

/// A grey level (0..=255) in fixed point, rounded to the nearest step.
#[inline]
pub(super) fn to_fixed(v: f32) -> u16 {
    (v * FIXED_ONE + 0.5) as u16
}

/// The grey level of a fixed-point value.
#[inline]
pub(super) fn from_fixed(v: u16) -> f32 {
    f32::from(v) * (1.0 / FIXED_ONE)
}

/// Writes fixed-point samples into floats.
pub(super) fn load_fixed(src: &[u16], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(src) {
        *o = from_fixed(v);
    }
}

/// Thumbnail width in source pixels: enough to register, small enough to compare every
/// leaked frame with many source frames.
pub(super) const THUMB_WIDTH: f64 = 128.0;

/// What the decoder threads share with the thread that reports progress.
pub(super) struct Shared {
    /// Frames decoded so far, both files.
    pub(super) done: AtomicU64,
    /// Set to stop both decoders (the user cancelled, or the other file failed).
    pub(super) cancel: AtomicBool,
    /// Bytes of the memory budget not yet spent on stored frames.
    pub(super) budget: AtomicUsize,
}

impl Shared {
    pub(super) fn take(&self, bytes: usize) -> bool {
        self.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(bytes)).is_ok()
    }

    pub(super) fn give(&self, bytes: usize) {
        self.budget.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// One file, decoded once.
pub(super) struct Clip {
    pub(super) info: VideoInfo,
    pub(super) thumbs: Vec<Thumb>,
    /// Seconds from the first frame: re-encoders usually reset a clip's start to zero.
    pub(super) times: Vec<f64>,
    /// Every frame at `store_size` in fixed point, unless the memory budget ran out.
    pub(super) store: Option<Vec<Box<[u16]>>>,
    pub(super) store_size: (usize, usize),
    /// The picture's displacement since the first frame, per frame, in picture pixels
    /// (the embedder's [`MotionTracker`] on the same frames), by each tracking asked for
    /// (indexed by [`Tracking::index`]; zero for the others).
    pub(super) motion: Vec<Displacements>,
}

/// Decodes up to `limit` frames (0 = all) of `path` into thumbnails at `thumb_factor`
/// picture pixels per thumbnail pixel and, budget permitting, frames at `store_size`; with
/// `trackings`, the motion of every frame measured each of those ways too.
pub(super) fn decode_clip(
    path: &Path,
    thumb_factor: f64,
    store_size: (usize, usize),
    (limit, trackings): (usize, &[Tracking]),
    shared: &Shared,
) -> Result<Clip> {
    let reader = open(path)?;
    let (w, h) = (reader.info().width, reader.info().height);
    if trackings.is_empty() {
        return decode_frames(reader, thumb_factor, store_size, limit, shared, None);
    }
    // The motion is measured on a thread of its own while this one decodes on: frames go
    // there and come back with their displacements.
    let trackers: Vec<MotionTracker> = trackings.iter().map(|&t| MotionTracker::new(w, h, t)).collect();
    std::thread::scope(|s| {
        let (to_track, frames) = mpsc::sync_channel::<Frame>(TRACK_AHEAD);
        let (back, returned) = mpsc::channel::<(Frame, Displacements)>();
        let tracker = std::thread::Builder::new()
            .name("tracemark-track".into())
            .spawn_scoped(s, move || {
                TrackedQueue::new(trackers).run(frames, |f: &Frame| &f.y, |f, d| back.send((f, d)).is_ok());
            })
            .expect("spawning the tracking thread");
        let clip = decode_frames(reader, thumb_factor, store_size, limit, shared, Some((to_track, returned)));
        tracker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        clip
    })
}

/// Frames on their way to the tracking thread at most (besides those it holds).
const TRACK_AHEAD: usize = 4;

/// The tracking thread's two ends, seen from the decoder: frames out; frames and their
/// displacements back, in order.
type TrackingLink = (mpsc::SyncSender<Frame>, mpsc::Receiver<(Frame, Displacements)>);

/// [`decode_clip`]'s loop; with `tracking`, every frame also goes to the tracking thread and
/// its displacements fill [`Clip::motion`].
fn decode_frames(
    mut reader: VideoReader,
    thumb_factor: f64,
    store_size: (usize, usize),
    limit: usize,
    shared: &Shared,
    tracking: Option<TrackingLink>,
) -> Result<Clip> {
    let info = reader.info().clone();
    let (w, h) = (info.width, info.height);
    let (tw, th) = thumb_size(w, h, thumb_factor);
    let mut store_down = Downscaler::new(w, h, store_size.0, store_size.1);
    // Thumbnails come from the reading-size picture when that is larger (a box of boxes is
    // a box: 1080p to 640x360 to 128x72 is exactly 1080p to 128x72).
    let from_work = tw <= store_size.0 && th <= store_size.1;
    let mut thumb_down = if from_work {
        Downscaler::new(store_size.0, store_size.1, tw, th)
    } else {
        Downscaler::new(w, h, tw, th)
    };
    let mut work = vec![0f32; store_size.0 * store_size.1];
    let mut thumb = Gray::new(tw, th);
    let frame_bytes = work.len() * std::mem::size_of::<u16>();
    let mut frame = Frame::new(w, h);
    // Frames made so far: the tracking thread holds up to this many.
    let (mut made, most) = (1, TRACK_AHEAD + TrackedQueue::<Frame>::MAX_HELD + 1);
    let tb = info.time_base;
    let mut clip = Clip {
        info,
        thumbs: Vec::new(),
        times: Vec::new(),
        store: Some(Vec::new()),
        store_size,
        motion: Vec::new(),
    };
    let mut start = None;
    while limit == 0 || clip.thumbs.len() < limit {
        if shared.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        if !reader.read_frame(&mut frame).map_err(Error::Video)? {
            break;
        }
        if from_work {
            store_down.run(&frame.y, &mut work);
            thumb_down.run_f32(&work, &mut thumb.data);
        } else {
            thumb_down.run(&frame.y, &mut thumb.data);
        }
        clip.thumbs.push(Thumb::from_gray(&thumb));
        let t = seconds(frame.pts, tb);
        clip.times.push(t - *start.get_or_insert(t));
        if let Some(store) = clip.store.as_mut() {
            if shared.take(frame_bytes) {
                if !from_work {
                    store_down.run(&frame.y, &mut work);
                }
                store.push(work.iter().map(|&v| to_fixed(v)).collect());
            } else {
                shared.give(store.len() * frame_bytes);
                clip.store = None;
            }
        }
        if let Some((to_track, back)) = &tracking {
            // Hand the frame over and decode into one the tracker is done with (a new one
            // while it fills up).
            // The tracker only hangs up by panicking, which the join passes on.
            let gone = || Error::Registration("the motion tracker stopped".into());
            to_track.send(frame).map_err(|_| gone())?;
            frame = match back.try_recv() {
                Ok((f, d)) => {
                    clip.motion.push(d);
                    f
                }
                Err(_) if made < most => {
                    made += 1;
                    Frame::new(w, h)
                }
                Err(_) => {
                    let (f, d) = back.recv().map_err(|_| gone())?;
                    clip.motion.push(d);
                    f
                }
            };
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    if let Some((to_track, back)) = tracking {
        // Told the clip is over, the tracker hands back every frame it holds.
        drop(to_track);
        clip.motion.extend(back.iter().map(|(_, d)| d));
    }
    Ok(clip)
}

/// Decodes the leaked clip and the source at the same time, reporting progress from this
/// thread. The first real error wins over the other thread's resulting cancellation.
#[allow(clippy::too_many_arguments)]
pub(super) fn decode_both(
    leaked: &Path,
    source: &Path,
    thumb_factor: f64,
    sizes: ((usize, usize), (usize, usize)),
    leak_limit: usize,
    source_trackings: &[Tracking],
    shared: &Shared,
    progress: &mut ProgressFn<'_>,
    total: Option<u64>,
) -> Result<(Clip, Clip)> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let spawn = |path: &'static str, p: &Path, size, limit: (usize, Vec<Tracking>)| {
            let (tx, p) = (tx.clone(), p.to_path_buf());
            std::thread::Builder::new()
                .name(format!("tracemark-decode-{path}"))
                .spawn_scoped(s, move || {
                    let r = decode_clip(&p, thumb_factor, size, (limit.0, &limit.1), shared);
                    if r.is_err() {
                        shared.cancel.store(true, Ordering::Relaxed);
                    }
                    // The receiver outlives the scope's threads.
                    let _ = tx.send(());
                    r
                })
                .expect("spawning a decoder thread")
        };
        let leak = spawn("leaked", leaked, sizes.0, (leak_limit, Vec::new()));
        let src = spawn("source", source, sizes.1, (0, source_trackings.to_vec()));
        let mut finished = 0;
        let mut stopped = None;
        while finished < 2 {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => finished += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if stopped.is_none() {
                if let Err(e) = tick(progress, shared.done.load(Ordering::Relaxed), total) {
                    shared.cancel.store(true, Ordering::Relaxed);
                    stopped = Some(e);
                }
            }
        }
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Clip>>| {
            h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        };
        let (leak, src) = (join(leak), join(src));
        if let Some(e) = stopped {
            return Err(e);
        }
        match (leak, src) {
            (Ok(l), Ok(s)) => Ok((l, s)),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(if is_cancelled(&a) { b } else { a }),
        }
    })
}

pub(super) fn is_cancelled(e: &Error) -> bool {
    matches!(e, Error::Cancelled | Error::Video(CoreError::Cancelled))
}

/// A frame at reading resolution: kept from the first decode, or decoded again.
#[derive(Clone)]
pub(super) enum Pic<'a> {
    Stored(&'a [u16]),
    Decoded(Arc<Gray>),
}

impl Pic<'_> {
    /// Writes the picture into `out`, which has its size.
    pub(super) fn load(&self, out: &mut Gray) {
        match self {
            Pic::Stored(d) => load_fixed(d, &mut out.data),
            Pic::Decoded(g) => out.data.copy_from_slice(&g.data),
        }
    }

    pub(super) fn to_gray(&self, (w, h): (usize, usize)) -> Gray {
        let mut g = Gray::new(w, h);
        self.load(&mut g);
        g
    }
}

/// Where a reading gets its frames at one size: the first decode's store, or a second
/// decode.
pub(super) enum Frames<'a> {
    Stored(&'a [Box<[u16]>]),
    Decode(Box<Redecode>),
}

/// A second, forward-only decode, run ahead on its own thread (so decoding overlaps the
/// reading of earlier frames); the last frame is kept for repeats.
pub(super) struct Redecode {
    /// Frames in order at the reading size, quantised like the store.
    frames: mpsc::Receiver<Result<Arc<Gray>>>,
    /// Index of the frame the channel gives next.
    next: usize,
    last: Option<(usize, Arc<Gray>)>,
    worker: Option<std::thread::JoinHandle<()>>,
}

/// Frames decoded ahead of the reading at most.
const REDECODE_AHEAD: usize = 8;

impl Redecode {
    fn start(mut reader: VideoReader, (w, h): (usize, usize), size: (usize, usize)) -> Self {
        let (tx, frames) = mpsc::sync_channel(REDECODE_AHEAD);
        let worker = std::thread::Builder::new()
            .name("tracemark-redecode".into())
            .spawn(move || {
                let mut frame = Frame::new(w, h);
                let mut down = Downscaler::new(w, h, size.0, size.1);
                loop {
                    let g = match reader.read_frame(&mut frame) {
                        Ok(true) => {
                            let mut g = Gray::new(size.0, size.1);
                            down.run(&frame.y, &mut g.data);
                            // The same fixed point as the store: the budget changes speed,
                            // not results.
                            g.data.iter_mut().for_each(|v| *v = from_fixed(to_fixed(*v)));
                            Ok(Arc::new(g))
                        }
                        Ok(false) => return,
                        Err(e) => Err(Error::Video(e)),
                    };
                    let failed = g.is_err();
                    // The reader hung up (done, or cancelled): stop decoding.
                    if tx.send(g).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("spawning a decoder thread");
        Self { frames, next: 0, last: None, worker: Some(worker) }
    }
}

impl Drop for Redecode {
    fn drop(&mut self) {
        // Hang up first, so a worker waiting to hand over a frame stops, then wait for it.
        let (_, closed) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.frames, closed));
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl<'a> Frames<'a> {
    pub(super) fn new(clip: &'a Clip, path: &Path, size: (usize, usize)) -> Result<Self> {
        match &clip.store {
            Some(frames) if clip.store_size == size => Ok(Frames::Stored(frames)),
            _ => {
                let (w, h) = (clip.info.width, clip.info.height);
                Ok(Frames::Decode(Box::new(Redecode::start(open(path)?, (w, h), size))))
            }
        }
    }

    pub(super) fn is_stored(&self) -> bool {
        matches!(self, Frames::Stored(_))
    }

    /// Frame `index`; `None` past the end, or when a second decode has already gone past it.
    pub(super) fn get(&mut self, index: usize) -> Result<Option<Pic<'a>>> {
        let d = match self {
            Frames::Stored(frames) => return Ok(frames.get(index).map(|f| Pic::Stored(f))),
            Frames::Decode(d) => d,
        };
        if let Some((i, g)) = &d.last {
            if *i == index {
                return Ok(Some(Pic::Decoded(Arc::clone(g))));
            }
        }
        if index < d.next {
            return Ok(None);
        }
        while d.next <= index {
            match d.frames.recv() {
                Ok(frame) => d.last = Some((d.next, frame?)),
                // The decode reached the end of the file.
                Err(_) => return Ok(None),
            }
            d.next += 1;
        }
        Ok(d.last.as_ref().map(|(_, g)| Pic::Decoded(Arc::clone(g))))
    }
}

/// A thumbnail in the store's fixed point (half the bytes of f32; the source's thumbnails
/// are kept for every frame).
pub(super) struct Thumb {
    pub(super) w: usize,
    pub(super) h: usize,
    pub(super) data: Box<[u16]>,
}

impl Thumb {
    pub(super) fn from_gray(g: &Gray) -> Self {
        Self { w: g.w, h: g.h, data: g.data.iter().map(|&v| to_fixed(v)).collect() }
    }

    pub(super) fn gray(&self) -> Gray {
        let mut g = Gray::new(self.w, self.h);
        load_fixed(&self.data, &mut g.data);
        g
    }
}
