"""PNG charts of a comparison and of block-weight lists (matplotlib, headless, imported lazily).

Figures are drawn on matplotlib's Agg canvas directly (`matplotlib.figure.Figure`), never through
pyplot, so nothing global changes in the process that hosts them (the WebUI keeps its backend)."""
from __future__ import annotations

import io
import os

from .errors import AlloyError

BAR = "#4c78a8"
LINE = "#e45756"
BETA = "#54a24b"


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise AlloyError("Plots need matplotlib; install it with: pip install matplotlib") from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _label_axis(ax, labels) -> None:
    ax.set_xticks(range(len(labels)))
    small = len(labels) > 30
    ax.set_xticklabels(labels, rotation=90, fontsize=6 if small else 8)
    ax.set_xlim(-0.6, len(labels) - 0.4)


def comparison_png(cmp, title: str | None = None) -> bytes:
    """Bar chart of rel_dist per block (blocks in order on the x axis), cosine as a line on a second
    axis. Blocks without compared keys show no bar and no point."""
    names = list(cmp.blocks)
    dist = [s.rel_dist for s in cmp.blocks.values()]
    cos = [s.cosine for s in cmp.blocks.values()]
    fig = _figure(max(8.0, 0.16 * len(names) + 3), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(names)), [d if d is not None else 0.0 for d in dist], color=BAR,
           label="relative distance ‖B − A‖ / ‖A‖")
    ax.set_ylabel("relative distance", color=BAR)
    _label_axis(ax, names)
    ax.grid(axis="y", alpha=0.3)
    ax2 = ax.twinx()
    xs = [i for i, c in enumerate(cos) if c is not None]
    ax2.plot(xs, [cos[i] for i in xs], color=LINE, marker="o", markersize=3, linewidth=1.5,
             label="cosine similarity")
    lo = min([cos[i] for i in xs], default=0.0)
    ax2.set_ylim(min(lo, 1.0) - max(0.02, (1.0 - lo) * 0.1), 1.0 + max(0.005, (1.0 - lo) * 0.05))
    ax2.set_ylabel("cosine", color=LINE)
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8,
              frameon=False)
    ax.set_title(title or f"{_stem(cmp.path_a)} → {_stem(cmp.path_b)} ({cmp.arch.label})", fontsize=10,
                 loc="left")
    fig.tight_layout()
    return _png(fig)


def weights_png(block_ids, alpha, beta=None, ranges=None) -> bytes:
    """A small curve of the alpha (and beta) block list over the blocks.

    `alpha` / `beta`: one value per block or None (a position drawn at random is None there);
    `ranges`: {"alpha": [(lo, hi) | None, …], "beta": …} for those random positions, drawn as bars."""
    fig = _figure(max(6.0, 0.11 * len(block_ids) + 2.5), 2.0)
    ax = fig.add_subplot(1, 1, 1)
    for name, values, color in (("alpha", alpha, LINE), ("beta", beta, BETA)):
        if values is None:
            continue
        ys = [float("nan") if v is None else v for v in values]       # a gap at random positions
        ax.plot(range(len(ys)), ys, color=color, marker="o", markersize=2.5, linewidth=1.2, label=name)
        for i, r in enumerate((ranges or {}).get(name) or []):
            if r is not None:
                ax.vlines(i, r[0], r[1], color=color, alpha=0.45, linewidth=3)
    _label_axis(ax, list(block_ids))
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(alpha=0.3)
    if alpha is not None or beta is not None:
        ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    fig.tight_layout(pad=0.4)
    return _png(fig)


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(str(path)))[0]


def png_image(png: bytes):
    """PNG bytes -> a PIL image (what the tab's gr.Image shows)."""
    from PIL import Image
    img = Image.open(io.BytesIO(png))
    img.load()
    return img
