"""Pictures of a run's progress: every logged term of ``log.csv`` against the iteration.

``log.csv`` has one row per iteration and one column per logged quantity; which columns exist
depends on the version and the method, so nothing here names a term: every numeric column is
drawn except ``iteration`` (the x axis) and the timings (``seconds``, ``queue_seconds``, any
column ending in ``seconds``). Columns that are zero throughout (terms a method does not
use) are left out. Each term gets its own panel, on a log scale where its values span more
than two decades (a symmetric log scale if some are negative). Long logs also show a running
mean over 2% of the rows.

matplotlib draws through its Agg canvas without pyplot, so no global state or display is used.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from io import BytesIO
from pathlib import Path

import numpy as np

from .io import atomic_write_bytes

__all__ = ["CURVES_FILE", "read_log", "curve_columns", "y_scale", "save_curves"]

CURVES_FILE = "curves.png"
DECADES = 2.0  # a panel goes to a log scale when its values span more than this many decades


def read_log(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns of a CSV log as float arrays (NaN where a cell is empty or not a number).

    Rows with another number of cells than the header (a line cut by a crash) are skipped.
    """
    with Path(path).open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return {}
    header, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
    values = np.full((len(body), len(header)), np.nan)
    for i, row in enumerate(body):
        for j, cell in enumerate(row):
            with contextlib.suppress(ValueError):
                values[i, j] = float(cell)
    return {name: values[:, j] for j, name in enumerate(header)}


def curve_columns(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The columns worth a panel: numeric, not the iteration or a timing, not all zero."""
    out = {}
    for name, v in columns.items():
        if name == "iteration" or name.endswith("seconds"):
            continue
        finite = v[np.isfinite(v)]
        if len(finite) and np.any(finite != 0):
            out[name] = v
    return out


def y_scale(values: np.ndarray) -> str:
    """'log' if the positive values span more than DECADES decades (all of them positive),
    'symlog' if the magnitudes do with some values <= 0, else 'linear'."""
    v = values[np.isfinite(values)]
    mags = np.abs(v[v != 0])
    if len(mags) < 2 or math.log10(mags.max() / mags.min()) <= DECADES:
        return "linear"
    return "log" if np.all(v > 0) else "symlog"


def save_curves(
    log_path: str | os.PathLike, png_path: str | os.PathLike, title: str | None = None
) -> list[str]:
    """Draw every term of ``log_path`` against the iteration into ``png_path`` (atomically).

    Returns the names drawn; when the log is missing or has no rows with a term yet, nothing
    is written and the list is empty.
    """
    if not Path(log_path).is_file():
        return []
    columns = read_log(log_path)
    if "iteration" not in columns:
        return []
    x = columns["iteration"]
    terms = curve_columns(columns)
    if not terms or not np.isfinite(x).any():
        return []

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(3, len(terms))
    nrows = math.ceil(len(terms) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (name, y) in zip(axes.flat, terms.items(), strict=False):
        keep = np.isfinite(x) & np.isfinite(y)
        xs, ys = x[keep], y[keep]
        window = max(1, len(ys) // 50)
        smooth = window > 1
        ax.plot(xs, ys, lw=0.8, alpha=0.35 if smooth else 1.0, color="tab:blue")
        if smooth:
            mean = np.convolve(ys, np.ones(window) / window, mode="valid")
            ax.plot(xs[window - 1 :], mean, lw=1.5, color="tab:blue")
        scale = y_scale(ys)
        if scale == "symlog":
            mags = np.abs(ys[ys != 0])
            ax.set_yscale("symlog", linthresh=float(np.percentile(mags, 10)))
        else:
            ax.set_yscale(scale)
        ax.set_title(name + (" (log)" if scale != "linear" else ""), fontsize=10)
        ax.set_xlabel("iteration", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(terms) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buf = BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(png_path, buf.getvalue())
    return list(terms)
