"""A chat column on llama.cpp: the variant exported to GGUF (once, cached) and run in-process by
``xllamacpp`` (prebuilt llama.cpp with its native server; no compiler needed).

A column is ``SPEC@llama.cpp`` (``default:int4@llama.cpp``, a saved variant folder, or a ``.gguf``
file run as it is). The prompt is tokenized here with the variant's own tokenizer and chat template,
exactly as the torch column does, and sent to llama.cpp as token ids, so both engines see the same
prompt; each streamed chunk carries its token id (``n_probs: 1``). llama.cpp holds back a token that
ends mid-UTF-8 character and sends it merged into the next chunk under the next token's id: such a
token has no id in the column (the count comes from llama.cpp's own usage figure). Timings are taken on the client
side when each chunk arrives (llama.cpp decodes on its own threads, whatever the consumer does).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.errors import QtuiError
from engine.gguf_export import ExportResult, cached_gguf, saved_variant
from engine.manifest import Manifest
from engine.progress import ProgressFn, no_progress
from engine.quant.formats import FormatSpec, get_format
from engine.runtime import GenResult, GenSettings, Message, Token, chat_ids, detect_loop, shared_tokenizer
from engine.telemetry import PeakSampler

if TYPE_CHECKING:  # transformers is not analysed by mypy (follow_imports=skip): Any to it
    from transformers import PreTrainedTokenizerBase

ENGINE = "llama.cpp"
# the activation type llama.cpp's CPU dot products quantize the input to, per weight type
ACTIVATIONS = {"Q4_0": "Q8_0", "Q4_1": "Q8_1", "Q8_0": "Q8_0", "BF16": "BF16", "F16": "F16", "F32": "F32"}
N_CTX = 4096


class LlamaCppError(QtuiError):
    """llama.cpp is not installed, cannot load the file, or failed while generating."""


def version() -> str | None:
    """The installed xllamacpp's version, or None when it is not installed."""
    try:
        import xllamacpp
    except ImportError:
        return None
    return str(getattr(xllamacpp, "__version__", "?"))


def build() -> str:
    """How the installed xllamacpp was built: "prebuilt" (a manylinux/macOS/Windows wheel from the
    registry: portable CPU code) or "native build" (a wheel built on this machine from the sdist, as
    ``make llamacpp-native`` does: llama.cpp compiled with GGML_NATIVE for this CPU); "" when unknown."""
    from importlib import metadata

    try:
        wheel = metadata.distribution("xllamacpp").read_text("WHEEL") or ""
    except metadata.PackageNotFoundError:
        return ""
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    if not tags:
        return ""
    portable = ("manylinux", "musllinux", "macosx", "win")
    return "prebuilt" if any(p in tag for tag in tags for p in portable) else "native build"


def require() -> str:
    v = version()
    if v is None:
        raise LlamaCppError("the llama.cpp engine needs the xllamacpp package: pip install xllamacpp")
    return v


@dataclass
class GGUFInfo:
    """What a column says about the file it runs: its main weight type and tensor bytes."""

    file_type: str
    tensor_bytes: int
    bits_per_weight: float  # over every tensor of the file

    @classmethod
    def read(cls, path: Path) -> GGUFInfo:
        from collections import Counter

        from gguf import GGUFReader

        reader = GGUFReader(path)
        types = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) == 2)
        main = max(sorted(types), key=types.__getitem__) if types else "F32"
        nbytes = sum(int(t.n_bytes) for t in reader.tensors)
        params = sum(int(t.n_elements) for t in reader.tensors)
        return cls(main, nbytes, nbytes * 8 / params if params else 0.0)


