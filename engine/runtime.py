"""Streaming generation with timings, stop, and loop / token-limit flags.

One :class:`Variant` is a model ready to run (baseline or quantized) with the kernels chosen for
its device. :func:`stream` yields a :class:`Token` per generated token and returns a
:class:`GenResult` with the measurements; :func:`generate` is the collecting wrapper.

CPU: a lean decode loop over transformers' forward with a dynamic KV cache (prefill computes
only the last position's logits). CUDA: transformers' ``generate`` with a static KV cache, whose
decode step transformers compiles (gpt-fast style); the compile is paid once per variant in a
process, in :meth:`Variant.warm_up`, reported as a progress step.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, runtime_checkable

import torch

from engine import devices
from engine.manifest import Manifest
from engine.progress import ProgressFn
from engine.quant.formats import FormatSpec
from engine.quant.pipeline import prepare_model, prepare_module
from engine.stream import trim_heap
from engine.telemetry import PeakSampler
from engine.typed import option

if TYPE_CHECKING:  # transformers is not analysed by mypy (follow_imports=skip): these are Any to it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from engine.quant.plan import QuantOptions

FinishReason = Literal["eos", "length", "stopped"]  # EOS token, max_new_tokens reached, cancelled
Message = dict[str, str]  # a chat message: {"role": ..., "content": ...}


@dataclass(frozen=True)
class GenSettings:
    max_new_tokens: int = option(128, "tokens to generate at most", min=1, max=32768)
    # 0 = greedy, so differences between variants come from weights
    temperature: float = option(0.0, "sampling temperature (0 = greedy)", min=0.0, max=100.0)
    top_p: float = option(1.0, "nucleus sampling mass", min=1e-6, max=1.0)
    seed: int = option(0, "sampling seed", min=0)
    system: str | None = None


@dataclass(frozen=True)
class Token:
    index: int
    token_id: int
    text: str  # the new text this token adds (may be "" mid multi-byte character)
    t: float  # seconds this generation has been working (excludes time suspended by its consumer)


@dataclass
class GenResult:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0  # request start -> first token (prefill + first sample)
    prefill_tps: float = 0.0  # prompt tokens / ttft
    decode_tps: float = 0.0  # tokens after the first / time from the first to the last token
    total_s: float = 0.0
    finish: FinishReason | Literal[""] = ""  # "" until the generation has finished
    looped: bool = False
    peak_rss: int = 0
    peak_cuda: int = 0

    @property
    def hit_limit(self) -> bool:
        return self.finish == "length"

    @property
    def stopped(self) -> bool:
        return self.finish == "stopped"

    @property
    def flags(self) -> list[str]:
        out: list[str] = []
        if self.looped:
            out.append("loop")
        if self.hit_limit:
            out.append("max-tokens")
        if self.finish == "eos" and not self.text.strip():
            out.append("empty")
        return out


@runtime_checkable
class _RuntimeSized(Protocol):
    """A layer that reports the bytes its kernel layout holds (quantized layers)."""

    def runtime_bytes(self) -> int: ...


GGUF_NOTE = "de-quantized GGUF baseline"  # said beside the backend of a 16-bit copy of a GGUF model
GGUF_KINDS = ("default", "builtin", "gguf")  # engine.sources kinds whose weights come from a GGUF


@dataclass
class Variant:
    """A loaded model ready to generate."""

    name: str
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    fmt: FormatSpec
    device: torch.device
    dtype: torch.dtype
    backends: dict[str, int]
    folder: Path | None = None
    manifest: Manifest | None = None  # a saved variant's; None for one made in memory
    warmed: bool = False
    note: str = ""  # what a reader must know, e.g. "de-quantized GGUF baseline" (shown with the backend)

    @property
    def backend(self) -> str:
        if not self.backends:
            label = f"dense {str(self.dtype).removeprefix('torch.')} (torch matmul)"
        else:
            label = max(self.backends, key=self.backends.__getitem__)
        return f"{label}; {self.note}" if self.note else label

    def weight_bytes(self) -> int:
        seen: set[int] = set()
        total = 0
        for t in list(self.model.parameters()) + list(self.model.buffers()):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        for m in self.model.modules():
            if isinstance(m, _RuntimeSized):  # a hasattr check (runtime_checkable protocol)
                total += m.runtime_bytes()
            elif (qw := getattr(m, "qw", None)) is not None and hasattr(m, "backend_label"):
                total += qw.nbytes
        return total

    def warm_up(self, progress: ProgressFn | None = None) -> None:
        """On CUDA, trigger (and pay for) the static-cache decode compile once."""
        if self.warmed or self.device.type != "cuda":
            self.warmed = True
            return
        if progress:
            progress(0, 1, f"{self.name}: compiling decode step (once per process)")
        generate(self, "Hello", GenSettings(max_new_tokens=4))
        self.warmed = True
        if progress:
            progress(1, 1, f"{self.name}: compiled")


def default_device() -> torch.device:
    return devices.default()


def compute_dtype(fmt: FormatSpec, device: torch.device) -> torch.dtype:
    """bf16 everywhere (CPU int4 kernel is ~7x slower with fp32); f16 variants run in f16."""
    return torch.float16 if fmt.family == "f16" else torch.bfloat16


def variant_from_model(
    name: str,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    fmt: FormatSpec,
    device: torch.device | str | None = None,
    backend: str | None = None,
    folder: Path | None = None,
    manifest: Manifest | None = None,
) -> Variant:
    dev = torch.device(device) if device is not None else default_device()
    dtype = compute_dtype(fmt, dev)
    backends = prepare_model(model, dev, dtype, backend)
    model.eval().requires_grad_(False)  # inference only: no autograd bookkeeping anywhere
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if isinstance(head, torch.nn.Module) and not getattr(head, "_qtui_row_major", False):
        head.register_forward_pre_hook(_row_major_input)
        object.__setattr__(head, "_qtui_row_major", True)
    return Variant(name, model, tokenizer, fmt, dev, dtype, backends, folder, manifest)


def _row_major_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= size
    return tuple(reversed(strides))


def _row_major_input(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Give the LM head its input with plain row-major strides. The prefill keeps only the last
    position (``logits_to_keep=1``): a [1, 1, d] slice whose batch stride is still seq_len * d.
    CPU bf16 matmul takes a slow path on that stride: 100x slower and a temporary of 0.6-0.8x
    the head's size (Qwen3-4B shape: 27 s and +0.75 GB for one [1, 1, 2560] x [151936, 2560]
    product; 0.2 s with plain strides). A [1, 1, d] copy costs nothing."""
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.dim() > 2 and x.stride() != _row_major_strides(x.shape):
        return (x.clone(memory_format=torch.contiguous_format), *args[1:])
    return None


