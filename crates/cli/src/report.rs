//! The HTML evidence report: one self-contained file (inline SVG charts, inline PNG frames)
//! an investigator can hand over.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;
use tracemark_extract::image::Gray;
use tracemark_extract::trace::{Orientation, Registration, TraceResult};

use tracemark_registry::Export;

/// What the report is about.
pub struct ReportInput<'a> {
    pub result: &'a TraceResult,
    pub exports: &'a [Export],
    /// What the registry's verification found, in words (shown at the top).
    pub registry_statement: String,
    /// Whether the registry verified (the statement is shown as a warning otherwise).
    pub registry_verified: bool,
    pub key_fingerprint: String,
    pub leaked: &'a Path,
    pub leaked_sha256: String,
    pub original: Option<(&'a Path, String)>,
    pub registry: &'a Path,
    pub created_at: String,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn png_data_uri(g: &Gray) -> Result<String> {
    let buf = image::GrayImage::from_fn(g.w as u32, g.h as u32, |x, y| {
        image::Luma([g.data[y as usize * g.w + x as usize].round().clamp(0.0, 255.0) as u8])
    });
    let mut png = Vec::new();
    buf.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(format!("data:image/png;base64,{}", base64(&png)))
}

fn scores_chart(r: &TraceResult) -> Result<String> {
    let d = &r.decision;
    let mut svg = String::new();
    {
        let n = d.candidates.len().max(1);
        let height = 80 + 28 * n as u32;
        let root = SVGBackend::with_string(&mut svg, (760, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let max = d.candidates.iter().map(|c| c.score).fold(8.0f64, f64::max) + 1.0;
        let min = d.candidates.iter().map(|c| c.score).fold(-3.0f64, f64::min) - 1.0;
        let mut chart = ChartBuilder::on(&root)
            .caption("Score of every registered export (unit variance if innocent)", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(170)
            .build_cartesian_2d(min..max, -0.5f64..n as f64 - 0.5)?;
        let names: Vec<String> = d.candidates.iter().map(|c| c.recipient.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|y| {
                // Best first, from the top.
                let i = y.round();
                if i >= 0.0 && (i as usize) < names.len() && (y - i).abs() < 0.01 {
                    names[names.len() - 1 - i as usize].chars().take(22).collect()
                } else {
                    String::new()
                }
            })
            .x_desc("score (z)")
            .draw()?;
        let z_needed = tracemark_extract::detect::z_for_tail(r.threshold / n as f64);
        chart.draw_series(d.candidates.iter().enumerate().map(|(i, c)| {
            let color =
                if c.false_positive_probability <= r.threshold { RED } else { RGBColor(90, 110, 160) };
            let row = (n - 1 - i) as f64;
            Rectangle::new([(0.0, row - 0.35), (c.score, row + 0.35)], color.filled())
        }))?;
        chart.draw_series(LineSeries::new(
            [(z_needed, -0.5), (z_needed, n as f64 - 0.5)],
            BLACK.stroke_width(2),
        ))?;
        root.present()?;
    }
    Ok(svg)
}

fn strength_chart(r: &TraceResult) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 260)).into_drawing_area();
        root.fill(&WHITE)?;
        let pts: Vec<(f64, f64)> = r.per_second.iter().map(|s| (s.t, s.pilot_z)).collect();
        let tmax = pts.iter().map(|p| p.0).fold(1.0f64, f64::max) + 1.0;
        let zmax = pts.iter().map(|p| p.1).fold(5.0f64, f64::max) * 1.1;
        let zmin = pts.iter().map(|p| p.1).fold(-3.0f64, f64::min);
        let mut chart = ChartBuilder::on(&root)
            .caption("Detection strength per second of the leaked clip (pilot z)", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(0f64..tmax, zmin..zmax)?;
        chart.configure_mesh().x_desc("leaked time (s)").y_desc("z").draw()?;
        chart.draw_series(LineSeries::new(pts.iter().map(|&(t, z)| (t + 0.5, z)), BLUE.stroke_width(2)))?;
        chart.draw_series(pts.iter().map(|&(t, z)| Circle::new((t + 0.5, z), 3, BLUE.filled())))?;
        root.present()?;
    }
    Ok(svg)
}

/// Renders the report.
/// Rows for the four-eyes chain of a signed approval: who requested, who approved, when,
/// and whether the signatures hold (checked again here, from the stored documents).
fn approval_chain(
    h: &mut String,
    e: &tracemark_registry::ExportRecord,
    registry_verified: bool,
) -> Result<()> {
    use tracemark_registry::{format_utc, officer::short_id, Approval};
    let Some(text) = &e.approval else {
        return Ok(());
    };
    let Ok(a) = Approval::from_file_text(text) else {
        write!(
            h,
            "<tr><th>signatures</th><td><b>DO NOT VERIFY</b>: the stored approval was altered</td></tr>"
        )?;
        return Ok(());
    };
    let (rq, ap) = (&a.request.body, &a.body);
    let rows = [
        (
            "requested by",
            format!(
                "{} (officer key {}) at {}",
                rq.requester_name,
                short_id(&rq.requester_id),
                format_utc(rq.requested_at)
            ),
        ),
        (
            "approved by (signed)",
            format!(
                "{} (officer key {}) at {}",
                ap.approver_name,
                short_id(&ap.approver_id),
                format_utc(ap.approved_at)
            ),
        ),
        ("request valid until", format_utc(rq.expires_at)),
        ("request SHA-256", ap.request_sha256.clone()),
        (
            "signatures",
            if registry_verified {
                "signatures verified (Ed25519 request and approval; roles on the roster checked by the registry's verification)".to_string()
            } else {
                "signatures verified (Ed25519), but the roster could not be checked: the registry failed verification".to_string()
            },
        ),
    ];
    for (k, v) in rows {
        write!(h, "<tr><th>{k}</th><td>{}</td></tr>", esc(&v))?;
    }
    Ok(())
}

pub fn render(inp: &ReportInput<'_>) -> Result<String> {
    let r = inp.result;
    let d = &r.decision;
    let mut h = String::new();
    let verdict_text = match d.verdict {
        tracemark_extract::Verdict::Identified => "IDENTIFIED",
        tracemark_extract::Verdict::Inconclusive => "INCONCLUSIVE",
        tracemark_extract::Verdict::NoMark => "NO MARK FOUND",
    };
    write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>tracemark evidence report</title><style>\
         body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #bbb;padding:4px 8px;text-align:left;font-size:14px}}\
         .v{{font-size:28px;font-weight:bold;padding:.4em .6em;display:inline-block;border:3px solid}}\
         .identified{{color:#a00;border-color:#a00}}.inconclusive{{color:#a60;border-color:#a60}}.no_mark{{color:#060;border-color:#060}}\
         .frames img{{max-width:470px;margin-right:8px;border:1px solid #999}} code{{font-size:13px}}</style></head><body>\
         <h1>tracemark evidence report</h1><p class='v {}'>{}</p>",
        d.verdict.as_str(),
        verdict_text
    )?;
    writeln!(
        h,
        "<p>{} mode, {} frames of the leaked clip analysed. An export is named only when the probability that an \
         innocent export scores as high (over every export in the registry and everything searched) is at most {:.0e}.</p>",
        if r.informed { "Informed (source clip used)" } else { "Blind (no source clip)" },
        r.frames_used,
        r.threshold
    )?;
    if inp.registry_verified {
        write!(h, "<p><b>Registry:</b> {}</p>", esc(&inp.registry_statement))?;
    } else {
        write!(
            h,
            "<p style='color:#a00;border:2px solid #a00;padding:.5em'><b>Warning: {}</b></p>",
            esc(&inp.registry_statement)
        )?;
    }
    h.push_str("<h2>Suspects</h2>");
    if d.suspects.is_empty() {
        h.push_str("<p>None: no export reaches the threshold.</p>");
    }
    for s in &d.suspects {
        let rec = inp.exports.iter().find(|e| e.record.mark_id == s.mark_id.to_string());
        write!(
            h,
            "<table><tr><th>recipient</th><td><b>{}</b></td></tr><tr><th>mark id</th><td><code>{}</code></td></tr>\
             <tr><th>score</th><td>{:.2}</td></tr><tr><th>false-positive probability</th><td>{:.3e}</td></tr>",
            esc(&s.recipient),
            s.mark_id,
            s.score,
            s.false_positive_probability
        )?;
        if let Some(x) = rec {
            let e = &x.record;
            for (k, v) in [
                ("approval", e.approval_kind()),
                ("export status", x.status.as_str()),
                ("exporting officer", e.officer.as_str()),
                ("approved by", e.approved_by.as_str()),
                ("case", e.case_ref.as_deref().unwrap_or("-")),
                ("reason", e.reason.as_deref().unwrap_or("-")),
                ("exported at", e.created_at.as_str()),
                ("source file", e.source_path.as_str()),
                ("source SHA-256", e.source_sha256.as_str()),
                ("exported file SHA-256", e.output_sha256.as_str()),
            ] {
                write!(h, "<tr><th>{k}</th><td>{}</td></tr>", esc(v))?;
            }
            approval_chain(&mut h, e, inp.registry_verified)?;
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>All registered exports</h2>");
    h.push_str(&scores_chart(r)?);
    h.push_str("<p>Bars in red pass the threshold; the black line is the score needed.</p>");
    h.push_str(
        "<table><tr><th>recipient</th><th>mark id</th><th>score</th><th>false-positive probability</th></tr>",
    );
    for c in &d.candidates {
        write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td>{:.2}</td><td>{:.3e}</td></tr>",
            esc(&c.recipient),
            c.mark_id,
            c.score,
            c.false_positive_probability
        )?;
    }
    h.push_str("</table>");
    h.push_str("<h2>Detection over time</h2>");
    if r.per_second.is_empty() {
        h.push_str("<p>Not available in blind mode (the frames are pooled before the search).</p>");
    } else {
        h.push_str(&strength_chart(r)?);
    }
    h.push_str("<h2>Registration</h2><table>");
    match &r.registration {
        Registration::Informed { geometry, homography, mirrored, rotation_deg, time_offset_s, ncc } => write!(
            h,
            "<tr><th>source scale in the leaked picture</th><td>{:.4} x {:.4}</td></tr>\
             <tr><th>source origin in the leaked picture</th><td>({:.1}, {:.1}) px</td></tr>\
             <tr><th>mirrored</th><td>{}</td></tr>\
             <tr><th>rotation</th><td>{:+.2}&deg;</td></tr>\
             <tr><th>source &rarr; leaked homography</th><td><code>{}</code></td></tr>\
             <tr><th>leaked time + offset = source time</th><td>{:+.3} s</td></tr>\
             <tr><th>match (normalised cross-correlation)</th><td>{:.4}</td></tr>",
            geometry.sx.abs(),
            geometry.sy.abs(),
            geometry.tx,
            geometry.ty,
            if *mirrored { "yes" } else { "no" },
            rotation_deg,
            homography.0.map(|v| format!("{v:.6}")).join(" "),
            time_offset_s,
            ncc
        )?,
        Registration::Blind {
            scale,
            analysis_factor,
            shift,
            hypotheses,
            rotation_deg,
            stretch,
            window,
            ..
        } => write!(
            h,
            "<tr><th>mark scale</th><td>{:.4} (analysis grid {:.3} leaked px per px)</td></tr>\
             <tr><th>read from</th><td>{}</td></tr>\
             <tr><th>orientation</th><td>{}</td></tr>\
             <tr><th>rotation, stretch</th><td>{:.2}&deg;, {:.3}</td></tr>\
             <tr><th>tile shift</th><td>({:.2}, {:.2})</td></tr><tr><th>geometries searched</th><td>{:.0}</td></tr>",
            scale,
            analysis_factor,
            match window {
                None => "the whole picture".to_string(),
                Some([x, y, w, h]) => format!("a window of {w:.0}x{h:.0} px at ({x:.0}, {y:.0}) (picture-in-picture)"),
            },
            match r.registration.orientation() {
                None | Some(Orientation::AsMarked) => "as marked",
                Some(Orientation::MirroredLeftRight) => "mirrored left-right",
                Some(Orientation::UpsideDown) => "flipped upside down",
                Some(Orientation::HalfTurn) => "turned half a turn",
                Some(Orientation::QuarterTurnClockwise) => "turned a quarter clockwise",
                Some(Orientation::QuarterTurnCounterClockwise) => "turned a quarter counter-clockwise",
                Some(Orientation::Transposed) => "mirrored about the main diagonal",
                Some(Orientation::AntiTransposed) => "mirrored about the other diagonal",
            },
            rotation_deg,
            stretch,
            shift.0,
            shift.1,
            hypotheses
        )?,
    }
    write!(
        h,
        "<tr><th>pilot statistic</th><td>z = {:.2} (probability without a mark of this key {:.2e})</td></tr></table>",
        d.pilot_z, d.pilot_p
    )?;
    if let Some((leak, src)) = &r.example_frames {
        write!(
            h,
            "<div class=frames><p>Leaked frame mapped onto the source grid (left) and the source frame (right):</p>\
             <img alt='leaked frame, registered' src='{}'><img alt='source frame' src='{}'></div>",
            png_data_uri(leak)?,
            png_data_uri(src)?
        )?;
    }
    h.push_str("<h2>Provenance</h2><table>");
    let mut rows = vec![
        ("leaked file", inp.leaked.display().to_string()),
        ("leaked SHA-256", inp.leaked_sha256.clone()),
    ];
    if let Some((p, sha)) = &inp.original {
        rows.push(("source file", p.display().to_string()));
        rows.push(("source SHA-256", sha.clone()));
    }
    rows.extend([
        ("registry", inp.registry.display().to_string()),
        ("key fingerprint", inp.key_fingerprint.clone()),
        ("tool", format!("tracemark {}", env!("CARGO_PKG_VERSION"))),
        ("report created", inp.created_at.clone()),
    ]);
    for (k, v) in rows {
        write!(h, "<tr><th>{k}</th><td><code>{}</code></td></tr>", esc(&v))?;
    }
    h.push_str("</table></body></html>\n");
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
