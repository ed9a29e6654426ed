//! Encoding: libx264 into the container the output name asks for, with the source's
//! timestamps, aspect ratio, colour tags and rotation, and other streams copied.

use std::path::Path;

use ff::format::Pixel;
use ffmpeg_next as ff;

use super::reader::VideoReader;
use crate::frame::Frame;
use crate::{Error, Result};

/// What to do with a picture whose width or height is odd (libx264 4:2:0 needs even sizes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OddDimensions {
    /// Drop the last column/row (what the plain `ffmpeg` reference transcode does too).
    #[default]
    Crop,
    /// Repeat the last column/row, so no source pixel is lost.
    Pad,
    /// Refuse the input with [`Error::Unsupported`].
    Refuse,
}

/// Encoder settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodeSettings {
    /// x264 constant rate factor, 0 (lossless) to 51.
    pub crf: u8,
    /// x264 preset name (`ultrafast` … `placebo`).
    pub preset: String,
    /// Encoder threads; 0 lets x264 choose.
    pub threads: usize,
    /// Policy for odd picture sizes.
    pub odd_dimensions: OddDimensions,
}

impl Default for EncodeSettings {
    fn default() -> Self {
        Self { crf: 18, preset: "medium".into(), threads: 0, odd_dimensions: OddDimensions::Crop }
    }
}

/// The x264 presets, fastest first.
pub const X264_PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];

impl EncodeSettings {
    /// Checks ranges and names.
    pub fn validate(&self) -> Result<()> {
        if self.crf > 51 {
            return Err(Error::InvalidConfig {
                setting: "crf",
                reason: format!("crf {} is out of range 0..=51", self.crf),
            });
        }
        if !X264_PRESETS.contains(&self.preset.as_str()) {
            return Err(Error::InvalidConfig {
                setting: "preset",
                reason: format!(
                    "unknown x264 preset {:?}; use one of {}",
                    self.preset,
                    X264_PRESETS.join(", ")
                ),
            });
        }
        Ok(())
    }
}

/// Output picture size for a source size under a policy.
pub fn output_size(width: usize, height: usize, policy: OddDimensions) -> Result<(usize, usize)> {
    let fix = |v: usize| match policy {
        OddDimensions::Crop => Ok(v & !1),
        OddDimensions::Pad => Ok((v + 1) & !1),
        OddDimensions::Refuse if v % 2 == 1 => Err(Error::Unsupported(format!(
            "picture size {width}x{height} is odd and odd sizes are refused by configuration"
        ))),
        OddDimensions::Refuse => Ok(v),
    };
    let (w, h) = (fix(width)?, fix(height)?);
    if w < 2 || h < 2 {
        return Err(Error::Unsupported(format!("picture size {width}x{height} is too small")));
    }
    Ok((w, h))
}

/// Writes H.264 video plus copied streams.
pub struct VideoWriter {
    octx: ff::format::context::Output,
    encoder: ff::encoder::Video,
    ost_index: usize,
    enc_time_base: ff::Rational,
    /// Nominal frame duration in the encoder time base (0 if unknown).
    frame_duration: i64,
    /// Input stream index -> (output stream index, input time base) for copied streams.
    copy_map: Vec<Option<(usize, ff::Rational)>>,
    av_frame: ff::frame::Video,
    width: usize,
    height: usize,
    frames_written: u64,
    skipped_streams: Vec<String>,
}

fn enc_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Encode(format!("{what}: {e}"))
}

