"""Demo: a playlist of prompts played into side-by-side columns, for a presenter.

``qtui demo PLAYLIST.yaml`` (or F8 / the palette, with the sample playlist) first loads - and
quantizes where needed - every variant with visible progress, then plays the steps: a title line
per step, the prompt streamed into every column at once. Space goes on, b goes back a step, p
pauses the automatic advance (a step's ``pause``). After the last step the transcript and the
comparison table are written (engine.demo) and the table is shown. Large, high-contrast layout.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, ProgressBar, Static

from engine import demo
from engine.multichat import round_robin
from engine.runtime import GenResult, GenSettings
from qtui.widgets.chat_column import ChatColumn
from qtui.widgets.footer import Footer


@dataclass
class DemoText(Message):
    key: str
    text: str
    tokens: int
    elapsed: float


@dataclass
class DemoDone(Message):
    key: str
    result: GenResult
    step: int


@dataclass
class DemoPrepared(Message):
    error: str = ""


class DemoScreen(Screen):
    BINDINGS = [
        Binding("space", "next", "Next", tooltip="Prepare, or go on to the next step", id="demo.next", priority=True),
        Binding("b", "back", "Back", tooltip="Play the previous step again", id="demo.back", priority=True),
        Binding("p", "pause", "Pause", tooltip="Stop / resume going on by itself after a step's pause",
                id="demo.pause"),
    ]  # fmt: skip

    DEFAULT_CSS = """
    DemoScreen { background: black; color: white; }
    #demo-title {
        height: 5; content-align: center middle; text-style: bold; color: $accent;
        border: heavy $accent; background: black; margin: 0 1;
    }
    #demo-columns { height: 1fr; }
    DemoScreen ChatColumn { border: heavy $primary; }
    DemoScreen ChatColumn .col-title { height: 1; text-style: bold; }
    DemoScreen ChatColumn .col-answer { text-style: bold; }
    #demo-status { height: 1; padding: 0 1; color: $text-muted; }
    #demo-progress { height: 1; margin: 0 1; }
    #demo-table { height: auto; max-height: 12; display: none; border: heavy $success; }
    """

    def __init__(self, playlist: demo.Playlist | None = None, autostart: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.playlist = playlist
        self.autostart = autostart
        self.loaded: dict[str, object] = {}  # label -> the service's Loaded
        self.state = "idle"  # idle, preparing, ready, playing, answered, done, failed
        self.step = -1
        self.paused = False
        self.records: list[demo.StepRecord] = []
        self.transcript: str | None = None
        self.progress_text = ""
        self._cancel = threading.Event()
        self._timer: Timer | None = None
        self._pending: set[str] = set()

    def compose(self) -> ComposeResult:
        yield Static("", id="demo-title")
        yield ProgressBar(id="demo-progress", show_eta=False)
        yield Horizontal(id="demo-columns")
        yield DataTable(id="demo-table", cursor_type="none", zebra_stripes=True)
        yield Static("", id="demo-status")
        yield Footer()

    async def on_mount(self) -> None:
        if self.playlist is None:
            try:
                self.playlist = demo.load_playlist(demo.SAMPLE)
            except demo.DemoError as exc:
                self._title("Demo")
                self._status(str(exc))
                self.state = "failed"
                return
        self._title(self.playlist.title)
        self._status(
            f"{len(self.playlist.steps)} steps, {', '.join(self.playlist.labels)}: press space to prepare"
        )
        self.set_interval(0.25, self._show_progress)
        if self.autostart:
            await self.action_next()

    # -------------------------------------------------------------------- preparing
    @work(thread=True, group="demo-prepare", exclusive=True, exit_on_error=False)
    def prepare(self) -> None:
        assert self.playlist is not None
        service = self.app.service
        n = len(self.playlist.specs)
        for i, (spec, label) in enumerate(zip(self.playlist.specs, self.playlist.labels, strict=True)):

            def progress(done: int, total: int, text: str, i: int = i, label: str = label) -> None:
                self.progress_text = f"preparing {label} ({i + 1}/{n}): {text}"
                self.app.call_from_thread(self._bar, i + (done / total if total else 0.0), n)

            try:
                self.loaded[label] = service.load(spec, self.app.settings.device, progress, self._cancel)
            except Exception as exc:
                self.post_message(DemoPrepared(f"{label}: {exc}"))
                return
            self.app.call_from_thread(self._bar, i + 1, n)
        self.post_message(DemoPrepared())

    def _bar(self, done: float, total: int) -> None:
        self.query_one("#demo-progress", ProgressBar).update(total=total, progress=done)

    async def on_demo_prepared(self, message: DemoPrepared) -> None:
        self.progress_text = ""
        if message.error:
            self.state = "failed"
            self._status(f"could not prepare {message.error}")
            return
        self.query_one("#demo-progress", ProgressBar).display = False
        box = self.query_one("#demo-columns", Horizontal)
        for i, label in enumerate(self.playlist.labels if self.playlist else ()):
            loaded = self.loaded[label]
            await box.mount(ChatColumn(label, label, getattr(loaded, "backend", ""), id=f"demo-col-{i}"))
        self.state = "ready"
        self._status("ready: space plays the first step")
        await self.play(0)

    # -------------------------------------------------------------------- playing
    async def play(self, index: int) -> None:
        assert self.playlist is not None
        if self._timer is not None:
            self._timer.stop()
        self.step = index
        step = self.playlist.steps[index]
        self._title(f"{index + 1}/{len(self.playlist.steps)}  {step.title}")
        self.records = [r for r in self.records if r.step != index]
        cols = list(self.query(ChatColumn))
        for col in cols:
            await col.clear()
            await col.start_answer(step.prompt)
        self.state = "playing"
        self._pending = {c.key for c in cols}
        self._status(f"step {index + 1}: answering...")
        messages = [{"role": "user", "content": step.prompt}]
        self.stream_step(index, messages, GenSettings(max_new_tokens=step.max_tokens))

    @work(thread=True, group="demo-play", exclusive=True, exit_on_error=False)
    def stream_step(self, index: int, messages: list[dict], settings: GenSettings) -> None:
        service = self.app.service
        cancel = threading.Event()
        streams = {
            label: service.stream(loaded, messages, settings, cancel) for label, loaded in self.loaded.items()
        }
        texts: dict[str, list[str]] = {k: [] for k in streams}
        counts = dict.fromkeys(streams, 0)
        start = time.perf_counter()

        def on_token(key, token) -> None:
            texts[key].append(token.text)
            counts[key] += 1
            if counts[key] % 4 == 0:
                self.post_message(
                    DemoText(key, "".join(texts[key]), counts[key], time.perf_counter() - start)
                )
                texts[key] = []

        def on_done(key, result) -> None:
            if texts[key]:
                self.post_message(
                    DemoText(key, "".join(texts[key]), counts[key], time.perf_counter() - start)
                )
            self.post_message(DemoDone(key, result, index))

        round_robin(streams, on_token, on_done)

    async def on_demo_text(self, message: DemoText) -> None:
        col = self._column(message.key)
        if col is not None:
            await col.append(message.text, message.tokens, message.elapsed)

    async def on_demo_done(self, message: DemoDone) -> None:
        col = self._column(message.key)
        if col is None or message.step != self.step or self.playlist is None:
            return
        step = self.playlist.steps[self.step]
        await col.finish(message.result, step.prompt, getattr(self.loaded[message.key], "weight_bytes", 0))
        r = message.result
        self.records.append(
            demo.StepRecord(self.step, step.title, step.prompt, message.key, r.text, r.new_tokens, r.ttft_s,
                            r.decode_tps, list(r.flags))
        )  # fmt: skip
        self._pending.discard(message.key)
        if self._pending:
            return
        base = self.playlist.labels[0]
        base_text = next((x.text for x in self.records if x.step == self.step and x.variant == base), None)
        for rec in self.records:
            if rec.step == self.step:
                rec.same_as_baseline = rec.variant != base and rec.text == base_text
        self.state = "answered"
        last = self.step == len(self.playlist.steps) - 1
        hint = "space: the comparison table" if last else "space: next step"
        if step.pause is not None and not self.paused:
            self._status(f"{hint} (going on in {step.pause:g} s; p pauses)")
            self._timer = self.set_timer(step.pause, self.action_next)
        else:
            self._status(f"{hint}; b: back")

    def _column(self, key: str) -> ChatColumn | None:
        return next((c for c in self.query(ChatColumn) if c.key == key), None)

    # -------------------------------------------------------------------- keys
    async def action_next(self) -> None:
        if self.playlist is None:
            return
        if self.state == "idle":
            self.state = "preparing"
            self._status("preparing the variants...")
            self.prepare()
        elif self.state == "answered":
            if self.step + 1 < len(self.playlist.steps):
                await self.play(self.step + 1)
            else:
                self.finish()

    async def action_back(self) -> None:
        if self.state in ("answered", "done") and self.step >= 0:
            self.query_one("#demo-table", DataTable).display = False
            await self.play(max(self.step - (0 if self.state == "done" else 1), 0))

    def action_pause(self) -> None:
        self.paused = not self.paused
        if self.paused and self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._status(
            "paused: space goes on" if self.paused else "resumed: steps with a pause go on by themselves"
        )

    def finish(self) -> None:
        assert self.playlist is not None
        if self._timer is not None:
            self._timer.stop()
        self.state = "done"
        path = demo.write_transcript(self.playlist, self.records)
        self.transcript = str(path)
        rows = demo.summary(self.records, list(self.playlist.labels))
        table = self.query_one("#demo-table", DataTable)
        table.clear(columns=True)
        for label in ("variant", "answers", "tok/s", "TTFT ms", "tokens", "flagged", "same as baseline"):
            table.add_column(label)
        for r in rows:
            tps = "-" if r["decode_tok_s"] is None else str(r["decode_tok_s"])
            table.add_row(r["variant"], str(r["answers"]), tps, str(r["ttft_ms"]), str(r["tokens"]),
                          str(r["flagged"]), demo.same_text(r))  # fmt: skip
        table.display = True
        self._title(f"{self.playlist.title}: the comparison")
        self._status(f"transcript and table written to {path}")

    # -------------------------------------------------------------------- text
    def _title(self, text: str) -> None:
        self.query_one("#demo-title", Static).update(Text(text.upper(), style="bold"))

    def _status(self, text: str) -> None:
        self.query_one("#demo-status", Static).update(text)

    def _show_progress(self) -> None:
        if self.state == "preparing" and self.progress_text:
            self._status(self.progress_text)