@dataclass
class LlamaCppColumn:
    """A GGUF loaded in an in-process llama.cpp server, streaming like ``engine.runtime.stream``."""

    name: str
    gguf: Path
    tokenizer: PreTrainedTokenizerBase
    server: Any  # xllamacpp.Server
    info: GGUFInfo
    xllamacpp_version: str
    threads: int
    build: str = ""  # "prebuilt" / "native build" (see build())
    folder: Path | None = None  # the variant's folder (None for a .gguf run as it is)
    manifest: Manifest | None = None
    export: ExportResult | None = None  # when the GGUF was exported for this column just now
    fmt: FormatSpec = field(default_factory=lambda: get_format("bf16"))
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    warmed: bool = True

    @property
    def backend(self) -> str:
        act = ACTIVATIONS.get(self.info.file_type, "f32")
        built = f" {self.build}" if self.build else ""
        return (
            f"llama.cpp (xllamacpp {self.xllamacpp_version}{built}, {self.info.file_type}, activations {act})"
        )

    def weight_bytes(self) -> int:
        return self.info.tensor_bytes

    def warm_up(self, progress: ProgressFn | None = None) -> None:
        """llama.cpp warms up while loading (an empty run); nothing more to do."""

    def close(self) -> None:
        self.server = None

    def stream(
        self,
        prompt: str | list[Message],
        settings: GenSettings = GenSettings(),
        cancel: threading.Event | None = None,
    ) -> Generator[Token, None, GenResult]:
        """Yield tokens as llama.cpp produces them; return the :class:`GenResult`."""
        if self.server is None:
            raise LlamaCppError(f"{self.name}: the llama.cpp server was closed")
        ids = [int(i) for i in chat_ids(self.tokenizer, prompt, settings.system)[0].tolist()]
        request = completion_request(ids, settings)
        chunks: queue.Queue[tuple[float, Any]] = queue.Queue()
        stop = threading.Event()

        def on_chunk(chunk: Any) -> bool:
            chunks.put((time.perf_counter(), chunk))
            return stop.is_set() or (cancel is not None and cancel.is_set())

        def run() -> None:
            try:
                out = self.server.handle_completions(request, on_chunk)
                if isinstance(out, dict) and "error" in out:
                    chunks.put((time.perf_counter(), out))
            except Exception as exc:  # the server raises for a bad request: shown in the column
                chunks.put((time.perf_counter(), exc))
            finally:
                chunks.put((time.perf_counter(), None))

        result = GenResult(prompt_tokens=len(ids))
        sampler = PeakSampler(cuda=False)
        t0 = time.perf_counter()
        worker = threading.Thread(target=run, daemon=True, name="qtui-llama.cpp")
        t_first = t_last = 0.0
        counted = 0  # llama.cpp's own count (usage): tokens held back mid-character carry no id
        text: list[str] = []
        with sampler:
            worker.start()
            try:
                while True:
                    stamp, chunk = chunks.get()
                    if chunk is None:
                        break
                    if isinstance(chunk, BaseException):
                        raise LlamaCppError(f"{self.name}: llama.cpp failed: {_first_line(chunk)}")
                    if isinstance(chunk, dict) and "error" in chunk:
                        raise LlamaCppError(f"{self.name}: llama.cpp: {_error_text(chunk['error'])}")
                    new_ids, piece, finish = parse_chunk(chunk)
                    usage = chunk.get("usage") if isinstance(chunk, dict) else None
                    if isinstance(usage, dict) and usage.get("completion_tokens"):
                        counted = int(usage["completion_tokens"])
                    for i, token_id in enumerate(new_ids):
                        if not result.token_ids:
                            t_first = stamp - t0
                        t_last = stamp - t0
                        result.token_ids.append(token_id)
                        text.append(piece if i == 0 else "")
                        yield Token(len(result.token_ids) - 1, token_id, piece if i == 0 else "", t_last)
                    if finish:
                        result.finish = "length" if finish == "length" else "eos"
            finally:
                stop.set()
                worker.join()
        if cancel is not None and cancel.is_set():
            result.finish = "stopped"
        elif not result.finish:
            result.finish = "eos"
        result.text = "".join(text)
        result.new_tokens = max(len(result.token_ids), counted)
        result.total_s = time.perf_counter() - t0
        result.ttft_s = t_first
        result.prefill_tps = result.prompt_tokens / t_first if t_first > 0 else 0.0
        if result.new_tokens > 1 and t_last > t_first:
            result.decode_tps = (result.new_tokens - 1) / (t_last - t_first)
        result.looped = detect_loop(result.token_ids)
        result.peak_rss = sampler.peak_rss
        return result


