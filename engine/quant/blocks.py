"""The block-by-block driver behind :func:`engine.quant.pipeline.quantize_model` with calibration.

1. The calibration windows run through the embeddings; the first decoder block is swapped for a
   catcher that records its inputs (hidden states plus the keyword arguments transformers passes:
   attention mask, position ids, rotary ``position_embeddings``) and stops the forward pass.
2. For each block: it moves to the device in float32; hooks fill one ``LinearStats`` per distinct
   Linear input while the float block runs over the inputs; the method may rescale the block
   (``prepare_block``); each Linear is quantized (``MethodSpec.linear``) and replaced by a
   ``QLinear``; the quantized block then runs over the same inputs to make the next block's inputs.
   The block goes back to the CPU in its own dtype. Only one block, its activations and its
   statistics live on the device at a time.
3. Mixed precision: the ``keep_sensitive`` Linears with the largest output error are re-done at
   ``sensitive_bits`` (int8 RTN, or the float weight) at the end; only their float weights are kept
   meanwhile (a bounded heap), never a copy of the model.
"""

from __future__ import annotations

import copy
import heapq
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from torch import nn

from engine.errors import Cancelled
from engine.progress import ProgressFn
from engine.quant.formats import FormatSpec, QuantizedWeight, get_format
from engine.quant.layers import QLinear
from engine.quant.methods import LinearStats, MethodConfig, MethodSpec
from engine.quant.plan import (
    IN_MEMORY,
    BlockIO,
    LayerReport,
    QuantOptions,
    QuantReport,
    decoder_layers,
    input_transform_of,
    set_module,
    weight_errors,
)

_DROP = ("past_key_values", "past_key_value", "cache", "use_cache", "output_attentions")
# what a decoder block is called with: (hidden states, the keyword arguments transformers passes)
BlockInput = tuple[torch.Tensor, dict[str, Any]]
# the kept sensitive Linears: (output error, qualified name, float weight on the CPU, report index)
Kept = tuple[float, str, torch.Tensor, int]


class _Stop(Exception):
    pass


class _Recorder(nn.Module):
    """Stands in for decoder block ``index`` while the inputs are captured: keeps the keyword
    arguments the model passes to that block (models mixing sliding-window and full attention,
    Gemma-2/3, give each block its own mask and rotary embeddings), passes the hidden states through
    untouched, and ends the forward pass after the last block. Block 0 also keeps the hidden states."""

    def __init__(self, inner: nn.Module, index: int, last: bool, hidden: list[torch.Tensor],
                 kwargs: list[dict[str, Any]]) -> None:  # fmt: skip
        super().__init__()
        self.inner, self.index, self.last = inner, index, last
        self.hidden, self.kwargs = hidden, kwargs
        self.attention_type = getattr(inner, "attention_type", "full_attention")

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        if self.index == 0:
            self.hidden.append(hidden.detach())
        self.kwargs.append({k: v for k, v in kwargs.items() if k not in _DROP})
        if self.last:
            raise _Stop
        return hidden  # type: ignore[no-any-return]


def _cast(obj: object, device: torch.device | str, dtype: torch.dtype = torch.float32) -> object:
    if isinstance(obj, torch.Tensor):
        return obj.to(device=device, dtype=dtype) if obj.is_floating_point() else obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_cast(o, device, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _cast(v, device, dtype) for k, v in obj.items()}
    return obj


