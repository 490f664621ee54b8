"""Token-level divergence in the Chat screen: after every column has answered, a worker feeds the
baseline's answer through each other variant (engine.divergence) and each non-baseline column gets
the baseline's answer coloured token by token by that variant's KLD, with a legend and the first
token past the threshold marked. ``ctrl+t`` shows or hides it (hidden at first)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import work
from textual.message import Message
from textual.widgets import Static
from textual.worker import get_current_worker

from engine.divergence import Divergence

# (upper bound of KLD in nats, background colour, legend label)
SCALE = (
    (0.1, "#2e7d32", "<0.1"),
    (0.5, "#f9a825", "<0.5"),
    (2.0, "#ef6c00", "<2"),
    (float("inf"), "#c62828", "≥2"),
)


def kld_style(kld: float) -> str:
    for bound, colour, _ in SCALE:
        if kld < bound:
            return f"black on {colour}" if bound <= 0.5 else f"white on {colour}"
    return "white on #c62828"


def legend(threshold: float) -> Text:
    t = Text("KLD vs baseline: ", style="dim")
    lower = 0.0
    for bound, _, label in SCALE:
        t.append(f" {label} ", style=kld_style(lower))
        t.append(" ")
        lower = bound
    t.append(f"  first token over {threshold:g}: ", style="dim")
    t.append("underlined", style="bold underline")
    return t


def render(d: Divergence) -> Text:
    """The baseline's answer, each token on this variant's KLD colour; the first departure marked."""
    t = Text()
    t.append("baseline's answer, coloured by this variant's KLD (ctrl+t hides)\n", style="dim italic")
    for tok in d.tokens:
        style = kld_style(tok.kld)
        if tok.index == d.first_over:
            style += " bold underline"
        t.append(tok.text or "·", style=style)
    t.append("\n")
    t.append_text(legend(d.threshold))
    where = (
        f"first over {d.threshold:g} at token {d.first_over + 1} ({d.tokens[d.first_over].text.strip()!r})"
        if d.first_over is not None
        else f"no token over {d.threshold:g}"
    )
    t.append(
        f"\nmean KLD {d.mean_kld:.3f}, max {d.max_kld:.2f}, top-1 agreement {100 * d.top1_agreement:.0f}%, "
        f"{where}",
        style="dim",
    )
    return t


class TokenDivergenceView(Static):
    DEFAULT_CSS = "TokenDivergenceView { margin-top: 1; height: auto; }"

    def __init__(self, result: Divergence, **kwargs) -> None:
        super().__init__(render(result), classes="col-token-divergence", **kwargs)
        self.result = result


@dataclass
class DivergenceReady(Message):
    key: str
    result: Divergence | None
    error: str = ""


class DivergenceMixin:
    """What the Chat screen gains (it subclasses this before ``Screen``)."""

    show_token_divergence = False

    def start_token_divergence(self) -> None:
        cols = self.columns  # type: ignore[attr-defined]
        if len(cols) < 2 or cols[0].result is None or not cols[0].token_ids or cols[0].result.stopped:
            return
        app = self.app  # type: ignore[attr-defined]
        base = app.loaded.get(cols[0].key)
        jobs = [(c.key, app.loaded[c.key]) for c in cols[1:] if c.result is not None and c.key in app.loaded]
        if base is None or not jobs:
            return
        messages = cols[0].history[:-1]  # the conversation up to this prompt (the answer is last)
        self.divergence_worker(base, jobs, messages, list(cols[0].token_ids), app.gen_settings().system)

    @work(thread=True, group="divergence", exclusive=True, exit_on_error=False)
    def divergence_worker(self, base, jobs, messages, answer_ids, system) -> None:
        cancel = get_current_worker().cancelled_event
        for key, loaded in jobs:
            if cancel.is_set():
                return
            try:
                result = self.app.service.divergence(base, loaded, messages, answer_ids, system, cancel)  # type: ignore[attr-defined]
            except Exception as exc:
                self.post_message(DivergenceReady(key, None, str(exc) or type(exc).__name__))  # type: ignore[attr-defined]
                continue
            self.post_message(DivergenceReady(key, result))  # type: ignore[attr-defined]

    async def on_divergence_ready(self, message: DivergenceReady) -> None:
        col = self.column(message.key)  # type: ignore[attr-defined]
        if col is None:
            return
        if message.result is None:
            col.status.update(f"token divergence failed: {message.error}")
            return
        view = TokenDivergenceView(message.result)
        view.display = self.show_token_divergence
        await col.body.mount(view)
        if self.show_token_divergence:
            col.body.call_after_refresh(col.body.scroll_end, animate=False)

    def action_toggle_divergence(self) -> None:
        self.show_token_divergence = not self.show_token_divergence
        views = list(self.query(TokenDivergenceView))  # type: ignore[attr-defined]
        for view in views:
            view.display = self.show_token_divergence
            if self.show_token_divergence and view.parent is not None:
                view.parent.call_after_refresh(view.parent.scroll_end, animate=False)
        if self.show_token_divergence and not views:
            self.app.notify("Token divergence shows after the next answer of two or more columns")  # type: ignore[attr-defined]
