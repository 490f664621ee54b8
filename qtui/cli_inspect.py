"""``qtui inspect``: where a variant's quantization hurts, as text tables (or JSON).

The same figures as the Inspect screen (F7), from :mod:`engine.inspection`: the per-Linear
heatmap (blocks down, Linear kinds across) for one metric, the worst Linears, and with
``--layer`` one Linear up close (histogram, the grid of a typical and of the worst group, code
usage, activation channels), beside the same Linear of ``--vs`` another variant.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from qtui.cli_common import EXIT_OK, ProgressLine


def register(sub) -> None:
    """``qtui inspect``, ``qtui demo``, ``qtui serve`` and ``--divergence`` on ``qtui chat`` (issue 12's commands,
    registered from here to keep cli.py's edits to one line)."""
    from qtui import cli_demo, cli_serve
    from qtui.cli_divergence import extend_chat

    extend_chat(sub)
    cli_demo.register(sub)
    cli_serve.register(sub)
    p = sub.add_parser("inspect", help="per-Linear errors of a saved variant; one Linear up close")
    p.add_argument("variant", help="a variant folder, MODEL:FORMAT (with --method) or a saved variant's name")
    p.add_argument("--layer", "-l", help="one Linear: its name or BLOCK.KIND (e.g. 3.q, 12.down)")
    p.add_argument("--vs", help="a second variant: the same Linear side by side (e.g. RTN vs GPTQ)")
    p.add_argument("--metric", "-m", default=None, choices=["weight", "sqnr", "bits", "output", "clipped", "collapsed"],
                   help="the heatmap's metric (default: output error where recorded, else weight error)")  # fmt: skip
    p.add_argument("--method", default="rtn", help="with MODEL:FORMAT: the method of the saved variant")
    p.add_argument("--worst", type=int, default=10, help="how many worst Linears to list")
    p.add_argument("--json", action="store_true", help="print the table (and the Linear) as JSON")
    p.add_argument("--no-cache", action="store_true", help="recompute even when a cached result exists")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from engine import inspection

    folders = [inspection.find_variant(args.variant, args.method)]
    if args.vs:
        folders.append(inspection.find_variant(args.vs, args.method))
    tables, views = [], []
    bar = ProgressLine()
    try:
        for folder in folders:
            tables.append(inspection.inspect_variant(folder, bar, use_cache=not args.no_cache))
        if args.layer:
            name = tables[0].find(args.layer).name
            for folder in folders:
                views.append(inspection.inspect_linear(folder, name, bar, use_cache=not args.no_cache))
    finally:
        bar.close()
    if args.json:
        out = {"variants": [t.to_json() for t in tables], "linears": [v.to_json() for v in views]}
        print(json.dumps(out, indent=1))
        return EXIT_OK
    metric = args.metric or ("output" if tables[0].has("output") else "weight")
    for table in tables:
        print_table(table, metric, args.worst)
    if views:
        print_views(views)
    return EXIT_OK


def _cell(v: float | None, metric: str) -> str:
    if v is None:
        return "-"
    if metric == "sqnr":
        return f"{v:.1f}"
    if metric in ("clipped", "collapsed", "bits"):
        return f"{v:.2f}"
    return f"{v:.4f}"


def print_table(table, metric: str, worst: int = 10, stream: TextIO | None = None) -> None:
    from engine.inspection import METRICS

    out = stream or sys.stdout
    m = METRICS[metric]
    print(f"== {table.variant}: {table.fmt} {table.method}, source {table.source or '?'} ==", file=out)
    print(f"   {table.path}", file=out)
    for note in table.notes:
        print(f"   note: {note}", file=out)
    if not table.linears:
        return
    worse = "higher" if m.higher_is_worse else "lower"
    print(f"\n{m.label}{m.unit and ' (' + m.unit.strip() + ')'} per Linear ({worse} is worse)", file=out)
    print("block " + "".join(f"{k:>9}" for k in table.kinds), file=out)
    for b in range(table.blocks):
        cells = [table.cell(b, k) for k in table.kinds]
        print(
            f"{b:5} " + "".join(f"{_cell(c.value(metric) if c else None, metric):>9}" for c in cells),
            file=out,
        )
    rows = table.worst(metric, worst)
    if rows:
        print(f"\nworst {len(rows)} by {m.label}:", file=out)
        print(
            f"  {'linear':40} {'weight err':>10} {'SQNR dB':>8} {'out err':>8} {'clip %':>7} {'1-lvl %':>8}  format",
            file=out,
        )
        for s in rows:
            print(
                f"  {s.name:40} {_cell(s.rel_error, 'weight'):>10} {_cell(s.sqnr_db, 'sqnr'):>8} "
                f"{_cell(s.out_rel_error, 'output'):>8} {_cell(s.clipped, 'clipped'):>7} "
                f"{_cell(s.collapsed, 'collapsed'):>8}  {s.fmt}",
                file=out,
            )
    print(file=out)


def view_lines(view, width: int = 60) -> list[str]:
    """One Linear as text lines (the CLI prints two side by side)."""
    s = view.stat
    lines = [
        f"{view.variant}: {view.name}",
        f"{view.fmt} {view.method}, {s.shape[0]}x{s.shape[1]}, groups of {view.group_size}",
        f"weight err {_cell(s.rel_error, 'weight')}  SQNR {_cell(s.sqnr_db, 'sqnr')} dB  "
        f"out err {_cell(s.out_rel_error, 'output')}",
        f"clipped {_cell(s.clipped, 'clipped')} %  collapsed to one level {_cell(s.collapsed, 'collapsed')} %",
        f"scales min {view.scales[0]:.3g} median {view.scales[1]:.3g} max {view.scales[2]:.3g}",
        "",
        "histogram of " + ("the source's weights" if view.counts_source else "the dequantized weights"),
    ]
    counts = view.counts_source or view.counts_dequant
    step = max(1, len(counts) // 15)
    merged = [sum(counts[i : i + step]) for i in range(0, len(counts), step)]
    peak = max(merged) or 1
    bar_w = max(10, width - 14)
    for i, c in enumerate(merged):
        lines.append(f"{view.bins[i * step]:+.4f} {'#' * round(bar_w * c / peak)}")
    for g in (view.typical, view.worst):
        err = f", rel err {g.error:.3f}" if g.error is not None else ""
        lines.append("")
        lines.append(f"{g.label}: row {g.row} group {g.group}, scale {g.scale:.3g}{err}")
        lines.append(
            "  levels: "
            + " ".join(f"{v:+.3g}" for v in g.levels[:16])
            + (" ..." if len(g.levels) > 16 else "")
        )
        lo, hi = min(g.weights), max(g.weights)
        lines.append(f"  weights from {lo:+.4g} to {hi:+.4g}")
    used = sum(1 for c in view.code_counts if c)
    lines += ["", f"codes used: {used} of {len(view.code_counts)} levels"]
    if view.act_top:
        lines.append("largest input channels (max |x|, mean |x|):")
        lines += [f"  ch {c:5} {mx:9.3f} {mean:9.3f}" for c, mx, mean in view.act_top]
    for note in view.notes:
        lines.append(f"note: {note}")
    return lines


def print_views(views, stream: TextIO | None = None) -> None:
    import shutil
    import textwrap

    out = stream or sys.stdout
    width = shutil.get_terminal_size((120, 40)).columns
    col = (width - 3) // 2
    if len(views) == 1 or col < 50:
        for v in views:
            for line in view_lines(v, width):
                print(line, file=out)
            print(file=out)
        return
    blocks = [[w for line in view_lines(v, col) for w in (textwrap.wrap(line, col) or [""])] for v in views]
    for i in range(max(len(b) for b in blocks)):
        print(" | ".join((b[i] if i < len(b) else "").ljust(col) for b in blocks).rstrip(), file=out)
