//! The picture's global motion from frame to frame, so that a mark can move with it.
//!
//! A pattern fixed on the screen while the picture pans is new to the encoder in every
//! frame: motion compensation moves the picture and the pattern with it, so the encoder
//! codes the pattern's difference again and again (a marked pan cost 2.6x the bits). A mark
//! that moves with the picture is carried by motion compensation instead.
//!
//! [`MotionTracker`] measures the displacement of each frame against a *reference* frame by
//! phase correlation of small thumbnails, refined below a pixel by a least-squares fit of
//! the cross-spectrum's phase (unbiased for a pure translation, unlike a parabola through
//! the peak). The reference is only replaced when the overlap gets small or the picture
//! changes (a cut), so measurement errors add up once per re-anchoring, not once per frame.
//! The embedder runs it on the source; the informed detector runs the same code on the
//! same decoded source frames (the same numbers, as long as the source file is the one
//! exported and the FFT rounds alike), the blind detector on the leaked clip. The constants
//! below are part of the layouts that follow motion (`tracemark/v2` on; [`PAN_TRAVEL`] and
//! [`REFIT_FROM`] of `tracemark/v4`): changing them needs a new layout version.

use rustfft::num_complex::Complex32;

use crate::fft2d::Fft2d;
use crate::frame::Plane;
use crate::grid;

/// Thumbnail height the box factor aims at (a 1080-line picture is averaged over 6x6).
const THUMB_LINES: usize = 180;
/// Smallest thumbnail side worth correlating; smaller pictures are taken as static.
const MIN_THUMB: usize = 24;
/// A displacement beyond this share of the thumbnail re-anchors the reference.
const REANCHOR_SHARE: f64 = 0.2;
/// Displacements under this many thumbnail pixels are measurement noise on a still
/// picture: they count as none, so a static shot keeps its mark exactly still.
const DEAD_ZONE: f64 = 0.02;
/// How well the current picture must match the reference moved by the displacement found
/// (normalised correlation of the thumbnails) for the motion to be followed.
const MIN_RIGID_NCC: f64 = 0.95;
/// The same for a copy's motion, measured by a detector through logos, tickers, bars and
/// picture-in-picture frames that do not move with the picture: lenient, so the detector
/// follows every pan the embedder followed (what it follows beyond that, the detector's
/// reading of the unmoved sums covers).
const MIN_RIGID_NCC_COPY: f64 = 0.5;
/// Frames in a row that must match this well before the motion is followed: a hand-held
/// shot matches for a frame or two at a time, a pan for as long as it lasts.
const RUN_TO_FOLLOW: u32 = 8;
/// How far above the correlation surface's RMS a peak must stand to count as a match.
const PEAK_OVER_RMS: f64 = 12.0;
/// [`Tracking::PansOnly`]: thumbnail pixels the picture must travel over the last
/// [`RUN_TO_FOLLOW`] frames for its motion to be followed. Slower, a mark left still slides
/// under the picture by under an eighth of a thumbnail pixel a frame on average (and for as
/// long as the motion stays that slow); a still camera's measure, pulled about by people
/// crossing the picture, stays well under it.
const PAN_TRAVEL: f64 = 1.0;
/// [`Tracking::PansOnly`]: displacements under this many thumbnail pixels keep the fixed
/// window's estimate (the overlap refit corrects a bias of 2-3% of the displacement: a
/// hundredth of a pixel here), which spares a still picture two transforms a frame.
const REFIT_FROM: f64 = 0.5;

/// How a tracker measures the displacement below a pixel: part of the mark layout (the
/// embedder and the informed detector must measure alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tracking {
    /// `tracemark/v2`: a phase fit of both thumbnails under one Hann window fixed on the
    /// thumbnail. The window does not move with the picture, so it pulls the estimate
    /// towards no motion: a steady pan measures 2-3% short, and the mark slides against the
    /// picture by that much (the encoder codes the slide again in every frame).
    SharedWindow,
    /// `tracemark/v3`: the same fit, then repeated with both thumbnails under one window
    /// laid over their overlap *in picture coordinates* (it moves with the estimate), where
    /// the two windowed pictures are exact translates: unbiased.
    OverlapWindow,
    /// `tracemark/v4`: as [`Tracking::OverlapWindow`], but a run of clean translations is
    /// followed only while the picture travels at least [`PAN_TRAVEL`] thumbnail pixels over
    /// [`RUN_TO_FOLLOW`] frames. A still camera's measure drifts by fractions of a pixel
    /// as people cross the picture; under v3 the mark drifted with it (on the CCTV clip in
    /// 61 jumps, up to 1.6 px), each jump a new mark for the encoder. Here it stays still.
    PansOnly,
}

impl Tracking {
    /// Every tracking, oldest first.
    pub const ALL: [Tracking; 3] = [Tracking::SharedWindow, Tracking::OverlapWindow, Tracking::PansOnly];

    /// The trackings a detector runs on a copy ([`Tracking::copy_measure`]), oldest first.
    pub const COPY: [Tracking; 2] = [Tracking::SharedWindow, Tracking::OverlapWindow];

    /// Position in [`Tracking::ALL`] (for per-tracking tables).
    pub fn index(self) -> usize {
        match self {
            Tracking::SharedWindow => 0,
            Tracking::OverlapWindow => 1,
            Tracking::PansOnly => 2,
        }
    }

    /// How a detector measures a copy's motion to read marks laid out with this tracking.
    /// A copy's tracker is lenient ([`MotionTracker::for_copy`]) and follows every run of
    /// clean translations, so [`Tracking::PansOnly`] is measured as
    /// [`Tracking::OverlapWindow`]: on a pan the two agree, and a mark left still is read
    /// from the unmoved sums a detector always takes.
    pub fn copy_measure(self) -> Tracking {
        match self {
            Tracking::PansOnly => Tracking::OverlapWindow,
            t => t,
        }
    }
}

/// Refits with the window over the overlap: the first moves the window from the fixed
/// one's estimate, the second from the first's.
const OVERLAP_REFITS: usize = 2;

/// What one frame's measurement found.
enum Measured {
    /// Nothing to measure (the first frame, a picture too small): no motion.
    Nothing,
    /// A clean translation of the reference by this many thumbnail pixels.
    Moved(f64, f64),
    /// A cut, or no single translation.
    NoMatch,
}

/// A frame whose displacement has been measured but may not be final yet.
#[derive(Clone, Copy, Debug)]
struct Pending {
    /// The picture's step since the previous frame (picture pixels).
    delta: (f64, f64),
    /// Its place in a run of clean translations (1 = the first), 0 outside one.
    run: u32,
    /// The displacement, when final already.
    known: Option<(f64, f64)>,
}

/// Tracks the global translation of a picture sequence (see the module documentation).
/// Made once per clip; the per-frame call allocates nothing.
#[derive(Debug)]
pub struct MotionTracker {
    /// Box factor from picture to thumbnail.
    k: usize,
    tw: usize,
    th: usize,
    fft: Option<Fft2d>,
    /// Separable Hann window.
    win_x: Vec<f32>,
    win_y: Vec<f32>,
    thumb: Vec<f32>,
    /// The reference frame's thumbnail (for the rigidity check).
    reference_thumb: Vec<f32>,
    current: Vec<Complex32>,
    reference: Vec<Complex32>,
    surface: Vec<Complex32>,
    phasor_x: Vec<Complex32>,
    phasor_y: Vec<Complex32>,
    /// One row of the current thumbnail resampled (the rigidity check).
    row: Vec<f32>,
    /// How the sub-pixel displacement is measured.
    tracking: Tracking,
    /// The current and reference thumbnails under the overlap window
    /// ([`Tracking::OverlapWindow`] and [`Tracking::PansOnly`]; empty otherwise).
    overlap_current: Vec<Complex32>,
    overlap_reference: Vec<Complex32>,
    /// The overlap window's two axes.
    overlap_win_x: Vec<f32>,
    overlap_win_y: Vec<f32>,
    has_reference: bool,
    /// Frames in a row whose motion was a clean translation.
    run: u32,
    /// How well a frame must match its reference moved back for its motion to count.
    min_ncc: f64,
    /// Displacement of the reference frame since the first frame (picture pixels).
    anchor: (f64, f64),
    /// The last displacement measured: the mark's under [`Tracking::SharedWindow`], the
    /// picture's under the others.
    last: (f64, f64),
    /// Frames pushed and not yet popped (at most [`MotionTracker::MAX_LAG`] + 1).
    pending: std::collections::VecDeque<Pending>,
    /// The last displacement popped (all but [`Tracking::SharedWindow`]).
    output: (f64, f64),
    /// No frames will follow.
    finished: bool,
    /// [`Tracking::PansOnly`]: the steps of the current run's last [`RUN_TO_FOLLOW`]
    /// frames popped, each with whether the mark took it.
    recent_steps: std::collections::VecDeque<((f64, f64), bool)>,
}