_TOKENIZERS: dict[str, PreTrainedTokenizerBase] = {}
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def shared_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """One tokenizer object per distinct set of tokenizer files, shared by every variant using it."""
    import hashlib

    from transformers import AutoTokenizer

    h = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        path = Path(folder) / name
        if path.exists():
            h.update(name.encode() + b"\0" + path.read_bytes())
    key = h.hexdigest()
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(folder)
    return _TOKENIZERS[key]


def load_variant(
    folder: Path, device: torch.device | str | None = None, backend: str | None = None, verify: bool = True
) -> Variant:
    """Load a saved variant folder (see :mod:`engine.store`) onto ``device``."""
    from engine import store

    folder = Path(folder)
    manifest = store.read_manifest(folder)
    fmt = manifest.fmt
    dev = torch.device(device) if device is not None else default_device()
    dtype = compute_dtype(fmt, dev)

    def place(module: torch.nn.Module) -> None:
        prepare_module(module, dev, dtype, backend, release=True)
        # the layer's stored codes and the kernel's temporaries were freed: without handing the
        # pages back here, glibc's heap kept ~0.6 GB more at the end of a 4B load (peak 4.1 GB)
        trim_heap()

    def convert(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=dev, dtype=dtype) if t.is_floating_point() else t.to(dev)

    # a layer at a time: read, checked, laid out for its kernel, stored codes dropped; the peak
    # is the loaded model plus one layer (reading every shard first held the whole variant twice)
    files = store.TensorFiles(folder, manifest, verify=verify)
    model = store.build_model(folder, manifest, files, place, convert)
    tokenizer = shared_tokenizer(folder)

    name = store.variant_name(fmt, manifest.method, _saved_options(manifest))
    variant = variant_from_model(name, model, tokenizer, fmt, dev, backend, folder, manifest)
    if fmt.is_float and manifest.source.kind in GGUF_KINDS:
        variant.note = GGUF_NOTE
    return variant


