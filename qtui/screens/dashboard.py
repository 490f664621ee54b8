"""Dashboard: live charts of speed, latency, memory and size per variant (redrawn once a second)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid
from textual.screen import Screen
from textual.widgets import Footer, Header

from qtui.widgets.charts import BarChart, SeriesChart

REDRAW_S = 1.0


class DashboardScreen(Screen):
    def compose(self) -> ComposeResult:
        m = self.app.metrics
        yield Header()
        with Grid(id="charts"):
            yield SeriesChart("decode tokens/s per answer", "tok/s", lambda: m.tok_s, id="chart-toks")
            yield SeriesChart("time to first token per answer", "ms", lambda: m.ttft, id="chart-ttft")
            yield SeriesChart("memory", "MB", self._memory_series, id="chart-mem")
            yield BarChart(
                "size on disk (MB)", lambda: {k: v[0] / 1e6 for k, v in m.disk.items()}, id="chart-disk"
            )
            yield BarChart(
                "bits per weight (quantized tensors)",
                lambda: {k: v[1] for k, v in m.disk.items()},
                id="chart-bpw",
            )
        yield Footer()

    def _memory_series(self):
        m = self.app.metrics
        out = {"process RSS": m.rss}
        if len(m.cuda):
            out["CUDA allocated"] = m.cuda
        return out

    def on_mount(self) -> None:
        self.set_interval(REDRAW_S, self.redraw)
        self.redraw()

    def redraw(self) -> None:
        if not self.is_current:
            return
        for chart in self.query(SeriesChart):
            chart.redraw()
        for chart in self.query(BarChart):
            chart.redraw()