impl std::fmt::Debug for Fft2d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fft2d({}x{})", self.width(), self.height())
    }
}

fn hann(n: usize) -> Vec<f32> {
    (0..n).map(|i| (0.5 - 0.5 * (std::f64::consts::TAU * (i as f64 + 0.5) / n as f64).cos()) as f32).collect()
}

/// Signed frequency (or shift) of cyclic index `i` of an `n`-long axis.
fn signed(i: usize, n: usize) -> f64 {
    if i > n / 2 {
        i as f64 - n as f64
    } else {
        i as f64
    }
}

impl MotionTracker {
    /// Frames a displacement may wait in the tracker for its verdict (whether the motion
    /// it is part of lasts long enough to be followed); callers hold that many frames.
    pub const MAX_LAG: usize = RUN_TO_FOLLOW as usize - 1;

    /// A tracker for `width` x `height` pictures, measuring as `tracking` says.
    pub fn new(width: usize, height: usize, tracking: Tracking) -> Self {
        let k = (height / THUMB_LINES).max(1);
        let (tw, th) = (width / k, height / k);
        let usable = tw >= MIN_THUMB && th >= MIN_THUMB;
        let n = if usable { tw * th } else { 0 };
        let overlap = if tracking == Tracking::SharedWindow { 0 } else { n };
        Self {
            k,
            tw,
            th,
            fft: usable.then(|| Fft2d::new(tw, th)),
            win_x: hann(tw),
            win_y: hann(th),
            thumb: vec![0.0; n],
            reference_thumb: vec![0.0; n],
            current: vec![Complex32::default(); n],
            reference: vec![Complex32::default(); n],
            surface: vec![Complex32::default(); n],
            phasor_x: vec![Complex32::default(); tw],
            phasor_y: vec![Complex32::default(); th],
            row: vec![0.0; tw],
            tracking,
            overlap_current: vec![Complex32::default(); overlap],
            overlap_reference: vec![Complex32::default(); overlap],
            overlap_win_x: vec![0.0; if overlap > 0 { tw } else { 0 }],
            overlap_win_y: vec![0.0; if overlap > 0 { th } else { 0 }],
            has_reference: false,
            run: 0,
            min_ncc: MIN_RIGID_NCC,
            anchor: (0.0, 0.0),
            last: (0.0, 0.0),
            pending: std::collections::VecDeque::with_capacity(Self::MAX_LAG + 1),
            output: (0.0, 0.0),
            finished: false,
            recent_steps: std::collections::VecDeque::with_capacity(RUN_TO_FOLLOW as usize),
        }
    }

    /// A tracker for a copy (what a detector runs on a leaked clip): it counts motion the
    /// embedder's tracker would count on the clean picture even when the copy has overlays
    /// that stand still.
    pub fn for_copy(width: usize, height: usize, tracking: Tracking) -> Self {
        Self { min_ncc: MIN_RIGID_NCC_COPY, ..Self::new(width, height, tracking) }
    }

    /// How this tracker measures.
    pub fn tracking(&self) -> Tracking {
        self.tracking
    }

    /// Feeds the next frame (frames in display order). Its displacement since the first
    /// frame, in picture pixels (content at `p` in the first frame is at
    /// `p + displacement` now), comes out of [`MotionTracker::pop`] once it is final: at
    /// once under [`Tracking::SharedWindow`], up to [`MotionTracker::MAX_LAG`] frames later
    /// under [`Tracking::OverlapWindow`] and [`Tracking::PansOnly`], which follow a pan from
    /// its first frame once it has lasted long enough to be one (`PansOnly`: and travelled
    /// far enough; one that picks up within a run is caught up with when it has).
    pub fn push(&mut self, luma: &Plane) {
        let measured = self.measure(luma);
        let k = self.k as f64;
        let entry = match (self.tracking, measured) {
            (Tracking::SharedWindow, Measured::Nothing) => {
                Pending { delta: (0.0, 0.0), run: 0, known: Some(self.last) }
            }
            (_, Measured::Nothing) => {
                self.run = 0;
                Pending { delta: (0.0, 0.0), run: 0, known: None }
            }
            (Tracking::SharedWindow, Measured::Moved(dx, dy)) => {
                self.run = self.run.saturating_add(1);
                if self.run < RUN_TO_FOLLOW {
                    // Not yet a pan: hold still, and count later frames' motion from here.
                    self.anchor = (self.last.0 - dx * k, self.last.1 - dy * k);
                }
                let at = (self.anchor.0 + dx * k, self.anchor.1 + dy * k);
                self.reanchor_if_far((dx, dy), at);
                self.last = at;
                Pending { delta: (0.0, 0.0), run: 0, known: Some(at) }
            }
            (_, Measured::Moved(dx, dy)) => {
                // The picture's own track; whether a frame's step is followed is decided
                // when its run of clean translations is known to be long enough, or over.
                self.run = self.run.saturating_add(1);
                let at = (self.anchor.0 + dx * k, self.anchor.1 + dy * k);
                self.reanchor_if_far((dx, dy), at);
                let delta = (at.0 - self.last.0, at.1 - self.last.1);
                self.last = at;
                Pending { delta, run: self.run, known: None }
            }
            (tracking, Measured::NoMatch) => {
                // A cut, or no single translation: the mark stays where it was and the new
                // picture becomes the reference.
                self.run = 0;
                self.anchor = self.last;
                self.swap_reference();
                let known = (tracking == Tracking::SharedWindow).then_some(self.last);
                Pending { delta: (0.0, 0.0), run: 0, known }
            }
        };
        assert!(self.pending.len() <= Self::MAX_LAG, "pop() must drain the tracker after every push()");
        self.pending.push_back(entry);
    }

    /// The displacement of the oldest frame pushed and not yet popped, once final.
    pub fn pop(&mut self) -> Option<(f64, f64)> {
        let front = self.pending.front()?;
        if let Some(known) = front.known {
            self.pending.pop_front();
            return Some(known);
        }
        let followed = if front.run == 0 {
            false
        } else {
            // The longest its run gets among the frames seen: a later frame outside the
            // run (run 0 or 1) ends it.
            let mut longest = front.run;
            let mut ended = self.finished;
            for p in self.pending.iter().skip(1) {
                if p.run != longest + 1 {
                    ended = true;
                    break;
                }
                longest = p.run;
            }
            if longest < RUN_TO_FOLLOW && !ended {
                return None;
            }
            longest >= RUN_TO_FOLLOW
        };
        let run = front.run;
        let delta = self.pending.pop_front().expect("front exists").delta;
        let step = match self.tracking {
            Tracking::PansOnly => self.pan_step(run, delta, followed),
            _ => followed.then_some(delta),
        };
        if let Some(step) = step {
            self.output = (self.output.0 + step.0, self.output.1 + step.1);
        }
        Some(self.output)
    }

