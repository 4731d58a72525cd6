"""What a run leaves behind: PNG images, a visual report drawn with PIL only, and ``report.json``.

- `save_images` writes PNGs; `labeled_grid` tiles images in rows with a caption per tile;
- `histogram_png` draws the stability histogram of the candidates (best and worst marked);
- `curve_png` draws the optimisation curve (stability per step, one faint line per sample, mean bold);
- `write_report` writes the JSON report atomically (temporary file, then rename), with `versions()`.
No plotting library is needed: the charts are a few rectangles and lines on a PIL canvas.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from noisefast.atomic import atomic_path, atomic_write_json

BG, FG, GRID = (255, 255, 255), (20, 20, 20), (225, 225, 225)
BEST, WORST, BAR = (30, 140, 60), (200, 50, 40), (70, 110, 180)


def _font():
    return ImageFont.load_default()


def _text_w(draw: ImageDraw.ImageDraw, text: str) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=_font())
    return right - left


def save_images(images: Sequence[Image.Image], folder: str | os.PathLike, names: Sequence[str]) -> list[Path]:
    """Write each image as ``folder/name`` (PNG); returns the paths."""
    if len(images) != len(names):
        raise ValueError(f"got {len(images)} images but {len(names)} names")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for img, name in zip(images, names):
        paths.append(save_png(img, folder / name))
    return paths


def labeled_grid(
    rows: Sequence[Sequence[Image.Image]],
    captions: Sequence[Sequence[str]],
    row_titles: Sequence[str],
    *,
    title: str = "",
    pad: int = 6,
) -> Image.Image:
    """Rows of equally sized tiles, a title line per row and a caption under each tile."""
    if len(rows) != len(captions) or len(rows) != len(row_titles):
        raise ValueError(f"rows ({len(rows)}), captions ({len(captions)}) and row_titles ({len(row_titles)}) differ")
    tiles = [t for row in rows for t in row]
    if not tiles:
        raise ValueError("labeled_grid needs at least one image")
    tw, th = tiles[0].size
    line = 12
    ncol = max(len(r) for r in rows)
    width = pad + ncol * (tw + pad)
    title_h = line + pad if title else 0
    row_h = line + th + line + pad
    canvas = Image.new("RGB", (max(width, 200), title_h + pad + len(rows) * row_h), BG)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill=FG, font=_font())
    for r, (row, caps, head) in enumerate(zip(rows, captions, row_titles)):
        y = title_h + pad + r * row_h
        draw.text((pad, y), head, fill=FG, font=_font())
        for c, (img, cap) in enumerate(zip(row, caps)):
            x = pad + c * (tw + pad)
            canvas.paste(img.convert("RGB").resize((tw, th), Image.NEAREST), (x, y + line))
            draw.text((x, y + line + th + 1), cap, fill=FG, font=_font())
    return canvas


def _axes(draw, box, x_range, y_range, x_label, y_label, n_ticks=5, y_int=False):
    """Frame, grid and tick labels of a chart inside ``box`` = (x0, y0, x1, y1); returns data→pixel maps."""
    x0, y0, x1, y1 = box
    (xa, xb), (ya, yb) = x_range, y_range
    xb = xb if xb > xa else xa + 1e-6
    yb = yb if yb > ya else ya + 1e-6
    px = lambda v: x0 + (v - xa) / (xb - xa) * (x1 - x0)  # noqa: E731
    py = lambda v: y1 - (v - ya) / (yb - ya) * (y1 - y0)  # noqa: E731
    for i in range(n_ticks + 1):
        xv, yv = xa + (xb - xa) * i / n_ticks, ya + (yb - ya) * i / n_ticks
        draw.line([(px(xv), y0), (px(xv), y1)], fill=GRID)
        draw.line([(x0, py(yv)), (x1, py(yv))], fill=GRID)
        xt, yt = _fmt(xv), (f"{yv:.0f}" if y_int else _fmt(yv))
        draw.text((px(xv) - _text_w(draw, xt) / 2, y1 + 3), xt, fill=FG, font=_font())
        draw.text((x0 - 4 - _text_w(draw, yt), py(yv) - 5), yt, fill=FG, font=_font())
    draw.rectangle(box, outline=FG)
    draw.text(((x0 + x1) / 2 - _text_w(draw, x_label) / 2, y1 + 16), x_label, fill=FG, font=_font())
    draw.text((4, y0 - 16), y_label, fill=FG, font=_font())
    return px, py


def _fmt(v: float) -> str:
    if v == int(v):
        return str(int(v))
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"


def histogram_png(
    scores: Sequence[float],
    *,
    best: float | None = None,
    worst: float | None = None,
    bins: int | None = None,
    title: str = "inversion stability of the candidates",
    size: tuple[int, int] = (520, 320),
) -> Image.Image:
    """Histogram of ``scores`` with the most (green) and least (red) stable marked."""
    scores = [float(s) for s in scores]
    if not scores or not all(math.isfinite(s) for s in scores):
        raise ValueError(f"histogram_png needs finite scores, got {scores[:8]}...")
    bins = bins or max(5, min(30, int(math.sqrt(len(scores))) * 2))
    lo, hi = min(scores), max(scores)
    span = (hi - lo) or max(abs(hi), 1e-3) * 1e-3
    lo, hi = lo - 0.02 * span, hi + 0.02 * span
    counts = [0] * bins
    for s in scores:
        counts[min(bins - 1, int((s - lo) / (hi - lo) * bins))] += 1
    w, h = size
    canvas = Image.new("RGB", size, BG)
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 6), f"{title} (n={len(scores)})", fill=FG, font=_font())
    top = max(counts) + (-max(counts)) % 5  # a multiple of 5: integer ticks
    px, py = _axes(draw, (60, 40, w - 15, h - 40), (lo, hi), (0, top), "stability s(eps)", "count", y_int=True)
    for i, c in enumerate(counts):
        a, b = lo + (hi - lo) * i / bins, lo + (hi - lo) * (i + 1) / bins
        if c:
            draw.rectangle([px(a) + 1, py(c), px(b) - 1, py(0)], fill=BAR)
    for v, color, name in ((best, BEST, "best"), (worst, WORST, "worst")):
        if v is not None:
            draw.line([(px(v), 40), (px(v), h - 40)], fill=color, width=2)
            draw.text((px(v) + 3, 42), name, fill=color, font=_font())
    return canvas


def curve_png(
    history: Sequence[Sequence[float]],
    *,
    title: str = "noise optimisation: stability per step",
    labels: Sequence[str] | None = None,
    size: tuple[int, int] = (520, 320),
) -> Image.Image:
    """``history[step][sample]`` as one line per sample (faint) and their mean (bold)."""
    steps = len(history)
    if steps == 0 or not history[0]:
        raise ValueError("curve_png needs a non-empty [steps, samples] history")
    n = len(history[0])
    flat = [float(v) for row in history for v in row if math.isfinite(float(v))]
    w, h = size
    canvas = Image.new("RGB", size, BG)
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 6), title, fill=FG, font=_font())
    lo, hi = min(flat), max(flat)
    pad = (hi - lo) * 0.05 or 1e-3
    px, py = _axes(draw, (60, 40, w - 15, h - 40), (0, max(steps - 1, 1)), (lo - pad, hi + pad), "step", "stability")
    for j in range(n):
        pts = [(px(i), py(float(history[i][j]))) for i in range(steps)]
        if len(pts) > 1:
            draw.line(pts, fill=(160, 180, 220), width=1)
    mean = [sum(float(v) for v in row) / n for row in history]
    pts = [(px(i), py(m)) for i, m in enumerate(mean)]
    if len(pts) > 1:
        draw.line(pts, fill=BAR, width=3)
    else:
        draw.ellipse([pts[0][0] - 3, pts[0][1] - 3, pts[0][0] + 3, pts[0][1] + 3], fill=BAR)
    note = f"mean {mean[0]:.4f} -> {mean[-1]:.4f}" + (f" ({n} samples)" if n > 1 else "")
    draw.text((w - 15 - _text_w(draw, note), 22), note, fill=FG, font=_font())
    return canvas


def versions() -> dict:
    """Versions of everything that shapes the numbers (and `noisefast.build_info()` when it exists)."""
    import diffusers
    import torch
    import transformers

    import noisefast

    out = {
        "noisefast": getattr(noisefast, "__version__", "unknown"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    build_info = getattr(noisefast, "build_info", None)
    if callable(build_info):
        try:
            out["build"] = build_info()
        except Exception as e:  # a broken extension must not lose the report
            out["build"] = f"unavailable: {type(e).__name__}: {e}"
    return out


def write_report(path: str | os.PathLike, report: dict) -> Path:
    """Write ``report`` as indented strict JSON (NaN/inf as null), atomically (never a half-written file)."""
    return atomic_write_json(path, report)


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """``image`` as a PNG at ``path``, atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