def _saved_options(manifest: Manifest) -> QuantOptions:
    """The options that name a variant (a rotation, a distillation), as its manifest records them."""
    from engine.quant.distill import DistillConfig
    from engine.quant.plan import QuantOptions

    saved = manifest.raw.get("options") or {}
    rotate = saved.get("rotate", "none")
    options = QuantOptions()
    if rotate in ("hadamard", "random"):
        options = replace(options, rotate=rotate, rotate_seed=int(saved.get("rotate_seed", 0)))
    distilled = manifest.raw.get("distill")
    if isinstance(distilled, dict):
        steps, rank = int(distilled.get("steps", 1)), int(distilled.get("adapter_rank", 0))
        options = replace(options, distill=DistillConfig(steps=steps, adapter_rank=rank))
    return options


# ------------------------------------------------------------------------------ generation
def chat_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str | list[Message], system: str | None = None
) -> torch.Tensor:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        ids: torch.Tensor = out["input_ids"]
        return ids
    text = "\n".join(m["content"] for m in messages)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    return ids


def eos_ids(variant: Variant) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(variant.model, "generation_config", None), variant.model.config):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, Iterable):
            ids.update(int(v) for v in value)
    if variant.tokenizer.eos_token_id is not None:
        ids.add(int(variant.tokenizer.eos_token_id))
    return ids


def detect_loop(ids: list[int], max_period: int = 64, repeats: int = 3, min_span: int = 24) -> bool:
    """True when the tail is one short pattern repeated (``repeats`` times, >= ``min_span`` tokens)."""
    n = len(ids)
    for period in range(1, max_period + 1):
        span = period * repeats
        if span > n:
            break
        span = max(span, min_span)
        if span > n:
            continue
        tail = ids[n - span :]
        if all(tail[i] == tail[i - period] for i in range(period, span)):
            return True
    return False


def _sample(logits: torch.Tensor, s: GenSettings, gen: torch.Generator | None) -> int:
    if s.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / s.temperature, dim=-1)
    if s.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < s.top_p
        probs = torch.zeros_like(probs).scatter(-1, order[keep], sorted_p[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=gen))


class _Detok:
    """Incremental detokenizer: emits only complete characters."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        text: str = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        delta = text[len(self.text) :] if text.startswith(self.text) else text
        self.text = text
        return delta


def stream(
    variant: Variant,
    prompt: str | list[Message],
    settings: GenSettings = GenSettings(),
    cancel: threading.Event | None = None,
) -> Generator[Token, None, GenResult]:
    """Yield tokens as they are produced; the generator's return value is the :class:`GenResult`."""
    result = GenResult()
    ids = chat_ids(variant.tokenizer, prompt, settings.system).to(variant.device)
    result.prompt_tokens = int(ids.shape[1])
    stops = eos_ids(variant)
    detok = _Detok(variant.tokenizer)
    gen: torch.Generator | None = None
    if settings.temperature > 0:
        gen = torch.Generator(device="cpu").manual_seed(settings.seed)
    # The clock runs only while this generator is working: when several variants are interleaved
    # (chat columns, round-robin) each one's timings are its own, not its neighbours'.
    busy = 0.0
    mark = time.perf_counter()
    t_first = 0.0
    sampler = PeakSampler(cuda=variant.device.type == "cuda")
    # No grad/inference-mode context is held across ``yield``: several streams are interleaved on
    # one thread (chat columns), and thread-local torch modes entered in one generator would leak
    # into, or be switched off under, the others. Each forward enters its own.
    with sampler:
        steps = _cuda_tokens if variant.device.type == "cuda" else decode_token_ids
        tokens = steps(variant, ids, settings, gen, cancel)
        try:
            for token_id in tokens:
                now = busy + time.perf_counter() - mark
                if not result.token_ids:
                    t_first = now
                if token_id in stops:
                    result.finish = "eos"
                    break
                result.token_ids.append(token_id)
                busy = now
                yield Token(len(result.token_ids) - 1, token_id, detok.add(token_id), now)
                mark = time.perf_counter()
                if cancel is not None and cancel.is_set():
                    result.finish = "stopped"
                    break
                if len(result.token_ids) >= settings.max_new_tokens:
                    result.finish = "length"
                    break
            else:
                result.finish = "stopped" if cancel is not None and cancel.is_set() else "eos"
        finally:
            tokens.close()
    total = busy + time.perf_counter() - mark
    result.text = detok.text
    result.new_tokens = len(result.token_ids)
    result.total_s = total
    result.ttft_s = t_first
    result.prefill_tps = result.prompt_tokens / t_first if t_first > 0 else 0.0
    if result.new_tokens > 1 and busy > t_first:
        result.decode_tps = (result.new_tokens - 1) / (busy - t_first)
    result.looped = detect_loop(result.token_ids)
    result.peak_rss, result.peak_cuda = sampler.peak_rss, sampler.peak_cuda
    return result