    /// [`Tracking::PansOnly`]: how far the mark follows the frame just popped, whose step is
    /// `delta` (its place in its run `run`; `long` when the run is long enough to follow).
    /// A run is followed while it travels [`PAN_TRAVEL`] thumbnail pixels over
    /// [`RUN_TO_FOLLOW`] frames: its first ones (still pending) when the frame opens the run
    /// (the rest of the opening frames take that decision), the last ones popped later in
    /// it. A pan that starts within a run (a still shot panning away) is caught up with
    /// at once: the mark takes the window's steps it has not taken, then moves with it.
    fn pan_step(&mut self, run: u32, delta: (f64, f64), long: bool) -> Option<(f64, f64)> {
        let window = RUN_TO_FOLLOW as usize;
        if run <= 1 {
            self.recent_steps.clear();
        }
        if run >= 1 {
            if self.recent_steps.len() == window {
                self.recent_steps.pop_front();
            }
            self.recent_steps.push_back((delta, false));
        }
        if !long {
            return None;
        }
        let far = |(x, y): (f64, f64)| x.hypot(y) >= PAN_TRAVEL * self.k as f64;
        let add = |a: (f64, f64), d: (f64, f64)| (a.0 + d.0, a.1 + d.1);
        let panning = if run == 1 {
            far(self.pending.iter().take(window - 1).fold(delta, |a, p| add(a, p.delta)))
        } else if run >= RUN_TO_FOLLOW {
            far(self.recent_steps.iter().fold((0.0, 0.0), |a, &(d, _)| add(a, d)))
        } else {
            // The opening's decision: whether the mark took the frame before this one.
            self.recent_steps.iter().rev().nth(1).is_some_and(|&(_, taken)| taken)
        };
        if !panning {
            return None;
        }
        // The window's steps not taken yet: this frame's, and on a pan picked up within the
        // run the earlier ones left behind while it was too slow.
        let mut step = (0.0, 0.0);
        for (d, taken) in self.recent_steps.iter_mut().filter(|(_, taken)| !*taken) {
            step = add(step, *d);
            *taken = true;
        }
        Some(step)
    }

    /// Declares the clip over: every frame pushed becomes final.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Re-anchors the reference on the current frame once the displacement `d` (thumbnail
    /// pixels, the frame at picture displacement `at`) gets large.
    fn reanchor_if_far(&mut self, (dx, dy): (f64, f64), at: (f64, f64)) {
        if dx.abs() > REANCHOR_SHARE * self.tw as f64 || dy.abs() > REANCHOR_SHARE * self.th as f64 {
            self.anchor = at;
            self.swap_reference();
        }
    }

    /// Measures `luma` against the reference: its displacement in thumbnail pixels (under
    /// the dead zone: none) when it is a clean translation of it.
    fn measure(&mut self, luma: &Plane) -> Measured {
        let Some(fft) = self.fft.as_mut() else { return Measured::Nothing };
        let (tw, th, n) = (self.tw, self.th, self.tw * self.th);
        if luma.width() < tw * self.k || luma.height() < th * self.k {
            return Measured::Nothing;
        }
        grid::downscale_integer(luma, self.k, self.k, &mut self.thumb, tw);
        let mean = self.thumb.iter().sum::<f32>() / n as f32;
        for (row, (out, wy)) in
            self.thumb.chunks_exact(tw).zip(self.current.chunks_exact_mut(tw).zip(&self.win_y))
        {
            for ((o, &v), wx) in out.iter_mut().zip(row).zip(&self.win_x) {
                *o = Complex32::new((v - mean) * wx * wy, 0.0);
            }
        }
        fft.forward(&mut self.current);
        if !self.has_reference {
            self.swap_reference();
            self.has_reference = true;
            return Measured::Nothing;
        }
        let found = self
            .displacement()
            .map(|d| match self.tracking {
                Tracking::SharedWindow => d,
                Tracking::PansOnly if d.0.hypot(d.1) < REFIT_FROM => d,
                Tracking::OverlapWindow | Tracking::PansOnly => self.refit_over_overlap(d),
            })
            .filter(|&d| self.rigid_match(d) >= self.min_ncc);
        match found {
            Some((dx, dy)) => {
                let dead = |d: f64| if d.abs() < DEAD_ZONE { 0.0 } else { d };
                Measured::Moved(dead(dx), dead(dy))
            }
            None => Measured::NoMatch,
        }
    }

    /// Makes the current frame the reference.
    fn swap_reference(&mut self) {
        std::mem::swap(&mut self.current, &mut self.reference);
        std::mem::swap(&mut self.thumb, &mut self.reference_thumb);
    }

