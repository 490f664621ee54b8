"""Bar charts as standalone SVG files, for ``qtui report``.

Written by hand (~100 lines) rather than adding matplotlib (a large dependency with a compiled
backend) for four bar charts: bars per variant, optional interval whiskers (Wilson 95%) and an
optional dashed reference line (chance level). The output is plain SVG 1.1 text that browsers,
Markdown viewers and image tools open.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    low: float | None = None  # interval whisker (same unit as value)
    high: float | None = None
    text: str | None = None  # printed above the bar; default: the value


def bar_chart(
    title: str,
    bars: list[Bar],
    unit: str = "",
    reference: float | None = None,
    reference_label: str = "",
    width: int = 640,
    height: int = 360,
) -> str:
    """An SVG bar chart; values must be >= 0 (accuracy, KLD, tokens/s, bytes)."""
    if not bars:
        raise ValueError("bar_chart needs at least one bar")
    left, right, top, bottom = 64, 16, 40, 72
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([b.high if b.high is not None else b.value for b in bars] + [reference or 0.0])
    vmax = _nice_ceiling(peak if peak > 0 else 1.0)

    def y(v: float) -> float:
        return top + plot_h * (1 - min(max(v, 0.0), vmax) / vmax)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2:.1f}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    for i in range(5):  # grid lines and y labels
        v = vmax * i / 4
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        out.append(
            f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{escape(_fmt(v))}{escape(unit)}</text>'
        )
    slot = plot_w / len(bars)
    bar_w = min(64.0, slot * 0.6)
    for i, b in enumerate(bars):
        cx = left + slot * (i + 0.5)
        colour = PALETTE[i % len(PALETTE)]
        out.append(
            f'<rect x="{cx - bar_w / 2:.1f}" y="{y(b.value):.1f}" width="{bar_w:.1f}" '
            f'height="{top + plot_h - y(b.value):.1f}" fill="{colour}"/>'
        )
        if b.low is not None and b.high is not None:
            lo, hi = y(b.low), y(b.high)
            out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{lo:.1f}" y2="{hi:.1f}" stroke="black"/>')
            for yy in (lo, hi):
                out.append(
                    f'<line x1="{cx - 6:.1f}" x2="{cx + 6:.1f}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="black"/>'
                )
        label_y = (y(b.high) if b.high is not None else y(b.value)) - 5
        text = b.text if b.text is not None else _fmt(b.value) + unit
        out.append(f'<text x="{cx:.1f}" y="{label_y:.1f}" text-anchor="middle">{escape(text)}</text>')
        out.append(
            f'<text x="{cx:.1f}" y="{top + plot_h + 16}" text-anchor="end" '
            f'transform="rotate(-25 {cx:.1f} {top + plot_h + 16})">{escape(b.label)}</text>'
        )
    if reference is not None:
        ry = y(reference)
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{ry:.1f}" y2="{ry:.1f}" stroke="#c00" stroke-dasharray="6 4"/>'
        )
        out.append(
            f'<text x="{width - right}" y="{ry - 4:.1f}" text-anchor="end" fill="#c00">{escape(reference_label)}</text>'
        )
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="black"/>')
    out.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="black"/>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _nice_ceiling(v: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= v."""
    exp: float = 10 ** math.floor(math.log10(v))  # int ** int is typed Any (a negative power is a float)
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= v:
            return m * exp
    return 10 * exp


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.3g}"
