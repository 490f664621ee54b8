"""The per-Linear error heatmap of a variant as a standalone SVG (for ``qtui report``).

Blocks down, Linear kinds across; each cell's colour runs from pale (best of this variant) to dark
red (worst), on the metric's own scale (SQNR: lower is worse). Plain SVG 1.1 text like
:mod:`engine.charts`; a cell with no value is grey and says "n/a".
"""

from __future__ import annotations

from html import escape

from engine.inspection import METRICS, VariantTable


def colour(t: float) -> str:
    """0 -> pale yellow, 1 -> dark red (a sequential ramp readable in grey too)."""
    stops = ((255, 255, 204), (254, 178, 76), (240, 59, 32), (128, 0, 38))
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    f = t - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(stops[i], stops[i + 1], strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def badness(value: float, lo: float, hi: float, higher_is_worse: bool) -> float:
    """Where ``value`` lies between the best and the worst of the table (0 best, 1 worst)."""
    if hi <= lo:
        return 0.0
    t = (value - lo) / (hi - lo)
    return t if higher_is_worse else 1.0 - t


def heatmap_svg(table: VariantTable, metric: str = "weight", cell_w: int = 56, cell_h: int = 16) -> str:
    m = METRICS[metric]
    values = [v for s in table.linears if s.block >= 0 and (v := s.value(metric)) is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
    left, top = 56, 56
    width = left + cell_w * len(table.kinds) + 150
    height = top + cell_h * max(table.blocks, 1) + 24
    title = f"{table.variant}: {m.label} per Linear"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14">{escape(title)}</text>',
    ]
    for j, kind in enumerate(table.kinds):
        x = left + cell_w * (j + 0.5)
        out.append(f'<text x="{x:.1f}" y="{top - 6}" text-anchor="middle">{escape(kind)}</text>')
    for b in range(table.blocks):
        y = top + cell_h * b
        out.append(f'<text x="{left - 6}" y="{y + cell_h - 4}" text-anchor="end">{b}</text>')
        for j, kind in enumerate(table.kinds):
            s = table.cell(b, kind)
            v = s.value(metric) if s is not None else None
            fill = "#ccc" if v is None else colour(badness(v, lo, hi, m.higher_is_worse))
            tip = f"{s.name if s else f'block {b} {kind}'}: {'n/a' if v is None else f'{v:.4g}{m.unit}'}"
            out.append(
                f'<rect class="cell" x="{left + cell_w * j}" y="{y}" width="{cell_w - 1}" height="{cell_h - 1}" '
                f'fill="{fill}"><title>{escape(tip)}</title></rect>'
            )
    lx = left + cell_w * len(table.kinds) + 16
    for i in range(5):  # legend: best at the top, worst at the bottom
        t = i / 4
        v = lo + (hi - lo) * (t if m.higher_is_worse else 1 - t)
        y = top + 18 * i
        out.append(f'<rect x="{lx}" y="{y}" width="14" height="14" fill="{colour(t)}"/>')
        label = f"{v:.4g}{m.unit}" if values else "n/a"
        out.append(f'<text x="{lx + 20}" y="{y + 11}">{escape(label)}{" (best)" if i == 0 else ""}'
                   f'{" (worst)" if i == 4 else ""}</text>')  # fmt: skip
    if not values:
        out.append(
            f'<text x="{lx}" y="{top + 110}">no values: {escape(table.notes[0] if table.notes else "")}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"