    /// Normalised correlation of the reference thumbnail with the current one moved back
    /// by `d` (bilinear) over their overlap: near 1 when the picture moved as one
    /// piece, lower for a zoom, a shaken hand-held shot or an object crossing the frame,
    /// where no single translation describes the motion (and following one buys nothing).
    fn rigid_match(&mut self, d: (f64, f64)) -> f64 {
        let (tw, th) = (self.tw as i64, self.th as i64);
        // Current pixel p + d, bilinear between (ix, iy) and (ix + 1, iy + 1).
        let (ix, iy) = (d.0.floor() as i64, d.1.floor() as i64);
        let (fx, fy) = (d.0 - ix as f64, d.1 - iy as f64);
        let (x0, x1) = (0.max(-ix), tw.min(tw - 1 - ix));
        let (y0, y1) = (0.max(-iy), th.min(th - 1 - iy));
        if x1 - x0 < tw / 2 || y1 - y0 < th / 2 {
            return 0.0;
        }
        let (fx, fy) = (fx as f32, fy as f32);
        // Sums over a row in eight f32 lanes (they vectorise), rows added in f64.
        let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0f64, 0f64, 0f64, 0f64, 0f64);
        let b = &mut self.row[..(x1 - x0) as usize];
        for y in y0..y1 {
            let a = &self.reference_thumb[(y * tw + x0) as usize..(y * tw + x1) as usize];
            let start = ((y + iy) * tw + x0 + ix) as usize;
            let (b0, b1) =
                (&self.thumb[start..][..a.len() + 1], &self.thumb[start + self.tw..][..a.len() + 1]);
            for (n, b) in b.iter_mut().enumerate() {
                let top = b0[n] + (b0[n + 1] - b0[n]) * fx;
                let bottom = b1[n] + (b1[n + 1] - b1[n]) * fx;
                *b = top + (bottom - top) * fy;
            }
            let [ra, rb, raa, rbb, rab] = lane_sums(a, b);
            sa += ra;
            sb += rb;
            saa += raa;
            sbb += rbb;
            sab += rab;
        }
        let n = ((x1 - x0) * (y1 - y0)) as f64;
        let cov = sab - sa * sb / n;
        let var = (saa - sa * sa / n) * (sbb - sb * sb / n);
        if var <= 0.0 {
            return 0.0;
        }
        cov / var.sqrt()
    }

    /// Displacement of `current` against `reference` in thumbnail pixels, or `None` when
    /// the phase correlation has no clear peak.
    fn displacement(&mut self) -> Option<(f64, f64)> {
        let fft = self.fft.as_mut().expect("checked by the caller");
        let (tw, th, n) = (self.tw, self.th, self.tw * self.th);
        for ((s, c), r) in self.surface.iter_mut().zip(&self.current).zip(&self.reference) {
            let p = c * r.conj();
            // No overflow to guard against at these magnitudes: a plain root (hypot is slow).
            let m = (p.re * p.re + p.im * p.im).sqrt();
            *s = if m > 1e-20 { p / m } else { Complex32::default() };
        }
        // Read once, so left transposed (one transpose fewer): (x, y) is at [x * th + y].
        let surface = fft.inverse_transposed(&mut self.surface);
        // The peak and the surface's RMS, in eight lanes.
        let (mut best, mut sq) = ([f32::MIN; 8], [0f32; 8]);
        let chunks = surface.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            for (l, v) in c.iter().enumerate() {
                best[l] = best[l].max(v.re);
                sq[l] += v.re * v.re;
            }
        }
        let mut best = best.into_iter().fold(f32::MIN, f32::max);
        let mut sq: f64 = sq.iter().map(|&v| f64::from(v)).sum();
        for v in tail {
            best = best.max(v.re);
            sq += f64::from(v.re * v.re);
        }
        // The first of equal peaks in row-major order, as a row-major surface reads it.
        let at = surface
            .iter()
            .enumerate()
            .filter(|(_, v)| v.re == best)
            .map(|(k, _)| (k % th) * tw + k / th)
            .min()
            .unwrap_or(0);
        let rms = (sq / n as f64).sqrt();
        if f64::from(best) < PEAK_OVER_RMS * rms {
            return None;
        }
        let d = (signed(at % tw, tw), signed(at / tw, th));
        // Least-squares fit of the residual phase: twice, the second from the first's estimate.
        let d = self.phase_fit(d, false);
        Some(self.phase_fit(d, false))
    }

    /// Refines `d` (thumbnail pixels) by the phase of the current thumbnail against the
    /// reference, both under the window of their overlap in picture coordinates (see
    /// [`Tracking::OverlapWindow`]).
    fn refit_over_overlap(&mut self, mut d: (f64, f64)) -> (f64, f64) {
        for _ in 0..OVERLAP_REFITS {
            // The overlap in reference coordinates: content at u in the reference is at
            // u + d in the current thumbnail.
            let span = |n: usize, d: f64| ((-d).max(0.0), (n as f64 - d).min(n as f64));
            let (sx, sy) = (span(self.tw, d.0), span(self.th, d.1));
            if sx.1 - sx.0 < self.tw as f64 / 2.0 || sy.1 - sy.0 < self.th as f64 / 2.0 {
                break;
            }
            let tw = self.tw;
            let fft = self.fft.as_mut().expect("checked by the caller");
            // Both windowed thumbnails are real: one complex transform carries the two (the
            // current as the real part, the reference as the imaginary part), split below
            // by the spectrum's symmetry.
            let packed = &mut self.overlap_current;
            windowed_over(
                &self.thumb,
                tw,
                (sx, sy),
                d,
                (&mut self.overlap_win_x, &mut self.overlap_win_y),
                |n, v| packed[n] = Complex32::new(v, 0.0),
            );
            windowed_over(
                &self.reference_thumb,
                tw,
                (sx, sy),
                (0.0, 0.0),
                (&mut self.overlap_win_x, &mut self.overlap_win_y),
                |n, v| packed[n].im = v,
            );
            fft.forward(packed);
            split_real_pair(packed, &mut self.overlap_reference, tw, self.th);
            d = self.phase_fit(d, true);
        }
        d
    }

    /// One weighted least-squares fit of the cross-spectrum's residual phase over the lower
    /// half of the frequencies on each axis, from the estimate `d`: the plain windowed spectra, or with
    /// `overlap` the overlap-windowed ones.
    fn phase_fit(&mut self, d: (f64, f64), overlap: bool) -> (f64, f64) {
        let (tw, th) = (self.tw, self.th);
        let (ax_n, ay_n) = (d.0 / tw as f64, d.1 / th as f64);
        for (i, p) in self.phasor_x.iter_mut().enumerate() {
            let a = std::f64::consts::TAU * signed(i, tw) * ax_n;
            *p = Complex32::new(a.cos() as f32, a.sin() as f32);
        }
        for (i, p) in self.phasor_y.iter_mut().enumerate() {
            let a = std::f64::consts::TAU * signed(i, th) * ay_n;
            *p = Complex32::new(a.cos() as f32, a.sin() as f32);
        }
        let (current, reference) = if overlap {
            (&self.overlap_current, &self.overlap_reference)
        } else {
            (&self.current, &self.reference)
        };
        // The spectra are of real pictures: the bin at -k holds the conjugate of the one at
        // k, whose phase is the negative and whose frequency is the negative, so the pair
        // adds the same term twice. Half the bins (fx > 0, and fx = 0 with fy > 0) give the
        // same normal equations up to a factor that cancels.
        let mut sums = [0f64; 5];
        for (y, fy, xs) in fit_rows(tw, th) {
            let (cr, rr) = (&current[y * tw..][..tw], &reference[y * tw..][..tw]);
            fit_row((cr, rr), (&self.phasor_x, self.phasor_y[y]), xs, fy, &mut sums);
        }
        let [sxx, sxy, syy, bx, by] = sums;
        let det = sxx * syy - sxy * sxy;
        if det <= 0.0 {
            return d;
        }
        // phi = -2 pi (fx dx + fy dy): solve the 2x2 normal equations.
        let scale = -1.0 / std::f64::consts::TAU;
        let ddx = scale * (syy * bx - sxy * by) / det;
        let ddy = scale * (sxx * by - sxy * bx) / det;
        (d.0 + ddx.clamp(-1.0, 1.0), d.1 + ddy.clamp(-1.0, 1.0))
    }
}

/// A frame's displacement since the first frame by each tracking (indexed by
/// [`Tracking::index`]; zero for trackings not run).
pub type Displacements = [(f64, f64); Tracking::ALL.len()];

/// The displacement in `d` that `tracking` measured; none for a layout that does not follow
/// motion (`None`).
pub fn displacement_by(d: &Displacements, tracking: Option<Tracking>) -> (f64, f64) {
    tracking.map_or((0.0, 0.0), |t| d[t.index()])
}

/// Items (a frame and whatever rides along with it) held until every tracker's displacement
/// for them is final, then handed on in display order: the one place that drains trackers.
#[derive(Debug)]
pub struct TrackedQueue<T> {
    trackers: Vec<MotionTracker>,
    /// Items measured and not yet handed on, with the displacements known so far.
    waiting: std::collections::VecDeque<(T, Displacements)>,
    /// How many of the waiting items (from the front) each tracker has filled in.
    filled: Vec<usize>,
}

impl<T> TrackedQueue<T> {
    /// A queue measuring with `trackers` (none: items are handed on at once, unmoved).
    pub fn new(trackers: Vec<MotionTracker>) -> Self {
        let filled = vec![0; trackers.len()];
        Self { trackers, waiting: std::collections::VecDeque::with_capacity(Self::MAX_HELD), filled }
    }

    /// Most items held at once: size frame pools by it.
    pub const MAX_HELD: usize = MotionTracker::MAX_LAG + 1;

    /// Measures the next picture (display order) and queues `item` with it.
    pub fn push(&mut self, luma: &Plane, item: T) {
        self.measure(luma);
        self.enqueue(item);
    }

    /// [`TrackedQueue::push`] for an item that carries its picture (`luma` finds it).
    pub fn push_holding(&mut self, item: T, luma: impl FnOnce(&T) -> &Plane) {
        self.measure(luma(&item));
        self.enqueue(item);
    }

    fn measure(&mut self, luma: &Plane) {
        for t in &mut self.trackers {
            t.push(luma);
        }
    }

    fn enqueue(&mut self, item: T) {
        self.waiting.push_back((item, [(0.0, 0.0); Tracking::ALL.len()]));
        self.collect();
    }

    /// Declares the clip over: every item queued becomes final.
    pub fn finish(&mut self) {
        self.trackers.iter_mut().for_each(MotionTracker::finish);
        self.collect();
    }

    /// The oldest item, once every tracker's displacement for it is final.
    pub fn pop(&mut self) -> Option<(T, Displacements)> {
        if self.filled.contains(&0) || self.waiting.is_empty() {
            return None;
        }
        self.filled.iter_mut().for_each(|n| *n -= 1);
        self.waiting.pop_front()
    }

