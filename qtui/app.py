"""The qtui Textual app: Models, Quantize, Chat (side by side), Dashboard, Help.

Engine work runs in thread workers; workers write job state or post messages, widgets redraw
from state on timers. Nothing long runs on the UI thread.
"""

from __future__ import annotations

import gc
import json
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.command import Hit, Hits, Provider

from engine import paths
from engine.runtime import GenResult, GenSettings
from engine.telemetry import Ticker, cuda_allocated_bytes, rss_bytes
from qtui.config import Settings
from qtui.heap import Freezer, tune_collector
from qtui.screens.registry import SCREENS
from qtui.services import EngineService, Loaded, Service
from qtui.state import Metrics, QuantJob

if TYPE_CHECKING:
    from engine.request import QuantRequest


class QtuiCommands(Provider):
    """Every app action in the command palette."""

    def _commands(self):
        app = self.app
        screens = [
            (name, help_text, partial(app.switch_to, entry.name))
            for entry in SCREENS
            for name, help_text in entry.palette_entries()
        ]
        return [
            (
                "New chat (clear columns)",
                "Clear every column's conversation",
                partial(app.run_action, "chat_clear"),
            ),
            *screens,
            (
                "Export conversation",
                "Save the chat as Markdown and JSON",
                partial(app.run_action, "chat_export"),
            ),
            (
                "Generation settings",
                "Temperature, top-p, seed, max tokens",
                partial(app.run_action, "chat_settings"),
            ),
            ("Switch theme", "Cycle light / dark themes", app.action_next_theme),
            ("Help", "Every key binding", app.action_help),
        ]

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)

    async def discover(self) -> Hits:
        for name, help_text, callback in self._commands():
            yield Hit(1.0, name, callback, help=help_text)


