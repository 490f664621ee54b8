"""Dashboard charts (textual-plotext), redrawn from ring buffers on a timer, never per token.

plotext draws in pure Python: a chart of four 300-point series took 220-520 ms on the 2-core build
machine, and textual-plotext draws in ``render()``, on the event loop, each time the widget is
refreshed (every second while the Dashboard shows, and at every visit). So a chart here draws in a
thread: :meth:`Chart.redraw` (UI thread, from the Dashboard's timer) copies the data and starts a
thread only when the data, the size or the theme changed; ``render()`` shows the latest drawing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

from rich.text import Text
from textual import work
from textual.app import RenderResult
from textual_plotext import PlotextPlot
from textual_plotext.plot import Plot

from engine.telemetry import RingBuffer


class Chart(PlotextPlot):
    """A plotext chart drawn off the event loop; subclasses say what data it shows
    (:meth:`data`: hashable, copied on the UI thread) and how to draw it (:meth:`draw`)."""

    def __init__(self, title: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.chart_title = title
        self._text: Text | None = None  # the latest drawing
        self._wanted: tuple | None = None  # (data, width, height, theme) asked for last
        self._shown: tuple | None = None  # ... and the one on screen
        self._plot_lock = threading.Lock()  # one drawing at a time on the widget's Plot

    @property
    def drawn(self) -> bool:
        """Whether the chart shows the last drawing asked for (tests wait for it)."""
        return self._shown is not None and self._wanted == self._shown

    def data(self) -> Hashable:
        raise NotImplementedError

    def draw(self, plt: Plot, data, width: int) -> None:
        raise NotImplementedError

    def redraw(self) -> None:
        width, height = self.size
        if not width or not height:
            return  # not laid out yet: render() asks again
        key = (self.data(), width, height, self._get_plotext_theme_name(self.app.theme))
        if key != self._wanted:
            self._wanted = key
            self._draw(key)

    @work(thread=True, group="chart", exit_on_error=False)
    def _draw(self, key: tuple) -> None:
        data, width, height, theme = key
        with self._plot_lock:
            if key != self._wanted:
                return  # a newer drawing was asked for meanwhile
            plt = self.plt
            plt.clear_data()
            plt.clear_figure()
            self.draw(plt, data, width)
            # then as textual-plotext's render() does (the order decides the lines' colours)
            plt.plotsize(width, height)
            plt._set_size(width, height)  # its issue 5
            plt.theme(theme)
            text = Text.from_ansi(plt.build())
        self.app.call_from_thread(self._show, key, text)

    def _show(self, key: tuple, text: Text) -> None:
        if key == self._wanted:
            self._text, self._shown = text, key
            self.refresh()

    def render(self) -> RenderResult:
        now = (*self.size, self._get_plotext_theme_name(self.app.theme))
        if self._shown is None or self._shown[1:] != now:
            self.call_later(self.redraw)  # first shown, resized or a new theme: draw again
        return self._text if self._text is not None else Text(self.chart_title)


def _points(buf: RingBuffer) -> tuple[tuple[float, float], ...]:
    return tuple(buf.snapshot())


class SeriesChart(Chart):
    """Lines over time, one per series, from a ``name -> RingBuffer`` mapping getter."""

    def __init__(
        self, title: str, ylabel: str, getter: Callable[[], dict[str, RingBuffer]], **kwargs
    ) -> None:
        super().__init__(title, **kwargs)
        self.ylabel = ylabel
        self.getter = getter

    def data(self) -> Hashable:
        return tuple((name, _points(buf)) for name, buf in self.getter().items())

    def draw(self, plt: Plot, data, width: int) -> None:
        plt.title(self.chart_title)
        plt.ylabel(self.ylabel)
        t0 = min((points[0][0] for _, points in data if points), default=0.0)
        for name, points in data:
            if points:
                plt.plot([t - t0 for t, _ in points], [v for _, v in points], label=name, marker="braille")
        if not any(points for _, points in data):
            plt.title(f"{self.chart_title} (no data yet)")
        plt.xlabel("seconds")


class BarChart(Chart):
    """Bars, one per variant, from a ``name -> value`` mapping getter."""

    def __init__(self, title: str, getter: Callable[[], dict[str, float]], **kwargs) -> None:
        super().__init__(title, **kwargs)
        self.getter = getter

    def data(self) -> Hashable:
        return tuple(self.getter().items())

    def draw(self, plt: Plot, data, width: int) -> None:
        values = dict(data)
        plt.title(self.chart_title if values else f"{self.chart_title} (no data yet)")
        if values:
            # numeric positions + explicit ticks: plotext's layout of string categories varies
            # from run to run (string hashing), which the snapshot tests caught
            xs = list(range(1, len(values) + 1))
            plt.bar(xs, list(values.values()), width=0.5)
            plt.xticks(xs, fit_labels(list(values), width))


def fit_labels(labels: list[str], width: int) -> list[str]:
    """Labels short enough to sit side by side under their bars without colliding."""
    room = max(4, (width - 10) // max(len(labels), 1) - 1)
    return [label if len(label) <= room else label[: room - 1] + "…" for label in labels]


class IntervalChart(Chart):
    """Bars with error whiskers, from a ``label -> (value, low, high)`` mapping getter (0..1 -> %)."""

    def __init__(
        self, title: str, getter: Callable[[], dict[str, tuple[float, float, float]]], **kwargs
    ) -> None:
        super().__init__(title, **kwargs)
        self.getter = getter

    def data(self) -> Hashable:
        return tuple(self.getter().items())

    def draw(self, plt: Plot, data, width: int) -> None:
        values = dict(data)
        plt.title(self.chart_title if values else f"{self.chart_title} (no data yet)")
        if values:
            labels = list(values)
            xs = list(range(1, len(labels) + 1))
            ys = [100 * v[0] for v in values.values()]
            plt.bar(xs, ys, width=0.5)
            for x, (_, lo, hi) in zip(xs, values.values(), strict=True):  # asymmetric Wilson whisker
                plt.plot([x, x], [100 * lo, 100 * hi], color="white", marker="braille")

            plt.xticks(xs, fit_labels(labels, width))

            plt.ylim(0, 100)