    /// Runs the queue over `items` (display order; `luma` finds each one's picture), handing
    /// each to `ready` once final; stops early when `ready` returns false.
    pub fn run(
        mut self,
        items: impl IntoIterator<Item = T>,
        luma: impl Fn(&T) -> &Plane,
        mut ready: impl FnMut(T, Displacements) -> bool,
    ) {
        for item in items {
            self.push_holding(item, &luma);
            if !self.hand_on(&mut ready) {
                return;
            }
        }
        self.finish();
        self.hand_on(&mut ready);
    }

    /// Hands every final item to `ready`; false once `ready` refuses one.
    fn hand_on(&mut self, ready: &mut impl FnMut(T, Displacements) -> bool) -> bool {
        while let Some((item, d)) = self.pop() {
            if !ready(item, d) {
                return false;
            }
        }
        true
    }

    /// Writes every displacement the trackers have made final into the waiting items.
    fn collect(&mut self) {
        for (t, filled) in self.trackers.iter_mut().zip(&mut self.filled) {
            while let Some(d) = t.pop() {
                self.waiting[*filled].1[t.tracking().index()] = d;
                *filled += 1;
            }
        }
    }
}

/// The arctangent of `a` in [0, 1]: an odd minimax polynomial (its coefficients of a,
/// a^3, ...), evaluated in Horner form.
#[inline(always)]
fn atan_unit(a: f32) -> f32 {
    const C: [f32; 7] =
        [0.999_996_6, -0.333_182_44, 0.198_128_77, -0.132_466_03, 0.079_798_18, -0.033_716_71, 0.006_840_037];
    let s = a * a;
    let mut r = C[6];
    for &c in C[..6].iter().rev() {
        r = r * s + c;
    }
    r * a
}

/// Bins side by side in [`fit_row`].
const FIT_LANES: usize = 8;

/// Adds the bins `xs` of one spectrum row (`current`, `reference`; the row's frequency `fy`)
/// to the phase fit's normal equations `sums` (`sxx, sxy, syy, bx, by`), with the
/// displacement found so far undone by the phasors (`phasor_x` by column, `py` the row's).
/// Eight bins at a time: their products, magnitudes and phases side by side (that
/// vectorises; one bin at a time the arctangent stayed scalar), then the sums bin by bin in
/// order, so the result is bit for bit the per-bin loop's.
fn fit_row(
    (current, reference): (&[Complex32], &[Complex32]),
    (phasor_x, py): (&[Complex32], Complex32),
    xs: std::ops::RangeInclusive<usize>,
    fy: f64,
    sums: &mut [f64; 5],
) {
    let (start, end) = (*xs.start(), *xs.end() + 1);
    let tw = current.len() as f64;
    let mut x0 = start;
    while x0 < end {
        let n = (end - x0).min(FIT_LANES);
        let (mut re, mut im) = ([0f32; FIT_LANES], [0f32; FIT_LANES]);
        for l in 0..FIT_LANES {
            // Lanes past the row's end repeat its last bin and are not summed.
            let x = (x0 + l).min(end - 1);
            // Undo the displacement found so far: what is left is a small phase.
            let p = current[x] * reference[x].conj() * phasor_x[x] * py;
            (re[l], im[l]) = (p.re, p.im);
        }
        let mut w = [0f32; FIT_LANES];
        for l in 0..FIT_LANES {
            w[l] = (re[l] * re[l] + im[l] * im[l]).sqrt();
        }
        let phi = atan2_lanes(&im, &re);
        for l in 0..n {
            let fx = (x0 + l) as f64 / tw;
            let (w, phi) = (f64::from(w[l]), f64::from(phi[l]));
            sums[0] += w * fx * fx;
            sums[1] += w * fx * fy;
            sums[2] += w * fy * fy;
            sums[3] += w * fx * phi;
            sums[4] += w * fy * phi;
        }
        x0 += n;
    }
}

/// `atan2(y, x)` of eight lanes within 3e-7 rad: an odd minimax polynomial for atan on
/// [0, 1] after folding the octants. The phase fit takes thousands a frame, and libm's was
/// the tracker's largest single cost. No branches, so the lanes vectorise; bit for bit the
/// one-value form with branches it replaced (kept in the tests).
fn atan2_lanes(y: &[f32; FIT_LANES], x: &[f32; FIT_LANES]) -> [f32; FIT_LANES] {
    let mut out = [0f32; FIT_LANES];
    for l in 0..FIT_LANES {
        let (ax, ay) = (x[l].abs(), y[l].abs());
        let lo = if ax < ay { ax } else { ay };
        let hi = if ax < ay { ay } else { ax };
        let mut r = atan_unit(lo / hi);
        r = if ay > ax { std::f32::consts::FRAC_PI_2 - r } else { r };
        r = if x[l] < 0.0 { std::f32::consts::PI - r } else { r };
        r = if y[l] < 0.0 { -r } else { r };
        out[l] = if hi == 0.0 { 0.0 } else { r };
    }
    out
}

/// `thumb` (`tw` wide, its mean under the window removed) under a Hann window spanning `span` (x and y ranges,
/// in the coordinates of the picture content) with the content moved by `shift`: sample
/// `p` gets the window's value at `p - shift`, so two thumbnails whose content differs by
/// `shift` get the same window on the same content.
fn windowed_over(
    thumb: &[f32],
    tw: usize,
    (sx, sy): ((f64, f64), (f64, f64)),
    shift: (f64, f64),
    (wx, wy): (&mut [f32], &mut [f32]),
    mut out: impl FnMut(usize, f32),
) {
    let hann = |p: usize, (lo, hi): (f64, f64), shift: f64| {
        let t = (p as f64 + 0.5 - shift - lo) / (hi - lo);
        if t <= 0.0 || t >= 1.0 {
            0.0
        } else {
            0.5 - 0.5 * (std::f64::consts::TAU * t).cos()
        }
    };
    for (x, w) in wx.iter_mut().enumerate() {
        *w = hann(x, sx, shift.0) as f32;
    }
    for (y, w) in wy.iter_mut().enumerate() {
        *w = hann(y, sy, shift.1) as f32;
    }
    let (wx, wy) = (&*wx, &*wy);
    // The weighted mean: each row's sum under the x window (f32 lanes), rows in f64.
    let mut sum = 0f64;
    for (row, &wy) in thumb.chunks_exact(tw).zip(wy) {
        if wy > 0.0 {
            sum += f64::from(wy) * f64::from(dot_lanes(row, wx));
        }
    }
    let total = |w: &[f32]| w.iter().map(|&v| f64::from(v)).sum::<f64>();
    let weight = total(wx) * total(wy);
    // The same content under the same window has the same weighted mean in both.
    let mean = if weight > 0.0 { (sum / weight) as f32 } else { 0.0 };
    for (y, (row, &wy)) in thumb.chunks_exact(tw).zip(wy).enumerate() {
        for (x, (&v, &wx)) in row.iter().zip(wx).enumerate() {
            out(y * tw + x, (v - mean) * wx * wy);
        }
    }
}

/// `sum a[i] b[i]` in eight f32 lanes.
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Sums of `a`, `b`, `a^2`, `b^2` and `a b` over two rows of equal length, in eight f32
/// lanes each (they vectorise), returned in f64.
fn lane_sums(a: &[f32], b: &[f32]) -> [f64; 5] {
    let mut lanes = [[0f32; 8]; 5];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[0][l] += x[l];
            lanes[1][l] += y[l];
            lanes[2][l] += x[l] * x[l];
            lanes[3][l] += y[l] * y[l];
            lanes[4][l] += x[l] * y[l];
        }
    }
    let mut out = lanes.map(|l| l.iter().map(|&v| f64::from(v)).sum::<f64>());
    for (&x, &y) in ta.iter().zip(tb) {
        let (x, y) = (f64::from(x), f64::from(y));
        out[0] += x;
        out[1] += y;
        out[2] += x * x;
        out[3] += y * y;
        out[4] += x * y;
    }
    out
}

