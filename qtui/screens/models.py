"""Models: pick a source, see its saved variants, pick formats (with bits/weight and size)."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import (
    Button,
    DataTable,
    Input,
    Label,
    OptionList,
    Select,
    SelectionList,
    Static,
)
from textual.widgets.option_list import Option

from engine import typed
from qtui.services import EXPORT_LABELS, EXPORT_TARGETS
from qtui.widgets.chat_column import human_bytes
from qtui.widgets.footer import Footer
from qtui.widgets.header import QtuiHeader


class ModelsScreen(Screen):
    BINDINGS = [
        Binding(
            "ctrl+k",
            "quantize_selected",
            "Quantize",
            tooltip="Queue the selected formats",
            id="models.quantize",
            priority=True,
        ),
        Binding(
            "ctrl+o",
            "load_selected",
            "Load",
            tooltip="Load the highlighted saved variant into chat",
            id="models.load",
            priority=True,
        ),
        Binding(
            "ctrl+r",
            "refresh",
            "Refresh",
            tooltip="Rescan sources and saved variants",
            id="models.refresh",
            priority=True,
        ),
    ]

    def compose(self) -> ComposeResult:
        yield QtuiHeader()
        with Horizontal(id="models-body"):
            with Vertical(id="sources-pane", classes="pane"):
                yield Label("Sources", classes="pane-title")
                yield OptionList(id="sources")
                yield Input(placeholder="local folder or .gguf path", id="path-input")
                yield Input(placeholder="hub id (org/name)", id="hub-input")
                yield Input(placeholder="remote column: http://host:port (OpenAI API)", id="remote-input")
                yield Static("", id="source-note", classes="note")
            with Vertical(id="variants-pane", classes="pane"):
                yield Label("Saved variants", classes="pane-title")
                yield DataTable(id="variants", cursor_type="row")
                yield Select(
                    [("engine: torch (qtui)", "torch"), ("engine: llama.cpp (GGUF export)", "llama.cpp")],
                    id="engine",
                    allow_blank=False,
                    tooltip="What the chat column runs on: qtui's torch kernels, or llama.cpp on the "
                    "variant exported to GGUF (once, cached)",
                )
                yield Button("Load into chat (ctrl+o)", id="load", variant="primary")
                yield Select(
                    [(EXPORT_LABELS[t], t) for t in EXPORT_TARGETS],
                    id="export-to",
                    allow_blank=False,
                    tooltip="Export to: GGUF, the variant's own codes in ggml blocks (int2/1-bit included); "
                    "compressed-tensors: int4/int8 in pack-quantized layout (qtui export --to ...)",
                )
                yield Button(
                    "Export",
                    id="export",
                    tooltip="Write the highlighted variant in the chosen format, checked tensor by tensor",
                )
            with Vertical(id="formats-pane", classes="pane"):
                yield Label("Formats", classes="pane-title")
                yield SelectionList(id="formats")
                yield Select([("rtn", "rtn")], id="method", prompt="method", allow_blank=False)
                yield Select(
                    [
                        ("rotation: none", "none"),
                        ("rotation: hadamard", "hadamard"),
                        ("rotation: random", "random"),
                    ],
                    id="rotate",
                    allow_blank=False,
                    tooltip="rotate the residual stream first (QuaRot/SpinQuant): int2/int4 fit better; docs/methods.md",
                )
                yield Input(
                    placeholder="bit budget: bits/weight, e.g. 2.5 (empty: none)",
                    id="bits-per-weight",
                    tooltip="a format per Linear for the least output error at this average (the selected "
                    "format is the narrowest allowed; q1_0_g128: those within one bit under it); docs/methods.md",
                )
                yield Input(
                    placeholder="distill: steps [rRANK], e.g. 60 or 60 r8 (empty: none)",
                    id="distill",
                    tooltip="after the method, train the scales (and a rank-R adapter) against the 16-bit "
                    "model on the calibration text; more key=value: lr batch heldout eval_every patience seed",
                )
                yield Input(placeholder="method params: key=value ...", id="method-params")
                yield Static("", id="method-note", classes="note")
                yield Input(placeholder="calibration: builtin:16x256 or FILE[:NxLEN]", id="calibration")
                yield Select([("cpu", "cpu")], id="device", prompt="device", allow_blank=False)

                yield Button("Quantize selected (ctrl+k)", id="quantize", variant="success")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#variants", DataTable)
        for label, width in (("variant", 16), ("bits/w", 6), ("size", 9)):
            table.add_column(label, width=width, key=label)
        self.action_refresh()

    @property
    def service(self):
        return self.app.service

    def action_refresh(self) -> None:
        self.load_lists()

    @work(thread=True, exclusive=True, group="models-scan", exit_on_error=False)
    def load_lists(self) -> None:
        sources = self.service.sources()
        formats = self.service.formats()
        methods = self.service.methods()
        devices = self.service.devices()
        self.app.call_from_thread(self._fill, sources, formats, methods, devices)

    def _fill(self, sources, formats, methods, devices) -> None:
        settings = self.app.settings
        options = self.query_one("#sources", OptionList)
        options.clear_options()
        for s in sources:
            options.add_option(Option(f"{s.ref}  [dim]{s.kind}: {s.label}[/]", id=s.ref))
        if settings.model not in [s.ref for s in sources]:
            options.add_option(Option(f"{settings.model}  [dim]path[/]", id=settings.model))
        options.highlighted = next((i for i, s in enumerate(sources) if s.ref == settings.model), 0)
        picker = self.query_one("#formats", SelectionList)
        picker.clear_options()
        for f in formats:
            picker.add_option((self._format_label(f, None), f.name, f.name in settings.formats))
        self.formats = formats
        self.query_one("#method", Select).set_options([(m, m) for m in methods])
        self.query_one("#method", Select).value = (
            settings.method if settings.method in methods else methods[0]
        )
        self.query_one("#device", Select).set_options([(d, d) for d in devices])
        self.query_one("#device", Select).value = (
            settings.device if settings.device in devices else devices[0]
        )
        self.query_one("#method-params", Input).value = settings.params_text
        self.query_one("#calibration", Input).value = settings.calibration_text

        self.query_one("#source-note", Static).update(
            self.service.note if settings.model == "default" else ""
        )
        self.refresh_variants()
        self.update_sizes()

    @on(Select.Changed, "#method")
    def _method_chosen(self, event: Select.Changed) -> None:
        # under the params field: the chosen method's parameters and their defaults (wrapped)
        if event.value is not Select.BLANK:
            self.query_one("#method-note", Static).update(self.service.method_hint(str(event.value)))

    @on(OptionList.OptionSelected, "#sources")
    @on(OptionList.OptionHighlighted, "#sources")
    def _source_chosen(self, event) -> None:
        ref = event.option.id
        if ref and ref != self.app.settings.model:
            self.app.settings.model = ref
            self.app.settings.save()
            self.query_one("#source-note", Static).update(self.service.note if ref == "default" else "")
            self.refresh_variants()
            self.update_sizes()

    @on(Input.Submitted, "#path-input")
    @on(Input.Submitted, "#hub-input")
    def _typed_source(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if not value:
            return
        self.check_source(value)

    @work(thread=True, exclusive=True, group="models-check", exit_on_error=False)
    def check_source(self, ref: str) -> None:
        from engine import sources

        try:
            sources.resolve(ref)
        except Exception as exc:  # a clear message, never a crash
            self.app.call_from_thread(self.app.notify, str(exc), title="Source", severity="error")
            return
        self.app.settings.model = ref
        self.app.call_from_thread(self.action_refresh)

    @work(thread=True, exclusive=True, group="models-variants", exit_on_error=False)
    def refresh_variants(self) -> None:
        try:
            found = self.service.saved_variants(self.app.settings.model)
        except Exception as exc:
            self.app.call_from_thread(self.app.notify, str(exc), severity="error")
            found = []
        self.app.call_from_thread(self._show_variants, found)

    def _show_variants(self, found) -> None:
        table = self.query_one("#variants", DataTable)
        table.clear()
        for v in found:
            name = f"{v.fmt} {v.method}"
            table.add_row(name, f"{v.bits_per_weight:.2f}", human_bytes(v.bytes_on_disk), key=str(v.path))

    @work(thread=True, exclusive=True, group="models-sizes", exit_on_error=False)
    def update_sizes(self) -> None:
        model = self.app.settings.model
        sizes = {}
        for f in getattr(self, "formats", []):
            try:
                sizes[f.name] = self.service.expected_bytes(model, f.name)
            except Exception:
                sizes[f.name] = None
        self.app.call_from_thread(self._show_sizes, sizes)

    def _show_sizes(self, sizes) -> None:
        picker = self.query_one("#formats", SelectionList)
        chosen = set(picker.selected)
        picker.clear_options()
        for f in self.formats:
            picker.add_option((self._format_label(f, sizes.get(f.name)), f.name, f.name in chosen))

    @staticmethod
    def _format_label(f, size: int | None) -> str:
        size_text = f"~{human_bytes(size)}" if size else ""
        return f"{f.name:<13}{f.bits_per_weight:5.2f} b/w {size_text:>9}"

    def action_quantize_selected(self) -> None:
        picker = self.query_one("#formats", SelectionList)
        chosen = list(picker.selected)
        if not chosen:
            self.app.notify("Pick at least one format first", severity="warning")
            return
        settings = self.app.settings
        settings.formats = chosen
        settings.method = str(self.query_one("#method", Select).value)
        settings.device = str(self.query_one("#device", Select).value)
        params = self.query_one("#method-params", Input).value.strip()
        calibration = self.query_one("#calibration", Input).value.strip()
        rotate = str(self.query_one("#rotate", Select).value)
        bits = self.query_one("#bits-per-weight", Input).value.strip()
        distill = self.query_one("#distill", Input).value.strip()
        service = self.app.service
        requests = []
        try:  # bad input is a message here, not a failed job later: one typed request per format
            for fmt in chosen:
                if fmt not in ("bf16", "f16"):
                    requests.append(service.quantize_request(
                        settings.model, fmt, settings.method, params, calibration, settings.device, rotate,
                        bits, distill,
                    ))  # fmt: skip
        except Exception as exc:
            self.app.notify(str(exc), title="Quantize", severity="error")
            return
        if requests:  # remembered as parsed values
            settings.method_params = typed.changed(requests[0].config)
            calib = requests[0].calibration
            settings.calibration = typed.values(calib) if calib is not None else None
        settings.save()
        if any(fmt in ("bf16", "f16") for fmt in chosen):
            self.app.load_variant(settings.model)
        for request in requests:
            self.app.enqueue_quantize(request)

        self.app.switch_to("quantize")

    def action_load_selected(self) -> None:
        table = self.query_one("#variants", DataTable)
        if table.row_count == 0:
            self.app.notify("No saved variant to load; quantize one first", severity="warning")
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        engine = self.query_one("#engine", Select).value
        self.app.load_variant(f"{key}@llama.cpp" if engine == "llama.cpp" else key)
        self.app.switch_to("chat")

    @on(Button.Pressed, "#export")
    def _export_pressed(self) -> None:
        table = self.query_one("#variants", DataTable)
        if table.row_count == 0:
            self.app.notify("No saved variant to export; quantize one first", severity="warning")
            return
        target = str(self.query_one("#export-to", Select).value)
        self.export_variant(str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value), target)

    @work(thread=True, exclusive=True, group="models-export", exit_on_error=False)
    def export_variant(self, path: str, target: str) -> None:
        import threading

        from engine.variants import describe_error

        label = EXPORT_LABELS[target].split(" (")[0]
        self.app.call_from_thread(self.app.notify, f"exporting {path} to {label}...", title="Export")
        try:
            line = self.service.export_variant(
                path, target, lambda done, total, text: None, threading.Event()
            )
        except Exception as exc:  # a one-line reason, never a crash
            self.app.call_from_thread(self.app.notify, describe_error(exc), title="Export", severity="error")
            return
        self.app.call_from_thread(self.app.notify, line, title=f"Exported {label}", timeout=15)

    @on(Input.Submitted, "#remote-input")
    def _remote_typed(self, event: Input.Submitted) -> None:
        """A column on an OpenAI-compatible server (llama-server, vLLM, LM Studio, ollama)."""
        url = event.value.strip()
        if not url:
            return
        from engine.errors import QtuiError
        from engine.remote import Endpoint

        try:
            Endpoint.parse(url)
        except QtuiError as exc:
            self.app.notify(str(exc), title="Remote", severity="error")
            return
        self.app.load_variant(f"remote:{url}")
        self.app.switch_to("chat")

    @on(Button.Pressed, "#quantize")
    def _quantize_pressed(self) -> None:
        self.action_quantize_selected()

    @on(Button.Pressed, "#load")
    def _load_pressed(self) -> None:
        self.action_load_selected()
