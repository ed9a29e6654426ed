//! Reading the mark: every registered pair warped, tone-fitted and subtracted, its
//! residual accumulated into slot sums.

use super::*;

/// What one registration hypothesis read from the clip: sums per mark layout read
/// ([`Informed::schemes`]), in total and per second.
pub(super) struct Reading {
    pub(super) sums: Vec<SlotSums>,
    pub(super) per_second: Vec<(f64, Vec<SlotSums>)>,
    pub(super) example: Option<(Gray, Gray)>,
    pub(super) geometry: Homography,
    pub(super) refined_ncc: Option<f64>,
    pub(super) offset: f64,
}

/// Everything an informed reading needs besides the hypothesis.
pub(super) struct Informed<'a> {
    pub(super) detector: &'a Detector,
    pub(super) src: &'a Clip,
    pub(super) leak: &'a Clip,
    /// Source pixels per thumbnail pixel.
    pub(super) factor: f64,
    pub(super) grid: Grid,
    pub(super) source: &'a Path,
    pub(super) leaked: &'a Path,
    /// The leaked frame kept for the report.
    pub(super) mid: usize,
    /// The mark layouts to read, each into its own sums.
    pub(super) schemes: &'a [Scheme],
}

impl Reading {
    /// Index of the layout whose pilot is strongest.
    pub(super) fn strongest(&self, detector: &Detector) -> usize {
        (0..self.sums.len())
            .max_by(|&a, &b| detector.pilot_z(&self.sums[a]).total_cmp(&detector.pilot_z(&self.sums[b])))
            .unwrap_or(0)
    }

    /// The strongest pilot over the layouts read.
    pub(super) fn pilot_z(&self, detector: &Detector) -> f64 {
        detector.pilot_z(&self.sums[self.strongest(detector)])
    }
}

