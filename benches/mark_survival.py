#!/usr/bin/env python3
"""How much of the mark a codec keeps, per unit of mark energy: by band coefficient, by the
block's texture, and (with --chroma) in the chroma planes.

Detection per unit of mark decides whether a fainter default mark (issue 13) keeps every
gauntlet cell; scores of single exports vary by +-1.5 with the mark id, so comparing mark
designs by traces needs many exports. This reads the mark itself: the source is cut to
FFV1, marked losslessly (`embed --crf 0 --preset ultrafast --target-psnr P`, so marked -
source is exactly the mark M), the marked copy is re-encoded (libx264 veryfast at each crf
given), and the residual R = copy - source is projected on every 8x8 block's band
coefficients, summed over frames. Per group of (block, coefficient):

  survival   <R, M> / <M, M>: the share of the mark the copy still holds
  noise      rms of R - survival * M per frame
  z          the matched filter's z of that group, <R, M> / sqrt(sum (R M)^2) (Rademacher)
  eff        z^2 over the group's share of the mark's energy: what a unit of mark energy
             moved into the group would add to z^2 (the groups add)

plus the whole mark's z (every block and coefficient, weights = the mark itself): an
oracle that knows the mark exactly, against which the tracer's informed score can be set
(that score is self-normalised over the 256 codeword bits: about Z / sqrt(1 + Z^2 / 256)
for a reading of strength Z on three quarters of the slots).

--chroma adds the same mark, averaged over 2x2 pixels, to Cb (then Cr) of the source
instead of to luma, re-encodes it the same way, and reports the survival and z there.

Native-grid clips only (at most 576 lines: the working grid is the picture). Needs
python3-numpy (apt install python3-numpy) and ffmpeg.

  benches/mark_survival.py CLIP [--seconds 5] [--psnr 48.3] [--crf 38,30] [--chroma] [--tool T]
"""
import argparse
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    sys.exit("mark_survival.py needs numpy: apt install python3-numpy")

BAND = [(0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0)]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def size_of(path):
    out = run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
               "stream=width,height", "-of", "csv=p=0", path], capture_output=True, text=True).stdout
    w, h = out.strip().split(",")[:2]
    return int(w), int(h)


def read_planes(path):
    w, h = size_of(path)
    raw = run(["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt",
               "yuv420p", "-"], capture_output=True).stdout
    fs = w * h * 3 // 2
    n = len(raw) // fs
    a = np.frombuffer(raw, np.uint8)[: n * fs].reshape(n, fs)
    y = a[:, : w * h].reshape(n, h, w).astype(np.float64)
    u = a[:, w * h: w * h + w * h // 4].reshape(n, h // 2, w // 2).astype(np.float64)
    v = a[:, w * h + w * h // 4:].reshape(n, h // 2, w // 2).astype(np.float64)
    return y, u, v


def write_ffv1(path, y, u, v, fps):
    n, h, w = y.shape
    buf = np.concatenate([p.reshape(n, -1) for p in (y, u, v)], axis=1)
    run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s",
         f"{w}x{h}", "-r", fps, "-i", "-", "-c:v", "ffv1", path],
        input=np.clip(np.round(buf), 0, 255).astype(np.uint8).tobytes())


def reencode(src, dst, crf):
    run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", src, "-c:v", "libx264", "-preset",
         "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p", dst])


def basis():
    def c(k):
        return np.sqrt(1 / 8) if k == 0 else np.sqrt(2 / 8)
    x = np.arange(8)
    return np.array([np.outer(c(v) * np.cos((2 * x + 1) * v * np.pi / 16),
                              c(u) * np.cos((2 * x + 1) * u * np.pi / 16)) for v, u in BAND])


