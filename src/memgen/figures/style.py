"""The house style shared by every family's figures.

Single-column figures 3.4 in wide (two-panel ones span a double column), STIX
(Times-like) text and maths, one viridis colour per swept parameter on a log scale
with a colour bar, one marker/colour per width, and byte-reproducible output.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.style  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from memgen import MemgenError  # noqa: E402

WIDTH = 3.4  # inches, one column
WIDE = 6.8  # inches, two columns
HEIGHT = 2.5

# The rc settings live in a matplotlib style file shipped with the package (also usable
# on its own: plt.style.use(STYLE)); RC is what it sets.
STYLE = Path(__file__).with_name("paper.mplstyle")
RC = dict(matplotlib.rc_params_from_file(STYLE, use_default_template=False))
DPI = int(RC["savefig.dpi"])

CMAP = "viridis"
MARKERS = ("o", "s", "^", "D", "v", "p", "<", ">")
COLORS = ("#1f4e9c", "#d1495b", "#2a9d5c", "#e0a100", "#7b3fa0", "#555555")

# Metadata that would otherwise embed the date (and so change the bytes on every run).
_METADATA = {"pdf": {"CreationDate": None, "ModDate": None}, "svg": {"Date": None}, "png": {}}


@contextlib.contextmanager
def paper_style():
    """Apply the house style (``paper.mplstyle``) inside the block."""
    with matplotlib.style.context(str(STYLE)):
        yield


def figure(ncols: int = 1, width: float | None = None, height: float = HEIGHT, **kw):
    """``(fig, axes)``: one column wide for one panel, two columns for more."""
    width = width or (WIDTH if ncols == 1 else WIDE)
    return plt.subplots(1, ncols, figsize=(width, height), **kw)


def width_style(i: int) -> dict:
    """Marker and colour of the ``i``-th width (or any other small categorical)."""
    return {"marker": MARKERS[i % len(MARKERS)], "color": COLORS[i % len(COLORS)]}


def log_norm(values) -> LogNorm:
    """Log colour scale spanning ``values`` (positive); widened if they are all equal."""
    lo, hi = float(min(values)), float(max(values))
    if lo == hi:
        lo, hi = lo / 10 ** 0.5, hi * 10 ** 0.5
    return LogNorm(vmin=lo, vmax=hi)


def colorbar(fig, ax, norm, label: str):
    """A slim colour bar of ``CMAP`` under ``norm`` next to ``ax``."""
    sm = plt.cm.ScalarMappable(norm=norm, cmap=CMAP)
    cb = fig.colorbar(sm, ax=ax, pad=0.02, fraction=0.05, aspect=25)
    cb.set_label(label)
    cb.outline.set_linewidth(0.5)
    cb.ax.minorticks_off()
    return cb


def save(fig, paths) -> None:
    """Save ``fig`` to every path (format from the suffix: pdf/png/svg), each
    atomically (``name.tmp.<ext>`` then rename), with no timestamps; close it."""
    try:
        for path in map(Path, paths):
            ext = path.suffix.lstrip(".").lower()
            if ext not in _METADATA:
                raise MemgenError(f"{path}: unsupported figure format '{ext}' (pdf, png, svg)")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.tmp.{ext}")
            fig.savefig(tmp, format=ext, metadata=_METADATA[ext])
            os.replace(tmp, path)
    finally:
        plt.close(fig)