def decode_token_ids(
    variant: Variant,
    ids: torch.Tensor,
    s: GenSettings,
    gen: torch.Generator | None,
    cancel: threading.Event | None,
) -> Generator[int, None, None]:
    """The CPU decode loop: one prefill (last position's logits only), then one forward per token
    with a dynamic KV cache; yields token ids forever (the caller stops it: EOS, limit, cancel)."""
    from transformers import DynamicCache

    model = variant.model
    # transformers 5.x renamed ``past_key_values`` to ``cache``; accept either
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kwargs = {cache_arg: DynamicCache(config=model.config), "use_cache": True, "logits_to_keep": 1}
    with torch.inference_mode():
        out = model(input_ids=ids, **kwargs)
        token = _sample(out.logits[0, -1], s, gen)
    while True:
        yield token
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([[token]], device=ids.device), **kwargs)
            token = _sample(out.logits[0, -1], s, gen)


def _cuda_tokens(
    variant: Variant,
    ids: torch.Tensor,
    s: GenSettings,
    gen: torch.Generator | None,
    cancel: threading.Event | None,
) -> Generator[int, None, None]:
    """transformers.generate with a static KV cache (compiled decode step), streamed by token."""
    from queue import Queue

    from transformers import StoppingCriteria
    from transformers.generation.streamers import BaseStreamer

    queue: Queue[int | None] = Queue()
    done = threading.Event()

    class _Streamer(BaseStreamer):  # type: ignore[misc]  # transformers is not analysed: its classes are Any
        def __init__(self) -> None:
            self.prompt_seen = False

        def put(self, value: torch.Tensor) -> None:
            if not self.prompt_seen:  # generate() first puts the prompt
                self.prompt_seen = True
                return
            for token in value.reshape(-1).tolist():
                queue.put(int(token))

        def end(self) -> None:
            pass

    class _Stop(StoppingCriteria):  # type: ignore[misc]  # transformers is not analysed: its classes are Any
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: Any) -> bool:
            return bool((cancel is not None and cancel.is_set()) or done.is_set())

    def _run() -> None:
        try:
            torch.manual_seed(s.seed)
            sampling = (
                {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p}
                if s.temperature > 0
                else {"do_sample": False}
            )
            cast("PreTrainedModel", variant.model).generate(
                ids,
                max_new_tokens=s.max_new_tokens,
                cache_implementation="static",
                streamer=_Streamer(),
                stopping_criteria=[_Stop()],
                pad_token_id=variant.tokenizer.eos_token_id,
                **sampling,
            )
        finally:
            queue.put(None)

    worker = threading.Thread(target=_run, daemon=True, name="qtui-cuda-generate")
    worker.start()
    try:
        while (token := queue.get()) is not None:
            yield token
    finally:
        done.set()
        while worker.is_alive() or not queue.empty():
            if queue.get() is None:
                break
        worker.join()


def generate(
    variant: Variant,
    prompt: str | list[Message],
    settings: GenSettings = GenSettings(),
    on_token: Callable[[Token], None] | None = None,
    cancel: threading.Event | None = None,
) -> GenResult:
    return collect(stream(variant, prompt, settings, cancel), on_token)


def collect(
    gen: Generator[Token, None, GenResult], on_token: Callable[[Token], None] | None = None
) -> GenResult:
    """Run a token stream to its end (each token to ``on_token``) and return its :class:`GenResult`."""
    while True:
        try:
            token = next(gen)
        except StopIteration as stop:
            return cast(GenResult, stop.value)
        if on_token is not None:
            on_token(token)
