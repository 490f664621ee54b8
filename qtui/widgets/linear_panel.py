"""One Linear up close (Inspect screen): its weight histogram with two groups' quantization grids
drawn over it (textual-plotext), and its figures: errors, clipped / collapsed shares, scales, codes
used and the largest input channels."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static
from textual_plotext import PlotextPlot

from engine.inspection import LinearView

MAX_LINES = 16  # grids of more levels (int8) show their two ends only


def _num(v: float | None, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


class LinearHistogram(PlotextPlot):
    """Histogram of one Linear's weights; vertical lines: a typical group's levels (green) and the
    worst group's (red)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.view: LinearView | None = None

    def show(self, view: LinearView | None) -> None:
        self.view = view
        self.redraw()

    def redraw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        view = self.view
        if view is None:
            plt.title("select a cell of the heatmap")
            self.refresh()
            return
        counts = view.counts_source or view.counts_dequant
        centres = [(a + b) / 2 for a, b in zip(view.bins, view.bins[1:], strict=False)]
        width = (view.bins[1] - view.bins[0]) if len(view.bins) > 1 else 1.0
        plt.bar(centres, list(counts), width=width * 0.9, color="blue")
        top = max(counts) if counts else 1
        # each group's grid as a rail of dots under the bars: typical (green), worst (red)
        for group, colour, y in ((view.typical, "green", -0.06 * top), (view.worst, "red", -0.14 * top)):
            levels = list(group.levels)
            if len(levels) > MAX_LINES:
                levels = [levels[0], levels[-1]]
            plt.scatter(levels, [y] * len(levels), color=colour, marker="●")
        kind = "source" if view.counts_source else "dequantized"
        plt.title(f"{kind} weights; dots: grid of a typical (green) and the worst group (red)")
        lo, hi = view.bins[0], view.bins[-1]
        for g in (view.typical, view.worst):
            lo, hi = min([lo, *g.levels[:1]]), max([hi, *g.levels[-1:]])
        plt.xlim(lo, hi)
        plt.ylim(-0.2 * top, top * 1.05)
        ticks = [lo + (hi - lo) * i / 4 for i in range(5)]
        plt.xticks(ticks, [f"{t:+.3g}" for t in ticks])
        plt.yticks([0, top], ["0", str(top)])
        self.refresh()


class LinearPanel(Vertical):
    """Histogram above, figures below, for one variant's view of one Linear."""

    DEFAULT_CSS = """
    LinearPanel { width: 1fr; border: round $primary 40%; }
    LinearPanel LinearHistogram { height: 1fr; min-height: 10; }
    LinearPanel .linear-facts { height: auto; max-height: 14; }
    """

    def on_mount(self) -> None:
        self.query_one(LinearHistogram).redraw()

    def compose(self) -> ComposeResult:
        yield LinearHistogram(classes="linear-hist")
        with VerticalScroll(classes="linear-facts"):
            yield Static("", classes="linear-text")

    def show(self, view: LinearView | None, message: str = "") -> None:
        self.query_one(LinearHistogram).show(view)
        self.query_one(".linear-text", Static).update(facts(view) if view else Text(message))


def facts(view: LinearView) -> Text:
    s = view.stat
    t = Text()
    t.append(f"{view.variant}", style="bold")
    t.append(f"  {view.fmt} {view.method}  {s.shape[0]}x{s.shape[1]}, groups of {view.group_size}\n")
    t.append(f"weight err {_num(s.rel_error)}  SQNR {_num(s.sqnr_db, '.1f')} dB  ")
    t.append(f"output err {_num(s.out_rel_error)}\n", style="bold")
    t.append(f"clipped {_num(s.clipped, '.2f')} %  collapsed to one level {_num(s.collapsed, '.2f')} %\n")
    t.append(f"scales min {view.scales[0]:.3g} / median {view.scales[1]:.3g} / max {view.scales[2]:.3g}; ")
    used = sum(1 for c in view.code_counts if c)
    t.append(f"codes used {used}/{len(view.code_counts)}\n")
    for g, style in ((view.typical, "green"), (view.worst, "red")):
        err = f" rel err {g.error:.3f}" if g.error is not None else ""
        t.append(f"{g.label}", style=style)
        t.append(f": row {g.row} group {g.group}, scale {g.scale:.3g}{err}\n")
    if view.act_top:
        top = ", ".join(f"{c} ({mx:.2g})" for c, mx, _ in view.act_top)
        t.append(f"largest input channels (max |x|): {top}\n")
    for note in view.notes:
        t.append(f"{note}\n", style="italic")
    return t