def blocks(p):
    n, h, w = p.shape
    h8, w8 = h // 8 * 8, w // 8 * 8
    return p[:, :h8, :w8].reshape(n, h8 // 8, 8, w8 // 8, 8).transpose(0, 1, 3, 2, 4)


def band_sums(p):
    """Band projections of every block, summed over frames: (coefficient, block row, col)."""
    return np.einsum("nijyx,kyx->kij", blocks(p), basis())


def group_stats(r, m, frames, share):
    s = (r * m).sum() / (m * m).sum()
    noise = np.sqrt(((r - s * m) ** 2).mean()) / frames
    z = (r * m).sum() / np.sqrt(((r * m) ** 2).sum())
    return s, noise, z, z * z / share


def report(source_y, mark_y, copy_y):
    n = min(len(source_y), len(mark_y), len(copy_y))
    m = band_sums(mark_y[:n])
    r = band_sums(copy_y[:n] - source_y[:n])
    energy = (m * m).sum()
    print("| group | share of mark energy | survival | noise | z | eff |")
    print("|---|---|---|---|---|---|")
    for k, (v, u) in enumerate(BAND):
        share = (m[k] ** 2).sum() / energy
        s, noise, z, eff = group_stats(r[k], m[k], n, share)
        print(f"| coefficient ({v},{u}) | {share:.3f} | {s:.3f} | {noise:.2f} | {z:.2f} | {eff:.0f} |")
    texture = blocks(source_y[:n]).std(axis=(3, 4)).mean(0)
    edges = np.quantile(texture, np.linspace(0, 1, 9))
    for b in range(8):
        sel = (texture >= edges[b]) & (texture <= edges[b + 1])
        share = (m[:, sel] ** 2).sum() / energy
        if share <= 0:
            continue
        s, noise, z, eff = group_stats(r[:, sel], m[:, sel], n, share)
        print(f"| texture octile {b + 1} (block std {edges[b]:.1f}-{edges[b + 1]:.1f}) | {share:.3f} "
              f"| {s:.3f} | {noise:.2f} | {z:.2f} | {eff:.0f} |")
    z = (r * m).sum() / np.sqrt(((r * m) ** 2).sum())
    print(f"\nwhole mark, oracle z {z:.2f} ({n} frames)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("clip")
    ap.add_argument("--seconds", default="5")
    ap.add_argument("--psnr", default="48.3", help="embed --target-psnr")
    ap.add_argument("--crf", default="38,30", help="libx264 crf values to re-encode at")
    ap.add_argument("--chroma", action="store_true", help="also test the mark in Cb and Cr")
    ap.add_argument("--tool", default=None, help="tracemark binary (default: build target/release)")
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tool = a.tool
    if tool is None:
        run(["cargo", "build", "--release", "--quiet", "-p", "tracemark-cli"], cwd=root)
        tool = os.path.join(root, "target", "release", "tracemark")
    w, h = size_of(a.clip)
    if h > 576:
        sys.exit(f"{a.clip}: {h} lines; the mark is read on the picture itself only up to 576 lines")
    fps = run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
               "stream=r_frame_rate", "-of", "csv=p=0", a.clip], capture_output=True,
              text=True).stdout.strip().split("\n")[0].strip(",")
    with tempfile.TemporaryDirectory() as work:
        src = os.path.join(work, "source.mkv")
        # Even dimensions, as the export has them (the tool crops an odd line).
        run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", a.clip, "-t", a.seconds, "-map", "0:v:0",
             "-vf", f"crop={w // 2 * 2}:{h // 2 * 2}:0:0", "-c:v", "ffv1", src])
        key, reg, marked = (os.path.join(work, f) for f in ("key", "reg.db", "marked.mp4"))
        run([tool, "keygen", "--out", key], stdout=subprocess.DEVNULL)
        run([tool, "embed", "--quiet", "--key", key, "--registry", reg, "--recipient", "r", "--officer", "o",
             "--approved-by", "a", "--crf", "0", "--preset", "ultrafast", "--target-psnr", a.psnr, src,
             marked], stdout=subprocess.DEVNULL)
        sy, su, sv = read_planes(src)
        my = read_planes(marked)[0]
        n = min(len(sy), len(my))
        sy, su, sv, mark = sy[:n], su[:n], sv[:n], my[:n] - sy[:n]
        print(f"{os.path.basename(a.clip)}, first {a.seconds} s ({n} frames), mark alone "
              f"{10 * np.log10(255 ** 2 / (mark ** 2).mean()):.2f} dB PSNR-Y")
        if a.chroma:
            _, hh, ww = mark.shape
            small = mark.reshape(n, hh // 2, 2, ww // 2, 2).mean(axis=(2, 4))
            chroma = np.zeros_like(su)
            chroma[:, : small.shape[1], : small.shape[2]] = np.round(small)
            write_ffv1(os.path.join(work, "cb.mkv"), sy, su + chroma, sv, fps)
            write_ffv1(os.path.join(work, "cr.mkv"), sy, su, sv + chroma, fps)
            print(f"chroma mark (the luma mark averaged 2x2): "
                  f"{10 * np.log10(255 ** 2 / max((chroma ** 2).mean(), 1e-12)):.2f} dB PSNR of its plane")
        for crf in a.crf.split(","):
            copy = os.path.join(work, f"copy{crf}.mp4")
            reencode(marked, copy, crf)
            print(f"\n### libx264 veryfast crf {crf}, luma\n")
            report(sy, mark, read_planes(copy)[0])
            if a.chroma:
                for plane, name, host in ((1, "cb", su), (2, "cr", sv)):
                    out = os.path.join(work, f"{name}{crf}.mp4")
                    reencode(os.path.join(work, f"{name}.mkv"), out, crf)
                    got = read_planes(out)[plane][:n]
                    m = band_sums(chroma)
                    r = band_sums(got - host)
                    s = (r * m).sum() / (m * m).sum()
                    z = (r * m).sum() / np.sqrt(((r * m) ** 2).sum())
                    print(f"{name}: survival {s:.3f}, z {z:.2f} (luma mark of the same energy above)")


if __name__ == "__main__":
    main()
