"""One chat column: a variant's answers, streamed in, with a status line and badges."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Markdown, Static

from engine.runtime import GenResult
from engine.units import human_bytes
from qtui.textsafe import visible


class ChatColumn(Vertical, can_focus=True):
    """Answers of one variant. Focus it and press ``s`` to stop just this column."""

    BINDINGS = [
        Binding(
            "s", "stop_column", "Stop column", tooltip="Stop generating in this column only", id="column.stop"
        ),
    ]

    class StopRequested(Message):
        def __init__(self, key: str) -> None:
            self.key = key
            super().__init__()

    def __init__(self, key: str, title: str, backend: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.key = key
        self.title = title
        self.backend = backend
        self.history: list[dict] = []
        self.answer_text = ""
        self.token_ids: list[int] = []
        self.result: GenResult | None = None
        self._stream = None
        self._answer: Markdown | None = None
        self._stats = Text()
        self.running = False

    def compose(self) -> ComposeResult:
        yield Static(Text.assemble((self.title, "bold"), "  ", (self.backend, "dim")), classes="col-title")
        yield VerticalScroll(classes="col-body")
        yield Static("ready", classes="col-status")

    @property
    def body(self) -> VerticalScroll:
        return self.query_one(".col-body", VerticalScroll)

    @property
    def status(self) -> Static:
        return self.query_one(".col-status", Static)

    def _at_bottom(self) -> bool:
        body = self.body
        return body.scroll_y >= body.max_scroll_y - 1

    async def start_answer(self, prompt: str) -> None:
        follow = self._at_bottom()
        self.answer_text = ""
        self.result = None
        self.running = True
        self.remove_class("same-as-baseline")
        await self.body.mount(Static(Text("> " + visible(prompt), style="bold"), classes="col-prompt"))
        self._answer = Markdown("", classes="col-answer")
        await self.body.mount(self._answer)
        self._stream = Markdown.get_stream(self._answer)
        self.status.update("prefill...")
        if follow:
            self.body.scroll_end(animate=False)

    async def append(self, text: str, tokens: int, elapsed: float) -> None:
        if not text or self._stream is None:
            return
        follow = self._at_bottom()
        self.answer_text += text
        await self._stream.write(visible(text))  # a model's escape sequences are shown, not obeyed
        rate = tokens / elapsed if elapsed > 0 else 0.0
        self.status.update(f"{tokens} tok, ~{rate:.1f} tok/s")
        if follow:
            self.body.scroll_end(animate=False)

    async def finish(self, result: GenResult, prompt: str, weight_bytes: int) -> None:
        self.running = False
        self.result = result
        self.token_ids = list(result.token_ids)
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        if self._answer is not None and result.text != self.answer_text:
            await self._answer.update(visible(result.text))  # catch any text still in flight
        self.answer_text = result.text
        self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": result.text}]
        self._stats = self.stats_text(result, weight_bytes)
        self.status.update(self._stats)

    def stats_text(self, result: GenResult, weight_bytes: int) -> Text:
        text = Text()
        text.append(f"{result.new_tokens} tok  ttft {result.ttft_s * 1000:.0f} ms  ")
        text.append(f"{result.decode_tps:.1f} tok/s", style="bold")
        text.append(f"  mem {human_bytes(weight_bytes)} / peak RSS {human_bytes(result.peak_rss)}")
        if result.peak_cuda:
            text.append(f" / VRAM {human_bytes(result.peak_cuda)}")
        for flag in result.flags + (["stopped"] if result.stopped else []):
            text.append(f" [{flag}]", style="bold reverse red" if flag != "stopped" else "bold yellow")
        error = getattr(result, "error", "")  # a llama.cpp / remote column that failed (engine.columns)
        if error:
            text.append(f"\n{error}", style="bold red")
        return text

    def show_divergence(self, index: int | None, tokenizer_decode=None) -> None:
        """Highlight where this column's tokens first depart from the baseline column."""
        if self._answer is None or self.result is None:
            return
        if index is None:
            self.add_class("same-as-baseline")
            self._answer.tooltip = "identical to the baseline column"
            self.status.update(self._stats + Text("  = baseline", style="green"))
            return
        self.status.update(self._stats + Text(f"  departs at token {index + 1}", style="magenta"))
        prefix = tokenizer_decode(self.token_ids[:index]) if tokenizer_decode else ""
        rest = self.answer_text[len(prefix) :] if self.answer_text.startswith(prefix) else self.answer_text
        if not self.answer_text.startswith(prefix):
            prefix = ""
        lead = len(rest) - len(rest.lstrip())
        body = rest[lead:]
        token = (tokenizer_decode(self.token_ids[index : index + 1]) if tokenizer_decode else "").strip()
        n = len(token) if token and body.startswith(token) else max(len(body.split(" ")[0]), 1)
        marked = Text(visible(prefix + rest[:lead]))
        marked.append(visible(body[:n]), style="bold reverse magenta")  # the first departing token
        marked.append(visible(body[n:]))
        divergence = Static(marked, classes="col-answer col-diverged")
        divergence.tooltip = f"departs from the baseline at token {index + 1}"
        self._answer.display = False
        self._answer.parent.mount(divergence, after=self._answer)

    async def clear(self) -> None:
        self.history.clear()
        self.answer_text = ""
        self.token_ids = []
        self.result = None
        await self.body.remove_children()
        self.status.update("ready")

    def action_stop_column(self) -> None:
        self.post_message(self.StopRequested(self.key))