/// The spectrum bins a phase fit reads, row by row: `(y, fy, x range)`. Frequencies up to a
/// quarter of the sampling rate on each axis, and of each pair of conjugate bins (k, -k)
/// only one: fx > 0, or fx = 0 with fy > 0. No bin's conjugate is among them.
fn fit_rows(w: usize, h: usize) -> impl Iterator<Item = (usize, f64, std::ops::RangeInclusive<usize>)> {
    (0..h).filter_map(move |y| {
        let fy = signed(y, h) / h as f64;
        (fy.abs() <= 0.25).then_some((y, fy, if fy > 0.0 { 0 } else { 1 }..=w / 4))
    })
}

/// Splits the spectrum `z` of `a + i b` (`a`, `b` real, `w` x `h`) into the spectra of `a`
/// (left in `z`) and `b` (written into `b_out`), on the bins of [`fit_rows`] only:
/// `A(k) = (Z(k) + conj Z(-k)) / 2`, `B(k) = (Z(k) - conj Z(-k)) / 2i`. Those bins'
/// conjugates are not among them, so the values read are never ones already written.
fn split_real_pair(z: &mut [Complex32], b_out: &mut [Complex32], w: usize, h: usize) {
    let mirror = |i: usize, n: usize| if i == 0 { 0 } else { n - i };
    for (y, _, xs) in fit_rows(w, h) {
        let my = mirror(y, h);
        for x in xs {
            let (i, m) = (y * w + x, my * w + mirror(x, w));
            let (zk, zm) = (z[i], z[m]);
            z[i] = (zk + zm.conj()) * 0.5;
            b_out[i] = Complex32::new(zk.im + zm.im, zm.re - zk.re) * 0.5;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textured picture (sum of oblique waves and a blob) seen through a window at
    /// (`ox`, `oy`), sampled by area so fractional offsets are honest.
    fn view(w: usize, h: usize, ox: f64, oy: f64) -> Plane {
        // Smooth value noise at two scales (a lattice of keyed levels, bilinear between
        // them) and a gradient: broadband like a real scene, no periodicity.
        let lattice = |i: i64, j: i64, salt: u64| {
            let mut z = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (j as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
                ^ salt;
            z ^= z >> 29;
            z = z.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z ^= z >> 32;
            (z % 1000) as f64 / 1000.0
        };
        let noise = |x: f64, y: f64, cell: f64, salt: u64| {
            let (u, v) = (x / cell, y / cell);
            let (i, j) = (u.floor(), v.floor());
            let (fu, fv) = (u - i, v - j);
            let (i, j) = (i as i64, j as i64);
            let top = lattice(i, j, salt) * (1.0 - fu) + lattice(i + 1, j, salt) * fu;
            let bottom = lattice(i, j + 1, salt) * (1.0 - fu) + lattice(i + 1, j + 1, salt) * fu;
            top * (1.0 - fv) + bottom * fv
        };
        let scene =
            |x: f64, y: f64| 40.0 + 0.05 * x + 90.0 * noise(x, y, 23.0, 1) + 60.0 * noise(x, y, 5.0, 2);
        let mut p = Plane::new(w, h, 0);
        for (y, row) in p.rows_mut().enumerate() {
            for (x, v) in row.iter_mut().enumerate() {
                // Content at scene point s shows at picture point s + offset.
                let (sx, sy) = (x as f64 - ox, y as f64 - oy);
                let mut acc = 0.0;
                for (dx, dy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                    acc += scene(sx + dx, sy + dy);
                }
                *v = (acc / 4.0).round().clamp(0.0, 255.0) as u8;
            }
        }
        p
    }

    /// The displacement of every frame of `frames`, as a caller of push and pop gets them.
    fn track_all(t: &mut MotionTracker, frames: &[Plane]) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        for f in frames {
            t.push(f);
            while let Some(d) = t.pop() {
                out.push(d);
            }
        }
        t.finish();
        while let Some(d) = t.pop() {
            out.push(d);
        }
        assert_eq!(out.len(), frames.len());
        out
    }

    fn noise(w: usize, h: usize, seed: u32) -> Plane {
        let mut noise = Plane::new(w, h, 0);
        let mut s = seed;
        for row in noise.rows_mut() {
            for v in row.iter_mut() {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *v = (s >> 24) as u8;
            }
        }
        noise
    }

    /// Worst error of `tracking` over a pan of `step` pixels a frame for `frames` frames.
    fn worst_error_over_a_pan(
        tracking: Tracking,
        (w, h): (usize, usize),
        step: (f64, f64),
        frames: u32,
    ) -> f64 {
        let truth = |f: u32| (step.0 * f64::from(f), step.1 * f64::from(f));
        let views: Vec<Plane> = (0..frames).map(|f| view(w, h, truth(f).0, truth(f).1)).collect();
        let got = track_all(&mut MotionTracker::new(w, h, tracking), &views);
        // v2 holds the mark still until the pan has lasted RUN_TO_FOLLOW frames, then
        // moves it as the picture moves; v3 follows the pan from its first frame.
        let start = match tracking {
            Tracking::SharedWindow => RUN_TO_FOLLOW - 1,
            Tracking::OverlapWindow | Tracking::PansOnly => 0,
        };
        let mut worst = 0f64;
        for (f, got) in (0..frames).zip(got) {
            let want = if f <= start {
                (0.0, 0.0)
            } else {
                (truth(f).0 - truth(start).0, truth(f).1 - truth(start).1)
            };
            worst = worst.max((got.0 - want.0).abs()).max((got.1 - want.1).abs());
        }
        worst
    }

    #[test]
    fn follows_a_pan_to_a_fraction_of_a_pixel() {
        for tracking in Tracking::ALL {
            // 44 frames and 100 pixels of pan followed (past two re-anchorings).
            let worst = worst_error_over_a_pan(tracking, (640, 360), (2.37, -0.81), 44);
            assert!(worst < 0.25, "{tracking:?}: worst error {worst} px");
        }
    }

    #[test]
    fn the_overlap_window_follows_a_long_pan_without_falling_short() {
        // 2.5 px a frame across, 2 down, for 60 frames (no re-anchoring across): the window
        // fixed on the thumbnail pulls every measure towards no motion, so the error grows
        // with the distance; the window over the overlap does not.
        let pan = |t| worst_error_over_a_pan(t, (960, 540), (-2.5, -2.0), 60);
        let (shared, overlap) = (pan(Tracking::SharedWindow), pan(Tracking::OverlapWindow));
        assert!(overlap < 0.05, "overlap window: worst error {overlap} px");
        assert!(shared > 4.0 * overlap, "fixed window {shared} px, overlap window {overlap} px");
    }

    #[test]
    fn a_still_picture_stays_exactly_still() {
        let (w, h) = (320, 240);
        for tracking in Tracking::ALL {
            let still = vec![view(w, h, 3.0, 1.0); 10];
            let got = track_all(&mut MotionTracker::new(w, h, tracking), &still);
            assert!(got.iter().all(|&d| d == (0.0, 0.0)), "{tracking:?}: {got:?}");
        }
    }

    #[test]
    fn a_short_move_is_not_followed_and_a_pan_is_from_its_first_frame() {
        let (w, h) = (320, 240);
        // Four frames of movement, a cut, then twelve frames of pan over a new picture.
        let mut frames: Vec<Plane> = (0..5).map(|f| view(w, h, 3.0 * f64::from(f), 0.0)).collect();
        frames.push(noise(w, h, 12345));
        let pan_start = frames.len();
        frames.extend((0..12).map(|f| view(w, h, 40.0, 2.0 * f64::from(f))));
        for tracking in [Tracking::OverlapWindow, Tracking::PansOnly] {
            let got = track_all(&mut MotionTracker::new(w, h, tracking), &frames);
            // The cut frame and the pan's first (a new picture: no match) stay where the
            // short move left the mark: where it started.
            for (f, d) in got.iter().enumerate().take(pan_start + 1) {
                assert_eq!(*d, (0.0, 0.0), "{tracking:?} frame {f}");
            }
            for (i, d) in got[pan_start..].iter().enumerate() {
                let ok = d.0.abs() < 0.1 && (d.1 - 2.0 * i as f64).abs() < 0.1;
                assert!(ok, "{tracking:?} pan frame {i}: {d:?}");
            }
        }
        // v2 holds still for the first RUN_TO_FOLLOW - 1 frames of the pan.
        let v2 = track_all(&mut MotionTracker::new(w, h, Tracking::SharedWindow), &frames);
        let held = f64::from(RUN_TO_FOLLOW - 1) * 2.0;
        let last = v2.last().unwrap();
        assert!((last.1 - (2.0 * 11.0 - held)).abs() < 0.2, "{last:?}");
    }

    /// A still shot of `view` with a square of other texture (a quarter of the height on a
    /// side) crossing it, `speed` pixels a frame to the right.
    fn still_shot_with_a_crossing(w: usize, h: usize, frames: u32, speed: f64) -> Vec<Plane> {
        let (background, other) = (view(w, h, 0.0, 0.0), view(w, h, 97.0, 41.0));
        let side = h / 4;
        (0..frames)
            .map(|f| {
                let mut p = background.clone();
                let x0 = (10.0 + speed * f64::from(f)) as usize;
                for y in h / 3..h / 3 + side {
                    let (row, src) = (&mut p.rows_mut().nth(y).unwrap()[x0..x0 + side], other.row(y));
                    row.copy_from_slice(&src[x0..x0 + side]);
                }
                p
            })
            .collect()
    }

    #[test]
    fn v4_keeps_a_still_camera_still_where_v3_drifts_with_what_crosses_it() {
        let (w, h) = (320, 240);
        let frames = still_shot_with_a_crossing(w, h, 24, 3.0);
        let v3 = track_all(&mut MotionTracker::new(w, h, Tracking::OverlapWindow), &frames);
        let v4 = track_all(&mut MotionTracker::new(w, h, Tracking::PansOnly), &frames);
        assert!(v3.iter().any(|&d| d != (0.0, 0.0)), "v3 was expected to drift: {v3:?}");
        assert!(v4.iter().all(|&d| d == (0.0, 0.0)), "{v4:?}");
    }

    #[test]
    fn v4_leaves_a_slow_drift_and_follows_a_pan_that_starts_from_a_still_shot() {
        let (w, h) = (320, 240);
        // A twentieth of a pixel a frame: 0.4 px over eight frames, under PAN_TRAVEL.
        let drift: Vec<Plane> = (0..24).map(|f| view(w, h, 0.05 * f64::from(f), 0.0)).collect();
        let v4 = track_all(&mut MotionTracker::new(w, h, Tracking::PansOnly), &drift);
        assert!(v4.iter().all(|&d| d == (0.0, 0.0)), "{v4:?}");
        let v3 = track_all(&mut MotionTracker::new(w, h, Tracking::OverlapWindow), &drift);
        assert!((v3[23].0 - 1.15).abs() < 0.1, "{:?}", v3[23]);
        // Ten still frames, then a pan of 0.3 px a frame down with no cut (one run): it has
        // travelled PAN_TRAVEL four frames in, and from then on the mark is where the
        // picture is, the steps it missed caught up with.
        let still_then_pan: Vec<Plane> =
            (0..30u32).map(|f| view(w, h, 0.0, 0.3 * f64::from(f.saturating_sub(9)))).collect();
        let got = track_all(&mut MotionTracker::new(w, h, Tracking::PansOnly), &still_then_pan);
        for (f, d) in got.iter().enumerate() {
            let want = 0.3 * f.saturating_sub(9) as f64;
            let lag = if f < 9 + 5 { 1.0 } else { 0.15 };
            assert!(d.0.abs() < 0.1 && (d.1 - want).abs() < lag, "frame {f}: {d:?}, want {want}");
        }
    }

    #[test]
    fn v4_never_takes_a_step_twice_on_a_pan_that_slows_and_picks_up_again() {
        let (w, h) = (320, 240);
        // A pan just fast enough, a pause, a spurt, then just fast enough again: following
        // stops and starts, and each restart takes only the steps not yet taken.
        let steps: Vec<f64> = [[0.13; 8].as_slice(), &[0.0, 0.2, 0.2], &[0.13; 12]].concat();
        let mut truth = vec![0.0];
        for s in &steps {
            truth.push(truth.last().unwrap() + s);
        }
        let frames: Vec<Plane> = truth.iter().map(|&x| view(w, h, x, 0.0)).collect();
        let got = track_all(&mut MotionTracker::new(w, h, Tracking::PansOnly), &frames);
        for (f, (d, want)) in got.iter().zip(&truth).enumerate() {
            // Never ahead of the picture; behind it by at most what one window travels.
            assert!(d.0 <= want + 0.1 && d.0 >= want - 1.2, "frame {f}: {d:?}, picture at {want}");
        }
        assert!((got.last().unwrap().0 - truth.last().unwrap()).abs() < 0.2, "{got:?}");
    }

    #[test]
    fn a_cut_keeps_the_last_displacement() {
        let (w, h) = (320, 240);
        let mut frames: Vec<Plane> = (0..12).map(|f| view(w, h, 2.0 * f64::from(f), 0.0)).collect();
        frames.extend([noise(w, h, 12345), noise(w, h, 54321)]);
        for tracking in Tracking::ALL {
            let got = track_all(&mut MotionTracker::new(w, h, tracking), &frames);
            let before = got[11];
            let followed = match tracking {
                Tracking::SharedWindow => 2.0 * f64::from(12 - RUN_TO_FOLLOW),
                Tracking::OverlapWindow | Tracking::PansOnly => 22.0,
            };
            assert!((before.0 - followed).abs() < 0.2, "{tracking:?}: {before:?}");
            // After the cut the picture is new: no motion until it pans again.
            assert_eq!(got[12], before, "{tracking:?}");
            assert_eq!(got[13], before, "{tracking:?}");
        }
    }

    #[test]
    fn a_zoom_is_not_followed() {
        let (w, h) = (320, 240);
        // Zooming in 3% a frame about the centre: no translation describes it.
        let big = view(2 * w, 2 * h, 0.0, 0.0);
        let frames: Vec<Plane> = (0..12)
            .map(|f| {
                let z = 1.03f64.powi(f);
                let mut p = Plane::new(w, h, 0);
                for (y, row) in p.rows_mut().enumerate() {
                    for (x, v) in row.iter_mut().enumerate() {
                        let sx = ((x as f64 - w as f64 / 2.0) / z + w as f64) as usize;
                        let sy = ((y as f64 - h as f64 / 2.0) / z + h as f64) as usize;
                        *v = big.row(sy)[sx];
                    }
                }
                p
            })
            .collect();
        for tracking in Tracking::ALL {
            let got = track_all(&mut MotionTracker::new(w, h, tracking), &frames);
            for (f, d) in got.iter().enumerate() {
                assert!(d.0.abs() < 0.5 && d.1.abs() < 0.5, "{tracking:?} frame {f}: {d:?}");
            }
        }
    }

    #[test]
    fn tiny_pictures_are_taken_as_static() {
        for tracking in Tracking::ALL {
            let frames = [view(16, 16, 0.0, 0.0), view(16, 16, 5.0, 5.0)];
            let got = track_all(&mut MotionTracker::new(16, 16, tracking), &frames);
            assert_eq!(got, vec![(0.0, 0.0); 2]);
        }
    }

    #[test]
    fn the_approximate_atan2_agrees_with_libm() {
        let one = |y: f32, x: f32| atan2_lanes(&[y; FIT_LANES], &[x; FIT_LANES])[0];
        let mut worst = 0f64;
        for i in 0..400 {
            for j in 0..400 {
                // Every octant, magnitudes from tiny to large.
                let (x, y) = ((i as f32 - 199.5) * 1.37, (j as f32 - 199.5) * 0.91);
                let (x, y) = if (i + j) % 3 == 0 { (x * 1e-6, y * 1e-6) } else { (x, y) };
                let (got, want) = (f64::from(one(y, x)), f64::from(y).atan2(f64::from(x)));
                worst = worst.max((got - want).abs());
            }
        }
        assert!(worst < 1e-6, "worst error {worst} rad");
        assert_eq!(one(0.0, 0.0), 0.0);
        assert!((f64::from(one(1.0, 0.0)) - std::f64::consts::FRAC_PI_2).abs() < 1e-6);
        assert!((f64::from(one(0.0, -1.0)) - std::f64::consts::PI).abs() < 1e-6);
    }

    /// The one-value arctangent with branches that [`atan2_lanes`] replaced.
    fn atan2_reference(y: f32, x: f32) -> f32 {
        let (ax, ay) = (x.abs(), y.abs());
        let (lo, hi) = if ax < ay { (ax, ay) } else { (ay, ax) };
        if hi == 0.0 {
            return 0.0;
        }
        let mut r = atan_unit(lo / hi);
        if ay > ax {
            r = std::f32::consts::FRAC_PI_2 - r;
        }
        if x < 0.0 {
            r = std::f32::consts::PI - r;
        }
        if y < 0.0 {
            -r
        } else {
            r
        }
    }

    fn spectrum_noise(n: usize, seed: u32) -> Vec<Complex32> {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 20_001) as f32 / 100.0 - 100.0
        };
        (0..n).map(|_| Complex32::new(next(), next())).collect()
    }

    #[test]
    fn lanes_of_the_phase_fit_are_the_per_bin_loop_bit_for_bit() {
        // Arctangents: every octant, zeros of both signs, equal magnitudes.
        let vals = [0.0f32, -0.0, 1.0, -1.0, 2.5, -2.5, 1e-30, -7e3, 3.0e-7];
        for &y in &vals {
            let ys = [y; FIT_LANES];
            for &x in &vals {
                let got = atan2_lanes(&ys, &[x; FIT_LANES])[0];
                assert_eq!(got.to_bits(), atan2_reference(y, x).to_bits(), "atan2({y}, {x})");
            }
        }
        // A row's sums: rows shorter and longer than the lanes, ranges from 0 and from 1.
        for (tw, seed) in [(5usize, 1u32), (64, 2), (256, 3), (361, 4)] {
            let (cur, refr, px) =
                (spectrum_noise(tw, seed), spectrum_noise(tw, seed + 10), spectrum_noise(tw, seed + 20));
            let py = Complex32::new(0.6, -0.8);
            for xs in [0..=tw / 4, 1..=tw / 4, 0..=tw - 1] {
                let fy = -0.125;
                let mut fast = [0.5f64, -1.0, 2.0, 0.25, 3.0];
                let mut slow = fast;
                fit_row((&cur, &refr), (&px, py), xs.clone(), fy, &mut fast);
                for x in xs.clone() {
                    let fx = x as f64 / tw as f64;
                    let p = cur[x] * refr[x].conj() * px[x] * py;
                    let w = f64::from((p.re * p.re + p.im * p.im).sqrt());
                    let phi = f64::from(atan2_reference(p.im, p.re));
                    slow[0] += w * fx * fx;
                    slow[1] += w * fx * fy;
                    slow[2] += w * fy * fy;
                    slow[3] += w * fx * phi;
                    slow[4] += w * fy * phi;
                }
                assert_eq!(fast.map(f64::to_bits), slow.map(f64::to_bits), "{tw} {xs:?}");
            }
        }
    }

    #[test]
    fn one_transform_of_two_real_pictures_gives_both_spectra_where_the_fit_reads() {
        let (w, h) = (20, 9);
        let a: Vec<f32> = (0..w * h).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
        let b: Vec<f32> = (0..w * h).map(|i| ((i * 11) % 17) as f32 - 8.0).collect();
        let mut fft = Fft2d::new(w, h);
        let spectrum = |v: &[f32], fft: &mut Fft2d| {
            let mut c: Vec<Complex32> = v.iter().map(|&x| Complex32::new(x, 0.0)).collect();
            fft.forward(&mut c);
            c
        };
        let (want_a, want_b) = (spectrum(&a, &mut fft), spectrum(&b, &mut fft));
        let mut z: Vec<Complex32> = a.iter().zip(&b).map(|(&x, &y)| Complex32::new(x, y)).collect();
        fft.forward(&mut z);
        let mut got_b = vec![Complex32::default(); w * h];
        split_real_pair(&mut z, &mut got_b, w, h);
        let mut bins = 0;
        for (y, _, xs) in fit_rows(w, h) {
            for x in xs {
                let i = y * w + x;
                for (got, want) in [(z[i], want_a[i]), (got_b[i], want_b[i])] {
                    assert!((got - want).norm() < 1e-3, "bin ({x}, {y}): {got} vs {want}");
                }
                bins += 1;
            }
        }
        // Half of the bins up to a quarter of the rate on both axes, without (0, 0).
        assert_eq!(bins, (2 * (w / 4) + 1) * (2 * (h / 4) + 1) / 2);
    }

    #[test]
    fn the_queue_hands_items_on_in_order_with_every_trackers_measure() {
        let (w, h) = (320, 240);
        // Still, then a pan, then still again: v3 holds frames back while a run may start.
        let mut at = (0.0, 0.0);
        let mut frames = Vec::new();
        for f in 0..30 {
            if (5..20).contains(&f) {
                at = (at.0 + 1.7, at.1 - 0.6);
            }
            frames.push(view(w, h, at.0, at.1));
        }
        let alone: Vec<Vec<(f64, f64)>> =
            Tracking::ALL.iter().map(|&t| track_all(&mut MotionTracker::new(w, h, t), &frames)).collect();
        assert!(alone.iter().all(|a| a[29] != (0.0, 0.0)), "the pan is followed: {alone:?}");
        let trackers = Tracking::ALL.iter().map(|&t| MotionTracker::new(w, h, t)).collect();
        let mut out = Vec::new();
        TrackedQueue::new(trackers).run(
            frames.iter().enumerate(),
            |(_, p)| p,
            |(i, _), d| {
                out.push((i, d));
                true
            },
        );
        assert_eq!(out.len(), frames.len());
        for (n, (i, d)) in out.iter().enumerate() {
            assert_eq!(*i, n, "out of order");
            for t in Tracking::ALL {
                assert_eq!(d[t.index()], alone[t.index()][n], "{t:?} frame {n}");
            }
        }
        // Without trackers every item goes on at once, unmoved.
        let mut q = TrackedQueue::new(Vec::new());
        q.push(&frames[0], 7u8);
        assert_eq!(q.pop(), Some((7, [(0.0, 0.0); Tracking::ALL.len()])));
        // A consumer that hangs up stops the run.
        let mut seen = 0;
        let trackers = vec![MotionTracker::new(w, h, Tracking::OverlapWindow)];
        TrackedQueue::new(trackers).run(
            frames.iter(),
            |p| p,
            |_, _| {
                seen += 1;
                seen < 3
            },
        );
        assert_eq!(seen, 3);
    }
}