class QtuiApp(App):
    TITLE = "qtui"
    SUB_TITLE = "what quantization does to a language model"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {QtuiCommands}
    BINDINGS = [
        Binding("f1", "help", "Help", tooltip="Every key binding", id="app.help"),
        *(entry.binding() for entry in SCREENS),
        Binding("ctrl+q", "quit", "Quit", tooltip="Quit qtui", id="app.quit", priority=True),
    ]

    def __init__(
        self,
        service: Service | None = None,
        autoload: bool = True,
        settings: Settings | None = None,
        sample_resources: bool = True,
    ) -> None:
        super().__init__()
        self.service = service or EngineService()
        self.settings = settings or Settings.load()
        self.settings.on_error = self._settings_not_saved  # an unwritable settings.json is a notice
        self.autoload = autoload
        self.jobs: dict[int, QuantJob] = {}
        self.loaded: dict[str, Loaded] = {}
        self.loading: dict[str, str] = {}
        self.metrics = Metrics()
        self.freezer = Freezer()  # gc.freeze when something long-lived came (qtui.heap)
        self.eval_results: list = []  # engine.evals TaskResults of this session, newest last

        self.sampling = sample_resources  # off in snapshot tests (RSS is not deterministic)
        self._sampler: Ticker | None = None

    # -------------------------------------------------------------------- lifecycle
    def on_mount(self) -> None:
        tune_collector()  # fewer, cheaper full collections: see qtui.heap
        if self.settings.theme in self.available_themes:
            self.theme = self.settings.theme
        for entry in SCREENS:
            self.install_screen(entry.screen(), name=entry.name)
        self.push_screen("chat" if self.autoload else "models")
        if self.sampling:  # in a thread: a read of /proc showed in the soak's UI stalls (issue 13)
            self._sampler = Ticker(1.0, self.sample_resources, "qtui-resources").start()
        if self.autoload:
            self.bootstrap()

    def on_unmount(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()

    def _settings_not_saved(self, message: str) -> None:
        self.notify(message, title="Settings", severity="warning", timeout=10)

    def watch_theme(self, theme: str) -> None:
        if self.settings.theme != theme:
            self.settings.theme = theme
            self.settings.save()

    def sample_resources(self) -> None:
        """Every second, in the sampler's thread (the ring buffers lock; charts read them later)."""
        self.metrics.rss.append(rss_bytes() / 1e6)
        cuda = cuda_allocated_bytes()
        if cuda:
            self.metrics.cuda.append(cuda / 1e6)

    def gen_settings(self) -> GenSettings:
        return self.settings.generation()

    # -------------------------------------------------------------------- navigation
    def action_switch_to(self, name: str) -> None:
        self.switch_to(name)

    def switch_to(self, name: str) -> None:
        if self.screen is self.get_screen(name):
            return
        while len(self.screen_stack) > 2:  # close modals first
            self.pop_screen()
        self.switch_screen(name)

    def action_help(self) -> None:
        from qtui.screens.help import HelpScreen

        self.push_screen(HelpScreen())

    def action_next_theme(self) -> None:
        themes = sorted(self.available_themes)
        self.theme = (
            themes[(themes.index(self.theme) + 1) % len(themes)] if self.theme in themes else themes[0]
        )

    async def action_chat_clear(self) -> None:
        await self.get_screen("chat").action_clear()

    def action_chat_export(self) -> None:
        self.get_screen("chat").action_export()

    def action_chat_settings(self) -> None:
        self.get_screen("chat").action_settings()

    # -------------------------------------------------------------------- start-up
    @work(thread=True, group="bootstrap", exit_on_error=False)
    def bootstrap(self) -> None:
        """Load the baseline and the default formats, quantizing those not saved yet."""
        model = self.settings.model
        self._load_now(model)
        saved = {v.fmt: v for v in self._saved(model) if v.method == self.settings.method}

        missing = [fmt for fmt in self.settings.formats if fmt not in saved]
        for fmt in self.settings.formats:
            if fmt in saved:
                self._load_now(str(saved[fmt].path))
        if not missing:
            self.service.release_sources()
        for fmt in missing:
            request = self.service.quantize_request(
                model, fmt, self.settings.method, device=self.settings.device
            )
            self.call_from_thread(self.enqueue_quantize, request, True)

    def _saved(self, model: str):
        try:
            return self.service.saved_variants(model)
        except Exception:
            return []

    # -------------------------------------------------------------------- loading variants
    def load_variant(self, spec: str) -> None:
        self.load_worker(spec)

    @work(thread=True, group="load", exit_on_error=False)
    def load_worker(self, spec: str) -> None:
        self._load_now(spec)

    def _load_now(self, spec: str) -> None:
        import threading

        if spec in self.loaded:
            return
        label = Path(spec).name if "/" in spec else spec
        self.loading[spec] = "starting"
        self.call_from_thread(self._loaded_changed)

        started = time.monotonic()

        def progress(done: int, total: int, text: str) -> None:
            # one-step stages (converting, loading) have no fraction: show time spent instead
            pct = f" {100 * done / total:.0f}%" if total > 1 else f" ({time.monotonic() - started:.0f}s)"
            self.loading[spec] = f"{label}: {text}{pct}"

        try:
            loaded = self.service.load(spec, self.settings.device, progress, threading.Event())
        except Exception as exc:
            self.loading.pop(spec, None)
            self.call_from_thread(
                self.notify,
                f"could not load {label}: {exc}",
                title="Load failed",
                severity="error",
                timeout=10,
            )
            self.call_from_thread(self._loaded_changed)
            return
        self.loading.pop(spec, None)
        self.loaded[spec] = loaded
        self.metrics.disk[loaded.name] = (loaded.bytes_on_disk, loaded.bits_per_weight)
        self.call_from_thread(self._loaded_changed)

    def _loaded_changed(self) -> None:
        # Models are large, long-lived object graphs: move them out of the cyclic GC's reach, or
        # every full collection walks them all and stalls the UI (measured: up to 300 ms pauses)
        self.freezer.settle(self.loaded.values())
        chat = self.get_screen("chat")

        if chat.is_mounted:
            chat.sync_columns()

    # -------------------------------------------------------------------- quantization queue
    def enqueue_quantize(self, request: QuantRequest, then_load: bool = False) -> QuantJob:
        job = QuantJob(request, then_load=then_load)
        self.jobs[job.id] = job
        self.run_queue()
        if then_load and self.screen is self.get_screen("chat"):
            self.switch_to("quantize")  # show the progress of what make run is waiting for
        return job

    @work(thread=True, exclusive=True, group="quantize", exit_on_error=False)
    def run_queue(self) -> None:
        """Run queued jobs one at a time (a second start while running just picks up new jobs)."""
        while True:
            job = next((j for j in self.jobs.values() if j.status == "queued"), None)
            if job is None:
                if not self.loading:
                    self.service.release_sources()  # the float model is not needed to chat
                return
            self._run_job(job)

    def _run_job(self, job: QuantJob) -> None:
        from engine.errors import Cancelled

        job.status, job.started = "running", time.monotonic()
        try:
            job.estimate = self.service.memory_estimate(job.request, job.progress, job.cancel)
            info = self.service.quantize(job.request, job.progress, job.cancel)
        except Cancelled:
            job.status = "cancelled"
        except Exception as exc:
            job.status, job.error = "failed", str(exc) or type(exc).__name__
            self.call_from_thread(
                self.notify,
                f"{job.label}: {job.error}",
                title="Quantization failed",
                severity="error",
                timeout=10,
            )
        else:
            # a cancel that arrives after the last layer is too late: the variant is saved whole
            job.status, job.bytes_on_disk = "done", info.bytes_on_disk
            if job.then_load:
                self._load_now(str(info.path))
                self.call_from_thread(self._after_bootstrap_job)
            else:
                self.call_from_thread(self._job_saved, job)

        finally:
            job.finished = time.monotonic()
            gc.collect()  # the job's model and reports, at once (and never pinned by a freeze)
            self.freezer.settle()  # only what quantizing imported: see qtui.heap

    def _after_bootstrap_job(self) -> None:
        pending = [j for j in self.jobs.values() if j.then_load and j.status in ("queued", "running")]
        if not pending and self.screen is self.get_screen("quantize"):
            self.switch_to("chat")

    def _job_saved(self, job: QuantJob) -> None:
        self.notify(f"{job.label} saved; load it into chat from Models (ctrl+o)", title="Quantized")
        models = self.get_screen("models")
        if models.is_mounted:
            models.refresh_variants()

    def cancel_job(self, job_id: int) -> None:

        job = self.jobs.get(job_id)
        if job is None or job.status not in ("queued", "running"):
            return
        job.cancel.set()
        if job.status == "queued":
            job.status = "cancelled"

    # -------------------------------------------------------------------- results
    def record_answer(self, name: str, result: GenResult) -> None:
        now = time.monotonic()
        if result.decode_tps:
            self.metrics.series(self.metrics.tok_s, name).append(result.decode_tps, now)
        if result.ttft_s:
            self.metrics.series(self.metrics.ttft, name).append(result.ttft_s * 1000, now)

    def record_eval(self, result) -> None:
        """Keep an evaluation result and feed the dashboard's accuracy / fidelity charts."""
        self.eval_results.append(result)
        if result.mode == "fidelity":
            self.metrics.fidelity[result.variant] = (
                result.metrics.get("kld_mean", 0.0),
                result.accuracy.value,
            )
        else:
            lo, hi = result.accuracy.interval
            self.metrics.accuracy[f"{result.variant} {result.task}/{result.mode}"] = (
                result.accuracy.value,
                lo,
                hi,
            )

    def export_conversation(self, columns) -> tuple[Path, Path]:

        folder = paths.data_dir() / "exports"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        settings = self.gen_settings().__dict__
        data = []
        md = [f"# qtui conversation {stamp}", "", f"Settings: `{json.dumps(settings)}`", ""]
        for col in columns:
            loaded = self.loaded.get(col.key)
            r = col.result
            stats = (
                None
                if r is None
                else {
                    "new_tokens": r.new_tokens,
                    "ttft_s": r.ttft_s,
                    "decode_tok_s": r.decode_tps,
                    "prefill_tok_s": r.prefill_tps,
                    "finish": r.finish,
                    "flags": r.flags,
                    "peak_rss": r.peak_rss,
                    "peak_cuda": r.peak_cuda,
                }
            )
            data.append(
                {
                    "variant": col.title,
                    "backend": col.backend,
                    "weight_bytes": loaded.weight_bytes if loaded else None,
                    "settings": settings,
                    "messages": col.history,
                    "last_stats": stats,
                }
            )
            md += [f"## {col.title}", "", f"backend: {col.backend}", ""]
            for msg in col.history:
                md += [f"**{msg['role']}**: {msg['content']}", ""]
            if stats:
                md += [
                    f"_last answer: {r.new_tokens} tokens, {r.decode_tps:.1f} tok/s, "
                    f"ttft {r.ttft_s * 1000:.0f} ms, {r.finish}{', ' + ', '.join(r.flags) if r.flags else ''}_",
                    "",
                ]
        path_md = folder / f"chat-{stamp}.md"
        path_json = folder / f"chat-{stamp}.json"
        path_md.write_text("\n".join(md))
        path_json.write_text(json.dumps(data, indent=1))
        return path_md, path_json


def run(autoload: bool = True) -> int:
    QtuiApp(autoload=autoload).run()
    return 0