@torch.no_grad()
def capture_inputs(
    model: nn.Module, ids: torch.Tensor, batch_size: int, device: torch.device | str
) -> tuple[list[BlockInput], list[list[dict[str, Any]]]]:
    """(hidden states, kwargs) that the first decoder block receives, one pair per batch, and
    for every block the kwargs the model passes it, per batch (see :class:`_Recorder`)."""
    layers = decoder_layers(model)
    inner = getattr(model, "model", model)
    originals = list(layers)
    hidden: list[torch.Tensor] = []
    per_block: list[list[dict[str, Any]]] = [[] for _ in originals]
    for i, layer in enumerate(originals):
        layers[i] = _Recorder(layer, i, i == len(originals) - 1, hidden, per_block[i])
    small = [m for name, m in inner.named_children() if "embed" in name or "rotary" in name]
    for m in small:
        m.to(device)
    try:
        for i in range(0, ids.shape[0], batch_size):
            try:
                inner(input_ids=ids[i : i + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
        for m in small:
            m.to("cpu")
    cast: dict[int, object] = {}  # a mask or rotary tensor shared by blocks is moved once

    def moved(v: object) -> object:
        if id(v) not in cast:
            cast[id(v)] = _cast(v, device)
        return cast[id(v)]

    kwargs = [[{k: moved(v) for k, v in kw.items()} for kw in block] for block in per_block]
    inputs = [(h.to(device, torch.float32), kw) for h, kw in zip(hidden, kwargs[0], strict=True)]
    return inputs, kwargs


Job = tuple[FormatSpec, list[tuple[str, nn.Linear]], LinearStats | None]  # (format, Linears, their stats)


def _jobs(
    linears: list[tuple[str, nn.Linear]],
    stats: Mapping[str, LinearStats],
    fmt_of: Callable[[str], FormatSpec],
) -> list[Job]:
    """Linears grouped by the input they read (same stats object) and their format, in forward
    order, each group with its format and stats. Linears reading one input in different formats
    (a bit budget) make several groups: each but the last gets a copy of the stats with its own
    Hessian (GPTQ takes the accumulator over)."""
    jobs: dict[tuple[int, str], list[tuple[str, nn.Linear]]] = {}
    for name, module in linears:
        st = stats.get(name)
        key = (id(st) if st is not None else id(module), fmt_of(name).name)
        jobs.setdefault(key, []).append((name, module))
    readers: dict[int, int] = {}
    for sid, _ in jobs:
        readers[sid] = readers.get(sid, 0) + 1
    out: list[Job] = []
    for (sid, _), job in jobs.items():
        st = stats.get(job[0][0])
        readers[sid] -= 1
        if st is not None and readers[sid] > 0:
            st = _with_own_hessian(st)
        out.append((fmt_of(job[0][0]), job, st))
    return out


def _with_own_hessian(st: LinearStats) -> LinearStats:
    """A copy of ``st`` (sharing its read-only samples) with a copy of its Hessian accumulator."""
    twin = copy.copy(st)
    twin.H = None if st.H is None else st.H.clone()
    return twin


def _rows(qw: QuantizedWeight, start: int, count: int) -> QuantizedWeight:
    """Rows ``start:start+count`` of a quantized weight, on the CPU (each Linear's own tensors)."""
    sl = slice(start, start + count)
    z = None if qw.qzeros is None else qw.qzeros[sl].contiguous().cpu()
    return QuantizedWeight(
        qw.fmt, (count, qw.shape[1]), qw.qweight[sl].contiguous().cpu(), qw.scales[sl].contiguous().cpu(), z
    )


def _hidden(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def _weight_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the Linear's weight multiplies: its input, after the input transform when it has one
    (then a tensor of its own, so it shares statistics with no other Linear)."""
    transform = input_transform_of(module)
    return x if transform is None else x @ transform.to(device=x.device, dtype=x.dtype)


def collect_stats(block: nn.Module, inputs: list[BlockInput], sample_tokens: int) -> dict[str, LinearStats]:
    """Run ``block`` over ``inputs`` and return {linear name: stats of its input} (shared objects)."""
    stats: dict[str, LinearStats] = {}
    # inputs seen in this forward, by address: Linears reading one tensor (q/k/v, gate/up) share
    # stats. The tensor is kept alive with its entry: once freed, its address could be reused by a
    # later Linear's input of the same shape (o_proj's, say), which would then be taken for a
    # shared input and get the wrong statistics, depending on the allocator (found as run-to-run
    # differences of GPTQ/AWQ results).
    seen: dict[tuple[int, tuple[int, ...]], tuple[LinearStats, torch.Tensor]] = {}
    per_batch = -(-sample_tokens // max(len(inputs), 1))

    def record(name: str, x: torch.Tensor) -> None:
        key = (x.data_ptr(), tuple(x.shape))
        st = stats.get(name) or (seen[key][0] if key in seen else None)
        if st is None:
            st = LinearStats(x.shape[-1], x.device, sample_tokens)
        stats[name] = st
        if key not in seen:
            st.add(x, per_batch)
            seen[key] = (st, x)
        st.names.append(name) if name not in st.names else None

    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: record(name, _weight_input(mod, inp[0])))
        for name, m in block.named_modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        for h, kw in inputs:
            seen.clear()
            block(h, **kw)
    finally:
        for hook in hooks:
            hook.remove()
    return stats


def quantize_blocks(
    model: nn.Module,
    fmt: FormatSpec,
    method: MethodSpec,
    cfg: MethodConfig,
    options: QuantOptions,
    report: QuantReport,
    ids: torch.Tensor,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    device: torch.device | str | None = None,
    io: BlockIO = IN_MEMORY,
    formats: Mapping[str, FormatSpec] | None = None,
) -> None:
    """``formats``: a format per Linear (qualified name; a bit budget's choice), else ``fmt`` for all.
    A Linear given a 16-bit format stays a float Linear."""
    device = torch.device(device or "cpu")
    layers = decoder_layers(model)
    total = sum(isinstance(m, nn.Linear) for b in layers for m in b.modules())
    io.load("model.embed_tokens")  # what the calibration windows go through first
    inputs, block_kwargs = capture_inputs(model, ids, options.batch_size, device)
    kept: list[Kept] = []  # min-heap of the most sensitive so far
    done = 0
    for b, block in enumerate(layers):
        inputs = [(h, kw) for (h, _), kw in zip(inputs, block_kwargs[b], strict=True)]
        io.load(f"model.layers.{b}")
        dtype = next(block.parameters()).dtype
        block.to(device=device, dtype=torch.float32)
        stats = collect_stats(block, inputs, options.sample_tokens)
        top = {n: st.top_channels() for n, st in stats.items()}  # before any scale is folded

        def fmt_of(name: str, b: int = b) -> FormatSpec:
            return formats.get(f"model.layers.{b}.{name}", fmt) if formats else fmt

        if method.prepare_block is not None:
            # a block of mixed formats: AWQ's scale search aims at its narrowest format
            chosen = [f for f in map(fmt_of, stats) if not f.is_float]
            block_fmt = min(chosen, key=lambda f: f.bits_per_weight()) if chosen else fmt
            report.block_info.append({"block": b, **method.prepare_block(block, stats, block_fmt, cfg)})
        report.block_info.append({"block": b, "act_top": top})  # the largest input channels (engine.inspect)
        linears = [(n, m) for n, m in block.named_modules() if isinstance(m, nn.Linear)]
        for lfmt, job, st in _jobs(linears, stats, fmt_of):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"quantization cancelled at model.layers.{b}.{job[0][0]}")
            if progress:
                progress(done, total, f"block {b + 1}/{len(layers)}: {', '.join(n for n, _ in job)}")
            t0 = time.perf_counter()
            weights = [m.weight.detach().float() for _, m in job]
            if lfmt.is_float:  # a bit budget kept these 16-bit: they stay float Linears
                for (name, _), w in zip(job, weights, strict=True):
                    report.layers.append(_float_report(f"model.layers.{b}.{name}", w, lfmt, st))
                    done += 1
                continue
            # Linears reading one input are quantized as one matrix (rows are independent in
            # every method here; GPTQ then runs its column loop once for q, k and v)
            whole = method.linear(torch.cat(weights), st, lfmt, cfg)
            seconds = (time.perf_counter() - t0) / len(job)
            x = st.sample if st is not None else torch.zeros(1, weights[0].shape[1], device=device)
            row = 0
            for (name, module), w in zip(job, weights, strict=True):
                full = f"model.layers.{b}.{name}"
                qw = _rows(whole, row, w.shape[0])
                row += w.shape[0]
                rel, sqnr, out = weight_errors(w, qw.dequantize(torch.float32), x)
                out = float(out)  # x is given: always a number
                # codes live on the CPU: only the block being worked on stays on the device
                set_module(block, name, QLinear(qw.to("cpu"), module.bias, input_transform_of(module)))
                report.layers.append(LayerReport(full, qw.shape, lfmt.name, seconds, rel, sqnr, out))
                if options.keep_sensitive:
                    item = (out, full, w.cpu(), len(report.layers) - 1)
                    if len(kept) < options.keep_sensitive:
                        heapq.heappush(kept, item)
                    elif out > kept[0][0]:
                        heapq.heapreplace(kept, item)
                done += 1
            del whole, module
        # the float Linears and their weights go now, not when the next block replaces the names
        del stats, linears, job, weights, w
        qlinears = [m for m in block.modules() if isinstance(m, QLinear)]
        for q in qlinears:
            q.prepare(device, torch.float32, "dense")
        with torch.no_grad():
            inputs = [(_hidden(block(h, **kw)), kw) for h, kw in inputs]
        for q in qlinears:
            q.backend, q._buffers_k = None, {}
            if q.bias is not None:
                q.bias.data = q.bias.data.to("cpu", dtype)
        block.to(device="cpu", dtype=dtype)
        io.done(f"model.layers.{b}")
    del inputs, block_kwargs
    _keep_sensitive(model, kept, options, report)
    if progress:
        progress(total, total, "blocks done")


def _float_report(name: str, w: torch.Tensor, fmt: FormatSpec, st: LinearStats | None) -> LayerReport:
    """The report of a Linear a bit budget kept in a 16-bit format (its error: the cast's)."""
    x = st.sample if st is not None else torch.zeros(1, w.shape[1], device=w.device)
    rel, sqnr, out = weight_errors(w, w.to(fmt.torch_dtype).float(), x)
    return LayerReport(name, (w.shape[0], w.shape[1]), fmt.name, 0.0, rel, sqnr, out)


def _keep_sensitive(model: nn.Module, kept: list[Kept], options: QuantOptions, report: QuantReport) -> None:
    for out, name, w, index in sorted(kept, reverse=True):
        old = cast(QLinear, model.get_submodule(name))  # quantized by quantize_blocks
        bias = old.bias
        if options.sensitive_bits >= 16:
            dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
            new: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=dtype)
            new.weight.data = w.to(dtype)
            if bias is not None:
                new.bias.data = bias.data.to(dtype)
            new.requires_grad_(False)
            label, rel, sqnr = "bf16" if dtype == torch.bfloat16 else str(dtype), 0.0, float("inf")
        else:
            qw = get_format("int8").quantize(w)
            new = QLinear(qw, bias)
            rel, sqnr, _ = weight_errors(w, qw.dequantize(torch.float32))
            label = "int8"
        set_module(model, name, new)
        layer = report.layers[index]
        report.layers[index] = LayerReport(name, layer.shape, label, layer.seconds, rel, sqnr, None)
        report.kept.append(name)
        report.block_info.append({"kept": name, "out_rel_error_before": round(out, 6)})
