"""Chat side by side: one column per loaded variant, one prompt box, answers streaming at once."""

from __future__ import annotations

import threading
import time

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Input, Static

from engine.multichat import round_robin
from engine.runtime import GenSettings
from qtui.messages import ColumnDone, ColumnText, GenerationFinished
from qtui.screens.chat_divergence import DivergenceMixin
from qtui.widgets.chat_column import ChatColumn
from qtui.widgets.footer import Footer
from qtui.widgets.header import QtuiHeader

FLUSH_S = 1 / 30  # batch tokens per column: at most ~30 UI updates a second each


def first_divergence(base: list[int], other: list[int]) -> int | None:
    """Index of the first token of ``other`` that differs from ``base`` (None: no such token)."""
    for i, (a, b) in enumerate(zip(base, other, strict=False)):
        if a != b:
            return i
    return len(base) if len(other) > len(base) else None


class ChatScreen(DivergenceMixin, Screen):
    BINDINGS = [
        Binding(
            "escape",
            "stop_all",
            "Stop",
            tooltip="Stop every column; the prompt comes back",
            id="chat.stop",
            priority=True,
        ),
        Binding(
            "ctrl+r",
            "regenerate",
            "Regenerate",
            tooltip="Send the last prompt again",
            id="chat.regenerate",
            priority=True,
        ),
        Binding(
            "ctrl+l",
            "clear",
            "Clear",
            tooltip="Clear every column's conversation",
            id="chat.clear",
            priority=True,
        ),
        Binding(
            "ctrl+e",
            "export",
            "Export",
            tooltip="Save the conversation as Markdown and JSON",
            id="chat.export",
            priority=True,
        ),
        Binding(
            "ctrl+t",
            "toggle_divergence",
            "Divergence",
            tooltip="Colour each column's tokens by KLD from the baseline (teacher-forced on its answer)",
            id="chat.divergence",
            priority=True,
        ),
        Binding(
            "ctrl+g",
            "settings",
            "Settings",
            tooltip="Temperature, top-p, seed, max tokens",
            id="chat.settings",
            priority=True,
        ),
    ]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cancels: dict[str, threading.Event] = {}
        self.last_prompt = ""
        self.generating = False

    def compose(self) -> ComposeResult:
        yield QtuiHeader()
        yield Horizontal(id="columns")
        yield Static("", id="chat-hint", classes="note")
        yield Input(placeholder="Ask every column (Enter sends, Esc stops)", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.sync_columns()
        self.set_interval(0.5, self._refresh_hint)

    def _refresh_hint(self) -> None:
        if self.app.loading or not self.app.loaded:
            self.sync_columns()

    def on_screen_resume(self) -> None:
        self.sync_columns()
        self.query_one("#prompt", Input).focus()

    @property
    def columns(self) -> list[ChatColumn]:
        # the #columns box's own children: a streaming answer looks its column up on every flush,
        # and a query over the whole screen's DOM showed in the soak's stalls (issue 13)
        boxes = self.query("#columns")  # none before the screen is composed
        return [c for c in boxes.first().children if isinstance(c, ChatColumn)] if boxes else []

    def column(self, key: str) -> ChatColumn | None:
        for col in self.columns:
            if col.key == key:
                return col
        return None

    def sync_columns(self) -> None:
        """One column per loaded variant, in load order (the first is the baseline)."""
        boxes, hints = self.query("#columns"), self.query("#chat-hint")
        if not boxes or not hints:  # the hint's timer can fire while the app closes the screen
            return
        box = boxes.first(Horizontal)
        present = {c.key for c in self.columns}
        for key, loaded in self.app.loaded.items():
            if key not in present:
                box.mount(ChatColumn(key, loaded.name, loaded.backend, id=f"col-{len(present)}"))
                present.add(key)
        hint = hints.first(Static)
        if self.app.loading:
            hint.update("loading: " + "; ".join(self.app.loading.values()))
        elif not self.app.loaded:
            hint.update("No variant loaded yet: load one on the Models screen (F2).")
        else:
            hint.update(f"{len(self.app.loaded)} columns, greedy={self.app.settings.temperature == 0}")

    # -------------------------------------------------------------------- sending
    @on(Input.Submitted, "#prompt")
    async def _submit(self, event: Input.Submitted) -> None:
        prompt = event.value.strip()
        if not prompt:
            return
        if self.generating:
            self.app.notify("Still generating: Esc stops it", severity="warning")
            return
        if not self.columns:
            self.app.notify("Load a variant first (Models, F2)", severity="warning")
            return
        event.input.value = ""
        await self.send(prompt)

    async def send(self, prompt: str) -> None:
        self.workers.cancel_group(self, "divergence")  # the models are needed for the answer now
        self.last_prompt = prompt
        self.generating = True
        settings = self.app.gen_settings()
        jobs = {}
        for col in self.columns:
            await col.start_answer(prompt)
            self.cancels[col.key] = threading.Event()
            jobs[col.key] = col.history + [{"role": "user", "content": prompt}]
        self.generate(jobs, settings, prompt)

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def generate(self, jobs: dict[str, list[dict]], settings: GenSettings, prompt: str) -> None:
        service = self.app.service
        streams = {}
        for key, messages in jobs.items():
            try:
                streams[key] = service.stream(self.app.loaded[key], messages, settings, self.cancels[key])
            except Exception as exc:
                self.app.call_from_thread(self.app.notify, f"{key}: {exc}", severity="error")
        pending: dict[str, list[str]] = {k: [] for k in streams}
        counts = dict.fromkeys(streams, 0)
        last_flush = dict.fromkeys(streams, 0.0)
        start = time.perf_counter()

        def flush(key: str) -> None:
            if pending[key]:
                self.post_message(
                    ColumnText(key, "".join(pending[key]), counts[key], time.perf_counter() - start)
                )
                pending[key] = []
                last_flush[key] = time.perf_counter()

        def on_token(key, token) -> None:
            pending[key].append(token.text)
            counts[key] += 1
            if time.perf_counter() - last_flush[key] >= FLUSH_S:
                flush(key)

        def on_done(key, result) -> None:
            flush(key)
            self.post_message(ColumnDone(key, result))

        try:
            round_robin(streams, on_token, on_done)
        finally:
            stopped = any(e.is_set() for e in self.cancels.values())
            self.post_message(GenerationFinished(stopped))

    async def on_column_text(self, message: ColumnText) -> None:
        col = self.column(message.key)
        if col is not None:
            await col.append(message.text, message.tokens, message.elapsed)

    async def on_column_done(self, message: ColumnDone) -> None:
        col = self.column(message.key)
        loaded = self.app.loaded.get(message.key)
        if col is None or loaded is None:
            return
        await col.finish(message.result, self.last_prompt, loaded.weight_bytes)
        self.app.record_answer(loaded.name, message.result)

    def on_generation_finished(self, message: GenerationFinished) -> None:
        self.generating = False
        self.mark_divergence()
        if not message.stopped:
            self.start_token_divergence()  # qtui.screens.chat_divergence
        prompt = self.query_one("#prompt", Input)
        if message.stopped and not prompt.value:
            prompt.value = self.last_prompt  # Esc gives the prompt back
        prompt.focus()

    def on_chat_column_stop_requested(self, message: ChatColumn.StopRequested) -> None:
        event = self.cancels.get(message.key)
        if event is not None:
            event.set()

    def mark_divergence(self) -> None:
        cols = self.columns
        if len(cols) < 2 or cols[0].result is None or min(cols[0].token_ids, default=0) < 0:
            return
        for col in cols[1:]:
            if col.result is None or (col.token_ids and min(col.token_ids) < 0):
                continue  # a remote column streams text, not token ids: nothing to compare
            loaded = self.app.loaded.get(col.key)
            index = first_divergence(cols[0].token_ids, col.token_ids)
            col.show_divergence(index, lambda ids, lo=loaded: self.app.service.decode(lo, ids))

    # -------------------------------------------------------------------- actions
    def action_stop_all(self) -> None:
        if not self.generating:
            return
        for event in self.cancels.values():
            event.set()

    async def action_regenerate(self) -> None:
        if self.generating or not self.last_prompt:
            return
        for col in self.columns:
            col.history = col.history[:-2]
        await self.send(self.last_prompt)

    async def action_clear(self) -> None:
        if self.generating:
            self.action_stop_all()
        for col in self.columns:
            await col.clear()

    def action_export(self) -> None:
        path_md, path_json = self.app.export_conversation(self.columns)
        self.app.notify(f"Saved {path_md.name} and {path_json.name} in {path_md.parent}", title="Export")

    def action_settings(self) -> None:
        from qtui.screens.settings import SettingsScreen

        self.app.push_screen(SettingsScreen())