impl Informed<'_> {
    /// For each leaked frame, the source frame it shows under the thumbnail geometry
    /// `g_thumb` (`None` when none fits), and the time offset at the leaked clip's first
    /// frame (leaked + offset = source).
    pub(super) fn align_in_time(&self, g_thumb: &Homography) -> (Vec<Option<usize>>, f64) {
        let (src, leak) = (self.src, self.leak);
        let index = TimeIndex::new(src, leak, g_thumb);
        let best_match = |k: usize, range: std::ops::Range<usize>| {
            range.map(|a| (index.ncc(a, k), a)).reduce(|x, y| if y.0 > x.0 { y } else { x }).map(|(_, a)| a)
        };
        let frame_dt = if src.times.len() > 1 {
            (src.times[src.times.len() - 1] - src.times[0]) / (src.times.len() - 1) as f64
        } else {
            0.04
        };
        let probe: Vec<usize> = (0..leak.thumbs.len()).step_by((leak.thumbs.len() / 24).max(1)).collect();
        let probes: Vec<(f64, f64)> = probe
            .par_iter()
            .map(|&k| (leak.times[k], src.times[best_match(k, 0..src.thumbs.len()).unwrap_or(0)]))
            .collect();
        // A sped-up copy or a slow-motion replay drifts out of any constant offset's window
        // within a second or two.
        let map = fit_time_map(&probes, 1.5 * frame_dt);
        let matches = (0..leak.thumbs.len())
            .into_par_iter()
            .map(|k| {
                let t = map.source_time(leak.times[k]);
                let lo = src.times.partition_point(|&s| s < t - 2.5 * frame_dt);
                let hi = src.times.partition_point(|&s| s <= t + 2.5 * frame_dt);
                best_match(k, lo..hi)
            })
            .collect();
        let first = leak.times.first().copied().unwrap_or(0.0);
        (matches, map.source_time(first) - first)
    }

    /// Aligns time under the thumbnail geometry `g_thumb`, refines the geometry on the first
    /// matched pair at reading resolution, subtracts the registered source from every
    /// leaked frame and accumulates.
    pub(super) fn read(
        &self,
        g_thumb: &Homography,
        progress: &mut ProgressFn<'_>,
        done: &mut u64,
        total: Option<u64>,
    ) -> Result<Reading> {
        let (matches, offset) = self.align_in_time(g_thumb);
        let grid = &self.grid;
        let mut geometry = g_thumb.rescaled(1.0 / self.factor, 1.0 / self.factor);
        let mut refined_ncc = None;
        let (sx, sy) = geometry.local_scale(self.src.info.width as f64, self.src.info.height as f64);
        let leak_factor = reading_factor(sx, sy, grid);
        let leak_size = thumb_size(self.leak.info.width, self.leak.info.height, leak_factor);
        let src_size = (grid.work_w, grid.work_h);
        let mut src_frames = Frames::new(self.src, self.source, src_size)?;
        let mut leak_frames = Frames::new(self.leak, self.leaked, leak_size)?;
        let batch_len = if src_frames.is_stored() && leak_frames.is_stored() {
            64
        } else {
            2 * rayon::current_num_threads()
        };
        let fresh = || vec![SlotSums::default(); self.schemes.len()];
        let mut sums = fresh();
        let mut per_second: Vec<(f64, Vec<SlotSums>)> = Vec::new();
        let mut example = None;
        let mut batch: Vec<PairToRead<'_>> = Vec::with_capacity(batch_len);
        // Made once the geometry is refined, on the first matched pair.
        let mut warp: Option<PairWarp> = None;
        let mut merge = |batch: &mut Vec<PairToRead<'_>>, warp: &Option<PairWarp>| {
            let Some(warp) = warp else { return };
            for (k, fs, ex) in read_pairs(self.detector, warp, batch, self.mid) {
                let sec = self.leak.times[k].floor();
                if per_second.last().is_none_or(|p| p.0 != sec) {
                    per_second.push((sec, fresh()));
                }
                let second = &mut per_second.last_mut().expect("pushed above").1;
                for ((total, s), f) in sums.iter_mut().zip(second.iter_mut()).zip(&fs) {
                    total.merge(f);
                    s.merge(f);
                }
                if ex.is_some() {
                    example = ex;
                }
            }
            batch.clear();
        };
        for (k, m) in matches.iter().enumerate() {
            let Some(leak_pic) = leak_frames.get(k)? else { break };
            *done += 1;
            tick(progress, *done, total)?;
            let Some(src_pic) = (match *m {
                Some(m) => src_frames.get(m)?,
                None => None,
            }) else {
                continue;
            };
            if refined_ncc.is_none() {
                let g_work = geometry.rescaled(grid.scale, leak_factor);
                let (src_g, leak_g) = (src_pic.to_gray(src_size), leak_pic.to_gray(leak_size));
                let (g, v) = refine_work(&src_g, &leak_g, &g_work);
                geometry = g.rescaled(1.0 / grid.scale, 1.0 / leak_factor);
                warp = Some(PairWarp::new(src_size, leak_size, &g, &src_g, &leak_g));
                refined_ncc = Some(v);
            }
            // Where each layout's tile sits on the source's working grid in this frame.
            let motion = m.and_then(|m| self.src.motion.get(m).copied()).unwrap_or_default();
            let offsets = self
                .schemes
                .iter()
                .map(|s| s.tile_offset(grid, displacement_by(&motion, s.tracking())))
                .collect();
            batch.push(PairToRead { k, src: src_pic, leak: leak_pic, offsets });
            if batch.len() == batch_len {
                merge(&mut batch, &warp);
            }
        }
        merge(&mut batch, &warp);
        Ok(Reading { sums, per_second, example, geometry, refined_ncc, offset })
    }
}

/// Scratch of one worker reading registered pairs.
pub(super) struct PairScratch {
    pub(super) src: Gray,
    pub(super) leak: Gray,
    /// The source as the leaked pixels show it, and the buffers that make it.
    pub(super) seen: Gray,
    pub(super) on_leak: Gray,
    pub(super) between: Vec<f32>,
    pub(super) warped: Gray,
    pub(super) resid: Vec<f32>,
    /// The source after the tone curve, which the channel is fitted on.
    pub(super) toned: Vec<f32>,
    pub(super) detect: DetectScratch,
}

/// A registered pair waiting to be read: leaked frame `k`, the source frame it shows, and
/// the tile's offset on the source's working grid for each layout read.
pub(super) struct PairToRead<'a> {
    pub(super) k: usize,
    pub(super) src: Pic<'a>,
    pub(super) leak: Pic<'a>,
    pub(super) offsets: Vec<(f64, f64)>,
}

