//! Decoding: any container and codec FFmpeg reads, converted to planar 8-bit 4:2:0.

use std::path::{Path, PathBuf};

use ff::format::Pixel;
use ffmpeg_next as ff;

use crate::frame::Frame;
use crate::{Error, Result};

/// Facts about the video stream of an opened file.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoInfo {
    /// Picture width of the decoded frames.
    pub width: usize,
    /// Picture height of the decoded frames.
    pub height: usize,
    /// Time base of the timestamps in [`Frame::pts`], as (numerator, denominator).
    pub time_base: (i32, i32),
    /// Average frame rate, when the container knows it.
    pub frame_rate: Option<(i32, i32)>,
    /// Frame count from the container header, when it has one (an estimate otherwise).
    pub frames_estimate: Option<u64>,
    /// Duration in seconds, when known.
    pub duration_seconds: Option<f64>,
    /// Sample (pixel) aspect ratio; (0, 1) when unknown.
    pub sample_aspect_ratio: (i32, i32),
    /// The pixel format the codec decodes to, as FFmpeg names it.
    pub source_pixel_format: String,
    /// Whether luma uses the full 0–255 range (JPEG range) rather than 16–235.
    pub full_range: bool,
    /// Index of the video stream read.
    pub stream_index: usize,
    /// Video streams in the file (cover pictures not counted); when more than one, the
    /// largest picture is read, as the `ffmpeg` tool chooses.
    pub video_streams: usize,
    /// Interlaced: `Some(true)` top field first, `Some(false)` bottom field first; `None`
    /// for progressive or unknown.
    pub top_field_first: Option<bool>,
}

/// Reads the video stream of a file frame by frame, with timestamps. Non-video packets can
/// be collected for stream copy.
pub struct VideoReader {
    path: PathBuf,
    ictx: ff::format::context::Input,
    stream_index: usize,
    decoder: ff::decoder::Video,
    scaler: Option<Scaler>,
    decoded: ff::frame::Video,
    converted: ff::frame::Video,
    info: VideoInfo,
    frames_out: u64,
    draining: bool,
    /// Copy only the luma plane out of decoded frames.
    luma_only: bool,
    finished: bool,
    last_pts: Option<i64>,
    frame_duration: i64,
}

/// The swscale context, owned by one reader.
struct Scaler(ff::software::scaling::Context);

// SAFETY: an SwsContext has no thread affinity; it is owned by exactly one `VideoReader`
// and only ever used through `&mut`, so moving it to another thread is sound.
unsafe impl Send for Scaler {}

/// What [`VideoReader::next`] produced.
pub enum ReadEvent {
    /// A frame was written into the caller's buffer.
    Frame,
    /// A packet of another stream (audio, subtitles) for stream copy.
    Packet(ff::Packet),
    /// The end of the file.
    End,
}

/// Makes sure FFmpeg's global state is initialised. FFmpeg's log level is process-wide
/// and belongs to the host program: this library never changes it (the `tracemark` tool
/// quietens it itself).
pub(crate) fn init_ffmpeg() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        // Failing here only means FFmpeg will initialise lazily; every later call reports
        // its own error.
        let _ = ff::init();
    });
}

/// Maps JPEG-range pixel formats to their plain twins: the bytes are the same, and
/// converting between them would squeeze the luma range (see DESIGN.md section 9).
fn strip_jpeg_range(p: Pixel) -> (Pixel, bool) {
    match p {
        Pixel::YUVJ420P => (Pixel::YUV420P, true),
        Pixel::YUVJ422P => (Pixel::YUV422P, true),
        Pixel::YUVJ444P => (Pixel::YUV444P, true),
        Pixel::YUVJ440P => (Pixel::YUV440P, true),
        other => (other, false),
    }
}

