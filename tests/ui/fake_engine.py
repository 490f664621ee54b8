"""A scripted, deterministic stand-in for :class:`qtui.services.EngineService`.

Answers are fixed word lists per variant; every token takes ``token_delay`` seconds; quantization
walks ``layers`` steps and honours the cancel event between them. Nothing touches torch.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from engine.errors import Cancelled, QtuiError
from engine.runtime import GenResult, GenSettings, Token
from engine.sources import ModelSource
from qtui.services import FormatInfo, Loaded, VariantInfo

ANSWERS = {
    "bf16": "The capital of France is Paris.",
    "int4-g64-rtn": "The capital of France is Paris, France.",
    "int2-g64-rtn": "comm comm comm comm comm comm comm comm comm comm comm comm",
}


VOCAB: dict[str, int] = {}


def token_id(word: str) -> int:
    """A stable id per word (``hash()`` changes between processes and collides)."""
    return VOCAB.setdefault(word, len(VOCAB))


class FakeService:
    note = "fake engine for tests"

    def __init__(
        self,
        root: Path,
        token_delay: float = 0.0,
        layers: int = 5,
        layer_delay: float = 0.0,
        fail_formats: tuple[str, ...] = (),
        fail_load: tuple[str, ...] = (),
    ):
        self.root = Path(root)
        self.token_delay = token_delay
        self.layers = layers
        self.layer_delay = layer_delay
        self.fail_formats = fail_formats
        self.fail_load = fail_load
        self.saved: dict[str, VariantInfo] = {}
        self.quantize_started = threading.Event()
        self.release = threading.Event()  # tests may hold quantization until set
        self.release.set()
        self.prompts: list[list[dict]] = []
        self.released = 0
        self.quantize_calls: list[tuple] = []
        self.exported: list[tuple[str, str]] = []  # export_variant calls (variant path, target)

        self.fail_tasks: tuple[str, ...] = ()

    def sources(self):
        return [ModelSource("default", "default", self.root / "src", "Fake default")]

    def formats(self):
        return [
            FormatInfo("bf16", "bf16", 16.0, "16-bit"),
            FormatInfo("int8", "int8", 8.0, "int8"),
            FormatInfo("int4-g64", "int4", 4.375, "int4"),
            FormatInfo("int2-g64", "int2", 2.25, "int2"),
        ]

    def methods(self):
        return ["gptq", "rtn"]

    def method_hint(self, name):
        return f"{name} (no calibration): no parameters"

    def devices(self):
        return ["cpu"]

    def saved_variants(self, source_ref):
        return list(self.saved.values())

    def expected_bytes(self, source_ref, fmt):
        return {
            "bf16": 269_000_000,
            "int8": 163_000_000,
            "int4-g64": 114_800_000,
            "int2-g64": 86_600_000,
        }.get(fmt)

    def quantize_request(
        self,
        source_ref,
        fmt,
        method,
        params="",
        calibration="",
        device="cpu",
        rotate="none",
        bits_per_weight="",
        distill="",
    ):
        from engine.quant.distill import parse as parse_distill
        from engine.quant.plan import QuantOptions
        from engine.request import QuantRequest
        from qtui.services import budget_bits, rotate_kind

        options = QuantOptions(
            rotate=rotate_kind(rotate),
            bits_per_weight=budget_bits(bits_per_weight),
            distill=parse_distill(distill),
        )
        return QuantRequest.build(
            source_ref, fmt, method, params, calibration or None, options, device=device, overwrite=True
        )

    def memory_estimate(self, request, progress, cancel):
        return 1_900_000_000  # a fixed figure: the screen shows it beside the live peak

    def quantize(self, request, progress, cancel):
        from engine import typed

        fmt, method = request.fmt.name, request.method.name
        calib = typed.values(request.calibration) if request.calibration else None
        self.quantize_calls.append((fmt, method, typed.changed(request.config), calib))
        self.quantize_started.set()
        self.release.wait(10)
        path = self.root / "variants" / f"{fmt}-{method}"
        for i in range(self.layers):
            if cancel.is_set():
                raise Cancelled("cancelled")
            progress(i, self.layers, f"model.layers.{i}.mlp.down_proj")
            if fmt in self.fail_formats and i == 2:
                raise QtuiError(f"{fmt}: simulated failure at layer 2")
            time.sleep(self.layer_delay)
        if cancel.is_set():
            raise Cancelled("cancelled")
        progress(self.layers, self.layers, "done")
        path.mkdir(parents=True, exist_ok=True)
        info = VariantInfo(f"{fmt}-{method}", fmt, method, path, 1000 * len(fmt), 4.375)
        self.saved[info.name] = info
        return info

    def load(self, spec, device, progress, cancel):
        name = Path(spec).name if "/" in spec else ("bf16" if spec == "default" else spec)
        if name in self.fail_load or spec in self.fail_load:
            raise QtuiError(f"{name}: simulated load failure")
        progress(1, 1, "loaded")
        backend = "dense bf16" if name == "bf16" else "int4pack (fake)"
        return Loaded(name, backend, 100_000_000, 120_000_000, 16.0 if name == "bf16" else 4.375, handle=name)

    def stream(self, loaded, messages, settings: GenSettings, cancel):
        self.prompts.append(messages)
        words = ANSWERS.get(loaded.name, "Paris is the answer.").split(" ")

        def gen():
            result = GenResult(prompt_tokens=10)
            t = 0.0
            for i, word in enumerate(words[: settings.max_new_tokens]):
                if cancel.is_set():
                    result.finish = "stopped"
                    break
                time.sleep(self.token_delay)
                t += 0.01
                result.token_ids.append(token_id(word))

                yield Token(i, result.token_ids[-1], (" " if i else "") + word, t)
            else:
                result.finish = "length" if len(words) > settings.max_new_tokens else "eos"
            result.text = " ".join(words[: len(result.token_ids)])
            result.new_tokens = len(result.token_ids)
            result.ttft_s, result.decode_tps, result.total_s = 0.01, 100.0, t
            result.looped = loaded.name.startswith("int2")
            return result

        return gen()

    def decode(self, loaded, token_ids):
        words = {i: w for w, i in VOCAB.items()}
        return " ".join(words.get(i, "?") for i in token_ids)

    def release_sources(self):
        self.released += 1

    def export_variant(self, path, target, progress, cancel):
        self.exported.append((path, target))
        progress(1, 1, "exported")
        if target == "compressed-tensors":
            return f"{Path(path).name}-compressed-tensors (compressed-tensors, 1.0 MiB): 3 quantized Linears, max |dW| 0"
        return f"{Path(path).name}.gguf (Q4_1, 1.0 MiB): 3/3 tensors exact, max |dW| 0"

    def eval_tasks(self):
        return [
            ("knowledge", "built-in general knowledge", ("loglik", "generate")),
            ("gsm8k", "GSM8K", ("generate",)),
            ("wikitext", "WikiText-2 sample", ("fidelity",)),
        ]

    def evaluate(self, loaded, baseline, task, mode, limit, progress, cancel):
        from engine.evals.results import TaskResult

        if task in self.fail_tasks:
            raise QtuiError(f"{task}: simulated evaluation failure")
        n = limit or 100
        for i in range(n):
            if cancel.is_set():
                raise Cancelled("cancelled")
            progress(i + 1, n, "scoring")
            time.sleep(self.token_delay)
        correct = {"bf16": 0.62, "int4-g64-rtn": 0.58}.get(loaded.name, 0.25)
        metrics = (
            {"kld_mean": 0.0 if loaded.name == "bf16" else 0.29} if mode == "fidelity" else {"boxed": n // 2}
        )
        return TaskResult(
            loaded.name,
            "sha256:fake",
            task,
            "sha256:task",
            mode,
            {"limit": limit},
            n,
            int(correct * n),
            metrics,
            [],
            1.5,
        )

    # ------------------------------------------------------------------ inspect
    inspect_blocks = 6
    inspect_delay = 0.0  # seconds per block (tests of a UI that stays responsive while it computes)

    def inspect_variant(self, path, progress, cancel):
        from engine.inspection import KIND_ORDER, LinearStat, VariantTable

        name = Path(path).name
        gptq = "gptq" in name
        stats = []
        for b in range(self.inspect_blocks):
            if cancel.is_set():
                raise Cancelled("inspect cancelled")
            progress(b, self.inspect_blocks, f"inspecting: model.layers.{b}")
            time.sleep(self.inspect_delay)
            for j, kind in enumerate(KIND_ORDER):
                rel = round(0.08 + 0.004 * b + 0.002 * j + (0.03 if (b, kind) == (2, "down") else 0.0), 6)
                out = round(rel * (0.6 if gptq else 1.0) + 0.001 * ((b * 7 + j) % 3), 6)
                suffix = "self_attn" if j < 4 else "mlp"
                stats.append(
                    LinearStat(f"model.layers.{b}.{suffix}.{kind}_proj", b, kind, "int4-g64", (576, 576),
                               rel, round(21.9 - 40 * (rel - 0.08), 3), out, 0.0 if not gptq else 0.5, 0.01)
                )  # fmt: skip
        progress(self.inspect_blocks, self.inspect_blocks, "inspected")
        return VariantTable(name, str(path), "fakekey-" + name, "int4-g64", "gptq" if gptq else "rtn",
                            "Fake default", True, (), KIND_ORDER, self.inspect_blocks, tuple(stats))  # fmt: skip

    def inspect_linear(self, path, name, progress, cancel):
        from engine.inspection import GroupView, LinearView

        table = self.inspect_variant(path, progress, cancel)
        stat = table.get(name)
        if stat is None:
            raise QtuiError(f"no quantized Linear {name!r}")
        wide = 2.0 if stat.kind == "down" else 1.0
        bins = tuple(round(-0.1 * wide + i * 0.2 * wide / 20, 6) for i in range(21))
        counts = tuple(int(1000 * 2.718 ** (-(((i - 10) / 3) ** 2))) for i in range(20))
        levels = tuple(round(-0.08 + i * 0.01, 4) for i in range(16))

        def group(label, row, err):
            return GroupView(label, row, 0, err, err / 10, 0.01, levels, levels[2:14], levels[2:14])

        act = ((5, 12.5, 1.2), (77, 9.1, 0.8)) if table.method == "gptq" else None
        notes = () if act else ("activation channels: not recorded (rtn ran without calibration data)",)
        return LinearView(table.variant, name, "int4-g64", table.method, stat, 64, bins, counts, counts,
                          tuple(range(16)), (0.004, 0.01, 0.03), group("typical (median error)", 3, 0.05),
                          group("worst (largest error)", 7, 0.3), act, notes)  # fmt: skip

    # ------------------------------------------------------------------ token divergence
    def divergence(self, baseline, loaded, messages, answer_ids, system, cancel):
        from engine.divergence import THRESHOLD, Divergence, TokenDivergence

        if cancel.is_set():
            raise Cancelled("cancelled")
        words = {i: w for w, i in VOCAB.items()}
        tokens = []
        for i, tid in enumerate(answer_ids):  # int2 departs from the 2nd token, int4 only at 'Paris.'
            kld = (2.5 if i >= 1 else 0.05) if loaded.name.startswith("int2") else (0.8 if i == 5 else 0.02)
            text = (" " if i else "") + words.get(tid, "?")
            tokens.append(TokenDivergence(i, tid, text, kld, round(0.9 / (1 + kld), 3), 0.9, kld < 0.5))
        first = next((t.index for t in tokens if t.kld > THRESHOLD), None)
        return Divergence(loaded.name, baseline.name, tuple(tokens), THRESHOLD, first)
