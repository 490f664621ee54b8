"""Dashboard: live charts of speed, latency, memory and size per variant (redrawn once a second)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid
from textual.screen import Screen
from textual.widgets import DataTable

from qtui.widgets.charts import BarChart, IntervalChart, SeriesChart
from qtui.widgets.footer import Footer
from qtui.widgets.header import QtuiHeader

REDRAW_S = 1.0


class DashboardScreen(Screen):
    def compose(self) -> ComposeResult:
        m = self.app.metrics
        yield QtuiHeader()
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
            yield DataTable(id="summary", cursor_type="none", zebra_stripes=True)
            yield IntervalChart(
                "accuracy (bars: value, whiskers: 95% interval)", lambda: m.accuracy, id="chart-acc"
            )
            yield BarChart(
                "KL divergence vs baseline (lower is closer)",
                lambda: {k: v[0] for k, v in m.fidelity.items()},
                id="chart-kld",
            )

        yield Footer()

    def _memory_series(self):
        m = self.app.metrics
        out = {"process RSS": m.rss}
        if len(m.cuda):
            out["CUDA allocated"] = m.cuda
        return out

    def on_mount(self) -> None:
        table = self.query_one("#summary", DataTable)
        for label in ("variant", "tok/s", "ttft ms", "MB disk", "bits/w", "backend"):
            table.add_column(label, key=label)
        self.set_interval(REDRAW_S, self.redraw)
        self.redraw()

    def redraw(self) -> None:
        if not self.is_current:
            return
        for chart in self.query(SeriesChart):
            chart.redraw()
        for chart in self.query(BarChart):
            chart.redraw()
        for chart in self.query(IntervalChart):
            chart.redraw()

        self._summary()

    def _summary(self) -> None:
        """Latest figures per loaded variant, the table beside the charts."""
        m = self.app.metrics
        table = self.query_one("#summary", DataTable)
        table.clear()
        for loaded in self.app.loaded.values():
            tok = m.tok_s.get(loaded.name)
            ttft = m.ttft.get(loaded.name)
            last_tok = f"{tok.snapshot()[-1][1]:.1f}" if tok and len(tok) else "-"
            last_ttft = f"{ttft.snapshot()[-1][1]:.0f}" if ttft and len(ttft) else "-"
            table.add_row(
                loaded.name,
                last_tok,
                last_ttft,
                f"{loaded.bytes_on_disk / 1e6:.1f}",
                f"{loaded.bits_per_weight:.2f}",
                loaded.backend,
            )