/// The main video stream of a file, as the `ffmpeg` tool picks it: the largest picture
/// (width x height), a stream marked default counting extra, cover pictures never; the
/// first such stream on a tie. Returns its index and how many video streams there are.
fn main_video_stream(ictx: &ff::format::context::Input) -> Option<(usize, usize)> {
    let mut best: Option<(u64, usize)> = None;
    let mut count = 0;
    for st in ictx.streams() {
        if st.parameters().medium() != ff::media::Type::Video
            || st.disposition().contains(ff::format::stream::Disposition::ATTACHED_PIC)
        {
            continue;
        }
        count += 1;
        // SAFETY: the codec parameters are valid while `ictx` lives; plain integer reads.
        let (w, h) = unsafe {
            let p = st.parameters().as_ptr();
            (u64::try_from((*p).width).unwrap_or(0), u64::try_from((*p).height).unwrap_or(0))
        };
        let default = st.disposition().contains(ff::format::stream::Disposition::DEFAULT);
        let score = w * h + 5_000_000 * u64::from(default);
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, st.index()));
        }
    }
    best.map(|(_, i)| (i, count))
}

fn rational(r: ff::Rational) -> (i32, i32) {
    (r.numerator(), r.denominator())
}

impl VideoReader {
    /// Opens `path` and its best video stream. Fails with a typed error for a missing,
    /// empty or non-video file.
    ///
    /// # Errors
    /// [`Error::InputNotFound`], [`Error::NotARegularFile`] (directories, FIFOs, devices),
    /// [`Error::EmptyInput`], [`Error::NonUtf8Path`], [`Error::NotAVideo`],
    /// [`Error::NoVideoStream`].
    pub fn open(path: &Path) -> Result<Self> {
        init_ffmpeg();
        let meta = crate::input::regular_file(path)?;
        if meta.len() == 0 {
            return Err(Error::EmptyInput(path.to_path_buf()));
        }
        // ffmpeg-next unwraps the UTF-8 conversion of the path: check first.
        if path.to_str().is_none() {
            return Err(Error::NonUtf8Path(path.to_path_buf()));
        }
        let ictx = ff::format::input(&path)
            .map_err(|e| Error::NotAVideo { path: path.into(), reason: e.to_string() })?;
        let (stream_index, video_streams) =
            main_video_stream(&ictx).ok_or_else(|| Error::NoVideoStream(path.to_path_buf()))?;
        let stream = ictx.stream(stream_index).ok_or_else(|| Error::NoVideoStream(path.to_path_buf()))?;
        // FFmpeg renders any text file as "ANSI art" video through its tty demuxer; a text
        // file is not footage.
        if ictx.format().name() == "tty" || stream.parameters().id() == ff::codec::Id::ANSI {
            return Err(Error::NotAVideo { path: path.into(), reason: "it is a text file".into() });
        }
        let mut ctx = ff::codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| Error::NotAVideo { path: path.into(), reason: e.to_string() })?;
        ctx.set_threading(ff::threading::Config {
            kind: ff::threading::Type::Frame,
            count: 0,
            ..Default::default()
        });
        // Frame and slice threads, as the `ffmpeg` CLI asks: codecs that decode frames in
        // parallel do, the others (FFV1, ProRes, ...) split each frame instead of decoding
        // on one core (ffmpeg-next's enum names one kind only).
        // SAFETY: the context is valid and not yet opened; thread_type is a plain field
        // that avcodec_open2 reads.
        unsafe {
            (*ctx.as_mut_ptr()).thread_type = ff::ffi::FF_THREAD_FRAME | ff::ffi::FF_THREAD_SLICE;
        }
        let decoder = ctx.decoder().video().map_err(|e| Error::NotAVideo {
            path: path.into(),
            reason: format!("no decoder for the video stream: {e}"),
        })?;
        let (width, height) = (decoder.width() as usize, decoder.height() as usize);
        if width == 0 || height == 0 {
            return Err(Error::NotAVideo {
                path: path.into(),
                reason: "the video stream has no picture size".into(),
            });
        }
        let time_base = rational(stream.time_base());
        let avg = stream.avg_frame_rate();
        let frame_rate = (avg.numerator() > 0 && avg.denominator() > 0).then(|| rational(avg));
        let duration_seconds = if stream.duration() > 0 {
            Some(stream.duration() as f64 * f64::from(stream.time_base()))
        } else if ictx.duration() > 0 {
            Some(ictx.duration() as f64 / f64::from(ff::ffi::AV_TIME_BASE))
        } else {
            None
        };
        let frames_estimate = if stream.frames() > 0 {
            Some(stream.frames() as u64)
        } else {
            match (duration_seconds, frame_rate) {
                (Some(d), Some((n, den))) => Some((d * f64::from(n) / f64::from(den)).round() as u64),
                _ => None,
            }
        };
        let (_, jpeg_fmt) = strip_jpeg_range(decoder.format());
        let full_range = jpeg_fmt || decoder.color_range() == ff::util::color::Range::JPEG;
        let sar = decoder.aspect_ratio();
        // Frame duration in time-base units, to invent timestamps a container leaves out.
        let frame_duration = match frame_rate {
            Some((n, d)) if time_base.0 > 0 => {
                ((i64::from(d) * i64::from(time_base.1)) / (i64::from(n) * i64::from(time_base.0))).max(1)
            }
            _ => 1,
        };
        // SAFETY: the stream's codec parameters are valid while `ictx` lives; a plain enum read.
        let field_order = unsafe { (*stream.parameters().as_ptr()).field_order };
        let top_field_first = {
            use ff::ffi::AVFieldOrder as F;
            match field_order {
                F::AV_FIELD_TT | F::AV_FIELD_TB => Some(true),
                F::AV_FIELD_BB | F::AV_FIELD_BT => Some(false),
                _ => None,
            }
        };
        let info = VideoInfo {
            stream_index,
            video_streams,
            top_field_first,
            width,
            height,
            time_base,
            frame_rate,
            frames_estimate,
            duration_seconds,
            sample_aspect_ratio: rational(sar),
            source_pixel_format: format!("{:?}", decoder.format()).to_lowercase(),
            full_range,
        };
        Ok(Self {
            path: path.to_path_buf(),
            ictx,
            stream_index,
            decoder,
            scaler: None,
            decoded: ff::frame::Video::empty(),
            converted: ff::frame::Video::empty(),
            info,
            frames_out: 0,
            draining: false,
            luma_only: false,
            finished: false,
            last_pts: None,
            frame_duration,
        })
    }

    /// From now on, fill only the luma plane of the frames read (chroma keeps whatever it
    /// held): for readers that never look at colour, one copy fewer per frame.
    pub fn set_luma_only(&mut self, luma_only: bool) {
        self.luma_only = luma_only;
    }

    /// Facts about the video stream.
    pub fn info(&self) -> &VideoInfo {
        &self.info
    }

    /// Index of the video stream in the container.
    pub fn video_stream_index(&self) -> usize {
        self.stream_index
    }

    /// The opened input, for setting up stream copy.
    pub fn input(&self) -> &ff::format::context::Input {
        &self.ictx
    }

    /// The decoder, for copying colour tags to an encoder.
    pub fn decoder(&self) -> &ff::decoder::Video {
        &self.decoder
    }

    /// Frames returned so far.
    pub fn frames_read(&self) -> u64 {
        self.frames_out
    }

    fn decode_error(&self, reason: impl std::fmt::Display) -> Error {
        Error::Decode { path: self.path.clone(), frames: self.frames_out, reason: reason.to_string() }
    }

    /// Reads the next frame into `out` (reshaping it as needed). Returns `false` at the end.
    /// Packets of other streams are skipped.
    pub fn read_frame(&mut self, out: &mut Frame) -> Result<bool> {
        loop {
            match self.next(out)? {
                ReadEvent::Frame => return Ok(true),
                ReadEvent::Packet(_) => {}
                ReadEvent::End => return Ok(false),
            }
        }
    }

    /// Advances the demuxer/decoder by one event: a decoded frame (written into `out`), a
    /// packet of another stream, or the end.
    pub fn next(&mut self, out: &mut Frame) -> Result<ReadEvent> {
        loop {
            if self.finished {
                return Ok(ReadEvent::End);
            }
            match self.decoder.receive_frame(&mut self.decoded) {
                Ok(()) => {
                    self.convert_into(out)?;
                    self.frames_out += 1;
                    return Ok(ReadEvent::Frame);
                }
                Err(ff::Error::Eof) => {
                    self.finished = true;
                    if self.frames_out == 0 {
                        return Err(self.decode_error("the file holds no decodable video frame"));
                    }
                    return Ok(ReadEvent::End);
                }
                Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => {}
                Err(e) => return Err(self.decode_error(e)),
            }
            if self.draining {
                // The decoder wants no more input and has not said EOF: treat it as the end.
                self.finished = true;
                return Ok(ReadEvent::End);
            }
            let mut packet = ff::Packet::empty();
            match packet.read(&mut self.ictx) {
                Ok(()) => {
                    if packet.stream() != self.stream_index {
                        return Ok(ReadEvent::Packet(packet));
                    }
                    match self.decoder.send_packet(&packet) {
                        Ok(()) => {}
                        // Corrupt packets in the middle of a stream: FFmpeg conceals them, so do we.
                        Err(ff::Error::InvalidData) => {}
                        Err(e) => return Err(self.decode_error(e)),
                    }
                }
                Err(ff::Error::Eof) => {
                    self.decoder.send_eof().map_err(|e| self.decode_error(e))?;
                    self.draining = true;
                }
                Err(e) => return Err(self.decode_error(e)),
            }
        }
    }

    /// Copies (or converts) the decoded frame into `out` as planar 8-bit 4:2:0.
    fn convert_into(&mut self, out: &mut Frame) -> Result<()> {
        let (w, h) = (self.decoded.width() as usize, self.decoded.height() as usize);
        if (w, h) != (self.info.width, self.info.height) {
            return Err(Error::Unsupported(format!(
                "the picture size changes mid-stream ({}x{} to {w}x{h})",
                self.info.width, self.info.height
            )));
        }
        let (fmt, _) = strip_jpeg_range(self.decoded.format());
        out.reshape(w, h);
        // Planar 8-bit formats whose first plane is the luma: a luma-only reader copies it
        // as it is, with no conversion.
        let luma_as_is = self.luma_only
            && matches!(
                fmt,
                Pixel::YUV422P | Pixel::YUV444P | Pixel::YUV440P | Pixel::NV12 | Pixel::NV21 | Pixel::GRAY8
            );
        let src: &ff::frame::Video = if fmt == Pixel::YUV420P || luma_as_is {
            &self.decoded
        } else {
            if self.scaler.is_none() {
                let scaler = ff::software::scaling::Context::get(
                    fmt,
                    w as u32,
                    h as u32,
                    Pixel::YUV420P,
                    w as u32,
                    h as u32,
                    ff::software::scaling::Flags::BICUBIC
                        | ff::software::scaling::Flags::ACCURATE_RND
                        | ff::software::scaling::Flags::FULL_CHR_H_INP,
                )
                .map_err(|e| {
                    Error::Unsupported(format!(
                        "cannot convert pixel format {:?} to yuv420p: {e}",
                        self.decoded.format()
                    ))
                })?;
                self.scaler = Some(Scaler(scaler));
            }
            // The JPEG-range twin has the same bytes; converting from it would rescale luma.
            let fmt_ff: ff::ffi::AVPixelFormat = fmt.into();
            // SAFETY: `decoded` holds a valid AVFrame; we only relabel its pixel format with
            // one of identical memory layout.
            unsafe {
                (*self.decoded.as_mut_ptr()).format = fmt_ff as i32;
            }
            let scaler = self.scaler.as_mut().expect("scaler set above");
            scaler
                .0
                .run(&self.decoded, &mut self.converted)
                .map_err(|e| self.decode_error(format!("pixel format conversion: {e}")))?;
            &self.converted
        };
        out.y.copy_from_strided(src.data(0), src.stride(0));
        if !self.luma_only {
            out.u.copy_from_strided(src.data(1), src.stride(1));
            out.v.copy_from_strided(src.data(2), src.stride(2));
        }
        let pts = self.decoded.timestamp().or(self.decoded.pts());
        let pts = match (pts, self.last_pts) {
            (Some(p), Some(last)) if p <= last => last + 1,
            (Some(p), _) => p,
            (None, Some(last)) => last + self.frame_duration,
            (None, None) => 0,
        };
        self.last_pts = Some(pts);
        out.pts = Some(pts);
        Ok(())
    }
}