impl VideoWriter {
    /// Creates the output file at `path` (container chosen from its extension) for the
    /// video of `reader`, copying its audio and subtitle streams where the container allows.
    pub fn create(path: &Path, reader: &VideoReader, settings: &EncodeSettings) -> Result<Self> {
        settings.validate()?;
        let info = reader.info();
        let (width, height) = output_size(info.width, info.height, settings.odd_dimensions)?;
        // ffmpeg-next unwraps the UTF-8 conversion of the path: check first.
        if path.to_str().is_none() {
            return Err(Error::NonUtf8Path(path.to_path_buf()));
        }
        let mut octx = ff::format::output(&path).map_err(|e| enc_err("cannot create output", e))?;
        let codec = ff::encoder::find_by_name("libx264").ok_or(Error::EncoderUnavailable("libx264"))?;
        let global_header = octx.format().flags().contains(ff::format::Flags::GLOBAL_HEADER);
        let input = reader.input();
        let ist = input.stream(reader.video_stream_index()).expect("video stream exists");
        let in_tb = ist.time_base();

        let mut ctx = ff::codec::context::Context::new_with_codec(codec);
        if settings.threads > 0 {
            ctx.set_threading(ff::threading::Config {
                kind: ff::threading::Type::Frame,
                count: settings.threads,
                ..Default::default()
            });
        }
        let mut enc = ctx.encoder().video().map_err(|e| enc_err("encoder setup", e))?;
        enc.set_width(width as u32);
        enc.set_height(height as u32);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(in_tb);
        if let Some((n, d)) = info.frame_rate {
            enc.set_frame_rate(Some(ff::Rational::new(n, d)));
        }
        let (sn, sd) = info.sample_aspect_ratio;
        if sn > 0 && sd > 0 {
            enc.set_aspect_ratio(ff::Rational::new(sn, sd));
        }
        let dec = reader.decoder();
        enc.set_colorspace(dec.color_space());
        enc.set_color_range(if info.full_range { ff::util::color::Range::JPEG } else { dec.color_range() });
        // SAFETY: both pointers are valid codec contexts owned by live wrappers; we copy
        // plain enum fields the safe wrapper has no setter for.
        unsafe {
            let d = dec.as_ptr();
            let e = enc.as_mut_ptr();
            (*e).color_primaries = (*d).color_primaries;
            (*e).color_trc = (*d).color_trc;
            (*e).chroma_sample_location = (*d).chroma_sample_location;
        }
        let mut flags = ff::codec::Flags::empty();
        if global_header {
            flags |= ff::codec::Flags::GLOBAL_HEADER;
        }
        // Interlaced sources stay interlaced (field order kept): libx264 codes fields.
        if info.top_field_first.is_some() {
            flags |= ff::codec::Flags::INTERLACED_DCT | ff::codec::Flags::INTERLACED_ME;
        }
        enc.set_flags(flags);
        // SAFETY: the input stream's codec parameters and the encoder context are valid;
        // a plain enum field is copied.
        unsafe {
            (*enc.as_mut_ptr()).field_order = (*ist.parameters().as_ptr()).field_order;
        }
        let mut opts = ff::Dictionary::new();
        opts.set("crf", &settings.crf.to_string());
        opts.set("preset", &settings.preset);
        let encoder = enc.open_as_with(codec, opts).map_err(|e| enc_err("cannot open libx264", e))?;

        let mut ost = octx.add_stream(codec).map_err(|e| enc_err("add video stream", e))?;
        let ost_index = ost.index();
        ost.set_parameters(&encoder);
        ost.set_time_base(in_tb);
        ost.set_metadata(ist.metadata().to_owned());
        // SAFETY: both streams are valid for the lifetime of their contexts. We copy the
        // stream side data (display matrix = rotation, etc.) byte for byte and reset the
        // codec tag so the muxer picks its own.
        unsafe {
            let src = ist.as_ptr();
            let dst = ost.as_mut_ptr();
            (*(*dst).codecpar).codec_tag = 0;
            (*dst).sample_aspect_ratio = (*(*dst).codecpar).sample_aspect_ratio;
            for i in 0..(*src).nb_side_data.max(0) as isize {
                let sd = &*(*src).side_data.offset(i);
                let buf = ff::ffi::av_stream_new_side_data(dst, sd.type_, sd.size);
                if !buf.is_null() {
                    std::ptr::copy_nonoverlapping(sd.data, buf, sd.size);
                }
            }
        }

        let mut copy_map = vec![None; input.nb_streams() as usize];
        let mut skipped_streams = Vec::new();
        for ist in input.streams() {
            let medium = ist.parameters().medium();
            if ist.index() == reader.video_stream_index()
                || !matches!(medium, ff::media::Type::Audio | ff::media::Type::Subtitle)
            {
                continue;
            }
            let codec_id = ist.parameters().id();
            // SAFETY: the output format pointer is valid while `octx` lives.
            let supported = unsafe {
                ff::ffi::avformat_query_codec(
                    (*octx.as_ptr()).oformat,
                    codec_id.into(),
                    ff::ffi::FF_COMPLIANCE_NORMAL,
                ) == 1
            };
            if !supported {
                skipped_streams.push(format!("stream {} ({:?} {:?})", ist.index(), medium, codec_id));
                continue;
            }
            let mut ost = octx
                .add_stream(ff::encoder::find(ff::codec::Id::None))
                .map_err(|e| enc_err("add copied stream", e))?;
            ost.set_parameters(ist.parameters());
            ost.set_metadata(ist.metadata().to_owned());
            // SAFETY: the stream's codec parameters are valid; a copied stream needs the
            // container to choose its own tag.
            unsafe {
                (*(*ost.as_mut_ptr()).codecpar).codec_tag = 0;
            }
            copy_map[ist.index()] = Some((ost.index(), ist.time_base()));
        }
        octx.set_metadata(input.metadata().to_owned());
        // MP4/MOV carry the colour range (and tags) in a `colr` box only when asked to; it
        // is asked for whenever the source says anything, so `tv`/`pc` is not lost.
        let mut header_opts = ff::Dictionary::new();
        let is_mov = {
            let format = octx.format();
            format
                .name()
                .split(',')
                .any(|n| matches!(n, "mp4" | "mov" | "ipod" | "3gp" | "3g2" | "ismv" | "f4v"))
        };
        // SAFETY: the encoder context is valid; plain enum reads.
        let tagged = unsafe {
            let e = encoder.as_ptr();
            (*e).color_range != ff::ffi::AVColorRange::AVCOL_RANGE_UNSPECIFIED
                || (*e).color_primaries != ff::ffi::AVColorPrimaries::AVCOL_PRI_UNSPECIFIED
                || (*e).color_trc != ff::ffi::AVColorTransferCharacteristic::AVCOL_TRC_UNSPECIFIED
                || (*e).colorspace != ff::ffi::AVColorSpace::AVCOL_SPC_UNSPECIFIED
        };
        if is_mov && tagged {
            header_opts.set("movflags", "+write_colr");
        }
        octx.write_header_with(header_opts).map_err(|e| enc_err("cannot write the container header", e))?;
        let mut av_frame = ff::frame::Video::new(Pixel::YUV420P, width as u32, height as u32);
        if let Some(tff) = info.top_field_first {
            // SAFETY: `av_frame` is a valid AVFrame we own; plain integer fields.
            unsafe {
                (*av_frame.as_mut_ptr()).interlaced_frame = 1;
                (*av_frame.as_mut_ptr()).top_field_first = i32::from(tff);
            }
        }
        Ok(Self {
            octx,
            encoder,
            ost_index,
            enc_time_base: in_tb,
            frame_duration: info.frame_rate.filter(|&(n, d)| n > 0 && d > 0).map_or(0, |(n, d)| {
                let (tn, td) = (i64::from(in_tb.numerator()), i64::from(in_tb.denominator()));
                (i64::from(d) * td / (i64::from(n) * tn)).max(1)
            }),
            copy_map,
            av_frame,
            width,
            height,
            frames_written: 0,
            skipped_streams,
        })
    }