/// One leaked frame's sums (one per layout), with the registered pair when it is the one
/// kept for the report.
pub(super) type PairSums = (usize, Vec<SlotSums>, Option<(Gray, Gray)>);

/// Reads a batch of (source, leaked) pairs in parallel under `warp`: each pair's slot sums, and for frame `keep` the registered pair
/// itself (for the report).
pub(super) fn read_pairs(
    detector: &Detector,
    warp: &PairWarp,
    pairs: &[PairToRead<'_>],
    keep: usize,
) -> Vec<PairSums> {
    let ((w, h), leak_size) = (warp.src_size, warp.leak_size);
    let view = &warp.view;
    pairs
        .par_iter()
        .map_init(
            || PairScratch {
                src: Gray::new(w, h),
                leak: Gray::new(leak_size.0, leak_size.1),
                seen: Gray::new(w, h),
                on_leak: view.as_ref().map_or_else(|| Gray::new(0, 0), |v| Gray::new(v.size.0, v.size.1)),
                between: view.as_ref().map_or_else(Vec::new, |v| vec![0f32; h * v.size.0]),
                warped: Gray::new(w, h),
                resid: vec![0f32; w * h],
                toned: vec![0f32; w * h],
                detect: DetectScratch::default(),
            },
            |s, PairToRead { k, src, leak, offsets }| {
                src.load(&mut s.src);
                leak.load(&mut s.leak);
                let compared = match view {
                    Some(v) => {
                        v.apply(&s.src, &mut s.between, &mut s.on_leak, &mut s.seen);
                        &s.seen
                    }
                    None => &s.src,
                };
                warp_and_fit(compared, &s.leak, warp, &mut s.warped, &mut s.resid, &mut s.toned);
                // The mask is the embedder's: computed from the source itself.
                let fs = offsets
                    .iter()
                    .map(|&offset| {
                        let mut fs = SlotSums::default();
                        detector.accumulate_moved(
                            &s.resid,
                            &s.src.data,
                            w,
                            h,
                            offset,
                            &mut fs,
                            &mut s.detect,
                        );
                        detector.end_frame(&mut fs);
                        fs
                    })
                    .collect();
                (*k, fs, (*k == keep).then(|| (s.warped.clone(), s.src.clone())))
            },
        )
        .collect()
}

/// Warps `leak` onto the grid of `src` under `taps` into `warped` (zero where the leaked
/// picture does not cover the source), fits a tone curve (leaked level as a function of
/// source level: brightness, contrast, gamma) and then, region by region, the copy's
/// channel ([`Channel`]) from the tone-fitted source (kept in `toned`) to the leaked
/// picture, and writes leaked minus the source through both into `resid` (zero where the
/// source is not visible).
pub(super) fn warp_and_fit(
    src: &Gray,
    leak: &Gray,
    pw: &PairWarp,
    warped: &mut Gray,
    resid: &mut [f32],
    toned: &mut [f32],
) {
    let (xr, yr) = (pw.warp.x_range(), pw.warp.y_range());
    warped.data.fill(0.0);
    resid.fill(0.0);
    if xr.is_empty() || yr.is_empty() {
        return;
    }
    match &pw.warp {
        Warp::Axis(taps) => {
            for j in yr.clone() {
                let (y0, y1, fy) = taps.rows[j];
                let (r0, r1) = (&leak.data[y0 * leak.w..][..leak.w], &leak.data[y1 * leak.w..][..leak.w]);
                let out = &mut warped.data[j * src.w..][xr.clone()];
                for (o, &(x0, x1, fx)) in out.iter_mut().zip(&taps.cols[xr.clone()]) {
                    *o = register::bilinear(r0, r1, x0, x1, fx, fy);
                }
            }
        }
        Warp::Projective(map) => {
            for j in yr.clone() {
                for i in xr.clone() {
                    let p = j * src.w + i;
                    warped.data[p] = map.sample_at(&leak.data, p).unwrap_or(0.0);
                }
            }
        }
    }
    let usable = &pw.usable;
    // Tone curve: mean leaked level per source level. Four interleaved histograms, so
    // that neighbouring pixels of one level do not wait on each other's sums.
    let mut sum = [[0f64; 256]; 4];
    let mut cnt = [[0u32; 256]; 4];
    // Levels first, a row at a time (this pass vectorises), then the scattered sums.
    let mut levels = [0u8; 4096];
    for j in yr.clone() {
        let s_row = &src.data[j * src.w..][xr.clone()];
        let w_row = &warped.data[j * src.w..][xr.clone()];
        let u_row = &usable[j * src.w..][xr.clone()];
        for start in (0..s_row.len()).step_by(levels.len()) {
            let end = (start + levels.len()).min(s_row.len());
            let lv = &mut levels[..end - start];
            for (l, &s) in lv.iter_mut().zip(&s_row[start..end]) {
                *l = (s.clamp(0.0, 255.0) + 0.5) as u8;
            }
            for (n, ((&b, &v), &u)) in lv.iter().zip(&w_row[start..end]).zip(&u_row[start..end]).enumerate() {
                if u {
                    let (lane, b) = ((start + n) & 3, usize::from(b));
                    sum[lane][b] += f64::from(v);
                    cnt[lane][b] += 1;
                }
            }
        }
    }
    let mut lut = [f64::NAN; 256];
    for b in 0..256 {
        let c: u32 = cnt.iter().map(|c| c[b]).sum();
        if c >= 3 {
            lut[b] = sum.iter().map(|s| s[b]).sum::<f64>() / f64::from(c);
        }
    }
    let mut known = [0usize; 256];
    let mut n_known = 0;
    for b in (0..256).filter(|&b| !lut[b].is_nan()) {
        known[n_known] = b;
        n_known += 1;
    }
    let known = &known[..n_known];
    if known.is_empty() {
        return;
    }
    for b in 0..256 {
        if lut[b].is_nan() {
            let hi = known.iter().position(|&k| k > b);
            lut[b] = match hi {
                Some(0) => lut[known[0]] + (b as f64 - known[0] as f64),
                None => lut[*known.last().unwrap()] + (b as f64 - *known.last().unwrap() as f64),
                Some(p) => {
                    let (a, c) = (known[p - 1], known[p]);
                    lut[a] + (lut[c] - lut[a]) * (b - a) as f64 / (c - a) as f64
                }
            };
        }
    }
    let mut smooth = [0f64; 256];
    for (b, out) in smooth.iter_mut().enumerate() {
        let window = &lut[b.saturating_sub(3)..(b + 4).min(256)];
        *out = window.iter().sum::<f64>() / window.len() as f64;
    }
    let fit: [f32; 256] = std::array::from_fn(|b| smooth[b] as f32);
    let tone = |s: f32| {
        let s = s.clamp(0.0, 255.0);
        let b0 = (s as usize).min(254);
        fit[b0] + (fit[b0 + 1] - fit[b0]) * (s - b0 as f32)
    };
    // Only where the channel will read.
    let cols_read = reach(&xr, src.w);
    for j in reach(&yr, src.h) {
        let at = j * src.w;
        for (t, &s) in toned[at..][cols_read.clone()].iter_mut().zip(&src.data[at..][cols_read.clone()]) {
            *t = tone(s);
        }
    }
    // The codec's blur changes across the picture with its quantiser: one channel per
    // tile-sized region (city at crf 38, eight exports at 48.3 dB: mean score 5.43 with
    // the tone curve alone, 5.75 with one channel for the picture, 6.14 per region).
    for rows in regions(yr) {
        for cols in regions(xr.clone()) {
            let ch = Channel::fit(toned, &warped.data, usable, src.w, src.h, rows.clone(), cols.clone());
            for j in rows.clone() {
                let at = j * src.w;
                ch.apply_row(toned, src.w, src.h, j, cols.clone(), &mut resid[at..][cols.clone()]);
                for ((r, &v), &u) in resid[at..][cols.clone()]
                    .iter_mut()
                    .zip(&warped.data[at..][cols.clone()])
                    .zip(&usable[at..][cols.clone()])
                {
                    *r = if u { v - *r } else { 0.0 };
                }
            }
        }
    }
}