def completion_request(ids: list[int], s: GenSettings) -> dict[str, Any]:
    """llama.cpp's completion request for prompt ``ids``: qtui's sampling, nothing of llama.cpp's own
    defaults on top (no top-k 40, min-p 0.05 or repeat penalty), no prompt cache (each answer pays
    its prefill, as in the torch column), and each token's id in its chunk."""
    return {
        "prompt": ids,
        "max_tokens": s.max_new_tokens,
        "stream": True,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": 0,
        "min_p": 0.0,
        "repeat_penalty": 1.0,
        "seed": s.seed,
        "n_probs": 1,
        "cache_prompt": False,
    }


def parse_chunk(chunk: Any) -> tuple[list[int], str, str | None]:
    """(token ids, text, finish reason) of one streamed completion chunk."""
    try:
        choice = chunk["choices"][0]
        content = (choice.get("logprobs") or {}).get("content") or []
        ids = [int(c["id"]) for c in content]
        return ids, str(choice.get("text") or ""), choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise LlamaCppError(
            f"llama.cpp sent a chunk qtui cannot read ({type(exc).__name__}: {exc})"
        ) from None


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def start_server(gguf: Path, threads: int, n_ctx: int = N_CTX) -> Any:
    """An in-process llama.cpp server on ``gguf`` (silent: its log would draw over the app)."""
    require()
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.n_ctx = n_ctx
    params.n_parallel = 1
    params.verbosity = -1
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.hostnames = ["127.0.0.1"]  # its HTTP endpoint (used for remote-column tests) stays local
    try:
        return xllamacpp.Server(params)
    except Exception as exc:
        raise LlamaCppError(f"llama.cpp cannot load {gguf.name}: {_first_line(exc)}") from exc


def default_threads() -> int:
    return max(1, torch.get_num_threads() or os.cpu_count() or 1)


def open_column(
    spec: str,
    method: str = "rtn",
    progress: ProgressFn = no_progress,
    cancel: threading.Event | None = None,
    threads: int | None = None,
) -> LlamaCppColumn:
    """``spec`` (without ``@llama.cpp``) as a llama.cpp column: the saved variant (quantized and saved
    first if needed) exported to GGUF once (cached), or a ``.gguf`` file as it is."""
    xv = require()
    threads = threads or default_threads()
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        from transformers import AutoTokenizer

        progress(0, 1, f"loading {path.name} in llama.cpp")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except Exception as exc:
            raise LlamaCppError(f"cannot read the tokenizer of {path}: {_first_line(exc)}") from exc
        server = start_server(path, threads)
        progress(1, 1, "loaded")
        return LlamaCppColumn(
            f"{path.stem}@{ENGINE}", path, tokenizer, server, GGUFInfo.read(path), xv, threads, build()
        )
    folder = saved_variant(spec, method, progress, cancel)
    from engine import store

    manifest = store.read_manifest(folder)
    progress(0, 1, f"exporting {folder.name} to GGUF (once)")
    gguf, export = cached_gguf(folder, progress, cancel)
    progress(0, 1, f"loading {gguf.name} in llama.cpp")
    server = start_server(gguf, threads)
    progress(1, 1, "loaded")
    return LlamaCppColumn(
        f"{folder.name}@{ENGINE}", gguf, shared_tokenizer(folder), server, GGUFInfo.read(gguf), xv, threads,
        build(), folder, manifest, export, manifest.fmt,
    )  # fmt: skip
