"""How much memory a quantization run will need, told before it starts, and the budget it must fit.

The estimate follows what the streaming pipeline (``engine.stream``) keeps at once: one decoder
block in float32 (and, for GPTQ, a float32 working copy of its widest Linear), the calibration
activations of that block's input and output, the statistics of every distinct Linear input in
the block (a Hessian ``in x in`` in float32, plus a token sample), the embeddings and LM head in
their stored dtype (both in memory at the end), one output shard waiting to be written, and what
the process already holds (torch, transformers, the tokenizer): measured, not guessed. A run that
cannot stream (a model given in memory, mixed precision, a model-level method) holds the whole
model in float32 instead of one block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from engine.errors import QtuiError
from engine.telemetry import rss_bytes
from engine.units import human_bytes

if TYPE_CHECKING:
    from engine.quant.calibration import CalibrationSpec

SHARD_BYTES = 256 << 20  # output shard size while streaming (what waits in memory before a write)
HEADROOM = 0.10  # of the free memory left to everything else when no budget is given
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}  # fmt: skip


class BudgetError(QtuiError):
    """The run would not fit in the memory budget (or the budget was written wrong)."""


@dataclass(frozen=True)
class MemoryEstimate:
    process: int  # what the process holds before the run (measured)
    block: int  # one decoder block in float32 (the whole model when not streaming)
    outside: int  # embeddings, LM head and final norm as stored
    activations: int  # calibration hidden states in and out of a block, and the MLP's widest
    statistics: int  # Hessians and token samples of one block's Linear inputs, GPTQ's working copy
    output: int  # quantized tensors waiting to be written
    streaming: bool
    training: int = 0  # distillation: the teacher, a batch's activations and logits (quant/distill.py)

    @property
    def total(self) -> int:
        parts = self.block + self.outside + self.activations + self.statistics + self.output + self.training
        return self.process + parts

    def describe(self) -> str:
        what = "one block" if self.streaming else "the whole model"
        return (
            f"~{human_bytes(self.total)} peak: {what} in float32 {human_bytes(self.block)}, embeddings/head "
            f"{human_bytes(self.outside)}, activations {human_bytes(self.activations)}, statistics "
            f"{human_bytes(self.statistics)}, output {human_bytes(self.output)}, "
            + (f"distillation {human_bytes(self.training)}, " if self.training else "")
            + f"process {human_bytes(self.process)}"
        )


def parse_bytes(text: str) -> int:
    """``6GB``, ``6 GiB``, ``512MB``, ``1.5g``, ``2000000000`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise BudgetError(f"memory size {text!r} not understood (use e.g. 6GB, 512MB, 8GiB)")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise BudgetError(f"memory size {text!r} must be more than 0")
    return value


def default_budget() -> int:
    """What the machine has free now, less a headroom for everything else."""
    import psutil

    return int(psutil.virtual_memory().available * (1 - HEADROOM))


def estimate(
    model: nn.Module,
    stored_bytes_per_weight: int,
    calibration: CalibrationSpec | None,
    streaming: bool,
    gptq: bool = False,
    batch_size: int = 8,
    sample_tokens: int = 512,
) -> MemoryEstimate:
    """The peak of quantizing ``model`` (a skeleton is enough: only shapes are read)."""
    layers = getattr(getattr(model, "model", model), "layers", None)
    blocks = list(layers) if layers is not None else []
    block_params = max((_numel(b) for b in blocks), default=0)
    all_params = _numel(model)
    outside = (all_params - sum(_numel(b) for b in blocks)) * stored_bytes_per_weight
    block = block_params * 4 if streaming else all_params * 4
    acts = stats = 0
    hidden = getattr(getattr(model, "config", None), "hidden_size", 0) or 0
    if calibration is not None and blocks:
        tokens = calibration.samples * calibration.seq_len
        linears = [m for m in blocks[0].modules() if isinstance(m, nn.Linear)]
        widest_out = max((m.out_features for m in linears), default=hidden)
        # the block's input and output hidden states, plus one batch's widest intermediate (x3:
        # gate, up and their product)
        acts = (
            2 * tokens * hidden * 4
            + 3 * min(batch_size, calibration.samples) * calibration.seq_len * widest_out * 4
        )
        inputs = {m.in_features for m in linears}  # Linears reading one input share statistics
        per_input = sum(n * n * 4 + sample_tokens * n * 4 + 3 * n * 4 for n in inputs)
        # q/k/v (and gate/up) read one tensor: their Hessian is counted once per width, but a
        # block can have more distinct inputs of one width (o_proj's); count every Linear that
        # is not one of the first of its width conservatively as a separate input
        extra = sum(m.in_features**2 * 4 for m in linears) - sum(n * n * 4 for n in inputs)
        stats = per_input + max(extra // 2, 0)
        if gptq:  # a float32 copy of the widest job's weight, its error and the inverse Hessian
            widest = max(linears, key=lambda m: m.in_features * m.out_features)
            stats += 2 * widest.in_features * widest.out_features * 4 + widest.in_features**2 * 4
    output = SHARD_BYTES if streaming else 0
    return MemoryEstimate(rss_bytes(), block, outside, acts, stats, output, streaming)


def check(est: MemoryEstimate, budget: int) -> None:
    """One line when the estimate does not fit: what it needs, the budget, what to do."""
    if est.total > budget:
        raise BudgetError(
            f"this run needs ~{human_bytes(est.total)} ({'one block' if est.streaming else 'the whole model'}"
            f" in float32: {human_bytes(est.block)}) but the memory budget is {human_bytes(budget)}; "
            "give more with --max-memory, use fewer calibration samples, or a machine with more memory"
        )


def _numel(module: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