    /// Output picture size (after the odd-size policy).
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Streams that could not be copied into this container.
    pub fn skipped_streams(&self) -> &[String] {
        &self.skipped_streams
    }

    /// Encodes one frame. Odd sizes are cropped or padded here, per the policy.
    pub fn write_frame(&mut self, frame: &Frame) -> Result<()> {
        // SAFETY: `av_frame` is a valid, refcounted AVFrame. If the encoder still holds a
        // reference to its buffer, this gives us a private copy to write into.
        if unsafe { ff::ffi::av_frame_make_writable(self.av_frame.as_mut_ptr()) } < 0 {
            return Err(Error::Encode("out of memory for a frame buffer".into()));
        }
        for (i, plane) in [&frame.y, &frame.u, &frame.v].into_iter().enumerate() {
            let (dw, dh) = if i == 0 { (self.width, self.height) } else { (self.width / 2, self.height / 2) };
            let stride = self.av_frame.stride(i);
            let dst = self.av_frame.data_mut(i);
            for y in 0..dh {
                let src_row = plane.row(y.min(plane.height() - 1));
                let dst_row = &mut dst[y * stride..y * stride + dw];
                let n = dw.min(src_row.len());
                dst_row[..n].copy_from_slice(&src_row[..n]);
                if n < dw {
                    let last = src_row[n - 1];
                    dst_row[n..].fill(last);
                }
            }
        }
        self.av_frame.set_pts(frame.pts);
        self.encoder.send_frame(&self.av_frame).map_err(|e| enc_err("libx264", e))?;
        self.frames_written += 1;
        self.drain()
    }

    /// Writes a packet of another stream (stream copy); packets of streams not copied are dropped.
    pub fn write_packet(&mut self, mut packet: ff::Packet) -> Result<()> {
        let Some(Some((out_idx, in_tb))) = self.copy_map.get(packet.stream()).copied() else {
            return Ok(());
        };
        let out_tb = self.octx.stream(out_idx).expect("copied stream exists").time_base();
        packet.rescale_ts(in_tb, out_tb);
        packet.set_position(-1);
        packet.set_stream(out_idx);
        packet.write_interleaved(&mut self.octx).map_err(|e| enc_err("muxing a copied packet", e))
    }

    fn drain(&mut self) -> Result<()> {
        let out_tb = self.octx.stream(self.ost_index).expect("video stream exists").time_base();
        let mut packet = ff::Packet::empty();
        loop {
            match self.encoder.receive_packet(&mut packet) {
                Ok(()) => {
                    // Without a duration the muxer's edit list ends at the last frame's
                    // start and players drop that frame.
                    if packet.duration() <= 0 && self.frame_duration > 0 {
                        packet.set_duration(self.frame_duration);
                    }
                    packet.set_stream(self.ost_index);
                    packet.rescale_ts(self.enc_time_base, out_tb);
                    packet.write_interleaved(&mut self.octx).map_err(|e| enc_err("muxing video", e))?;
                }
                Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => return Ok(()),
                Err(ff::Error::Eof) => return Ok(()),
                Err(e) => return Err(enc_err("libx264", e)),
            }
        }
    }

    /// Flushes the encoder and writes the trailer. Returns the number of frames encoded.
    pub fn finish(mut self) -> Result<u64> {
        self.encoder.send_eof().map_err(|e| enc_err("libx264 flush", e))?;
        self.drain()?;
        self.octx.write_trailer().map_err(|e| enc_err("cannot write the container trailer", e))?;
        Ok(self.frames_written)
    }
}
