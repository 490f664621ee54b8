"""Dashboard charts (textual-plotext), redrawn from ring buffers on a timer, never per token."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from engine.telemetry import RingBuffer


class SeriesChart(PlotextPlot):
    """Lines over time, one per series, from a ``name -> RingBuffer`` mapping getter."""

    def __init__(self, title: str, ylabel: str, getter, **kwargs) -> None:
        super().__init__(**kwargs)
        self.chart_title = title
        self.ylabel = ylabel
        self.getter = getter

    def redraw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.chart_title)
        plt.ylabel(self.ylabel)
        series: dict[str, RingBuffer] = self.getter()
        t0 = min((b.snapshot()[0][0] for b in series.values() if len(b)), default=0.0)
        for name, buf in series.items():
            points = buf.snapshot()
            if points:
                plt.plot([t - t0 for t, _ in points], [v for _, v in points], label=name, marker="braille")
        if not any(len(b) for b in series.values()):
            plt.title(f"{self.chart_title} (no data yet)")
        plt.xlabel("seconds")
        self.refresh()


class BarChart(PlotextPlot):
    """Bars, one per variant, from a ``name -> value`` mapping getter."""

    def __init__(self, title: str, getter, **kwargs) -> None:
        super().__init__(**kwargs)
        self.chart_title = title
        self.getter = getter

    def redraw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        values: dict[str, float] = self.getter()
        plt.title(self.chart_title if values else f"{self.chart_title} (no data yet)")
        if values:
            # numeric positions + explicit ticks: plotext's layout of string categories varies
            # from run to run (string hashing), which the snapshot tests caught
            xs = list(range(1, len(values) + 1))
            plt.bar(xs, list(values.values()), width=0.5)
            plt.xticks(xs, fit_labels(list(values), self.size.width))
        self.refresh()


def fit_labels(labels: list[str], width: int) -> list[str]:
    """Labels short enough to sit side by side under their bars without colliding."""
    room = max(4, (width - 10) // max(len(labels), 1) - 1)
    return [label if len(label) <= room else label[: room - 1] + "…" for label in labels]


class IntervalChart(PlotextPlot):
    """Bars with error whiskers, from a ``label -> (value, low, high)`` mapping getter (0..1 -> %)."""

    def __init__(self, title: str, getter, **kwargs) -> None:
        super().__init__(**kwargs)
        self.chart_title = title
        self.getter = getter

    def redraw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        values: dict[str, tuple[float, float, float]] = self.getter()
        plt.title(self.chart_title if values else f"{self.chart_title} (no data yet)")
        if values:
            labels = list(values)
            xs = list(range(1, len(labels) + 1))
            ys = [100 * v[0] for v in values.values()]
            plt.bar(xs, ys, width=0.5)
            for x, (_, lo, hi) in zip(xs, values.values(), strict=True):  # asymmetric Wilson whisker
                plt.plot([x, x], [100 * lo, 100 * hi], color="white", marker="braille")

            plt.xticks(xs, fit_labels(labels, self.size.width))

            plt.ylim(0, 100)
        self.refresh()
