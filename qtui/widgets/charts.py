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
            plt.bar(list(values), list(values.values()))
        self.refresh()
