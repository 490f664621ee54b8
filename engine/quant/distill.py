"""Distillation: after any method, teach the quantized model to answer like the 16-bit one.

The codes every method chose stay frozen. What is trained, on calibration text, against the 16-bit
model's next-token distribution (loss: KL(teacher || student) per token, averaged):

* every quantized Linear's group scales, as a multiplier ``s = s0 * exp(t)`` (``t`` starts at 0,
  so Adam's step is a relative change whatever the scale's magnitude; EfficientQAT's "E2E-QP"
  trains the same quantity), and its zeros where they are float (int4fz, HQQ); integer zeros stay;
* optionally (``adapter_rank > 0``) a low-rank adapter beside each Linear, ``y += (x A^T) B^T``
  with ``A [r, in]``, ``B [out, r]`` (HQQ+'s recovery adapters; ``B`` starts at zero so step 0 is
  the quantized model). Adapters are saved with the variant (16-bit) and run as two small matmuls
  beside the quantized kernel (:class:`engine.quant.layers.QLinear`).

End to end, on the CPU or the quantizing device: each step runs the teacher (no gradients) and the
student on ``batch`` windows; the student's weights are decoded from its frozen codes with the
trainable scales (``FormatSpec.decode``, the one code-to-number formula, so what is trained is what
the kernels compute). A held-out part of the calibration text (the last windows of its *distinct*
tokens, never seen in training) is scored every ``eval_every`` steps; the best state is kept, and
training stops early after ``patience`` scores without improvement. A non-finite loss stops the
run and keeps the last good state (the report says so). Cancellation is checked every step.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from engine import typed
from engine.errors import Cancelled, QtuiError
from engine.progress import ProgressFn
from engine.quant.calibration import Calibration
from engine.quant.formats import FormatSpec
from engine.quant.layers import QLinear
from engine.typed import option

STAGE = "distill"  # the progress stage of a distillation; its steps read "step N/M, KL x, held-out y"
_STEP = re.compile(r"^distill: step \d+/\d+, KL (\S+),")


def loss_of(text: str) -> float | None:
    """The training loss a distillation step's progress text carries (for a live loss curve)."""
    match = _STEP.match(text)
    if match is None:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


class DistillError(QtuiError):
    """Distillation cannot run with what it was given."""


@dataclass(frozen=True)
class DistillConfig:
    steps: int = option(50, "training steps (batches)", min=1, max=100_000)
    adapter_rank: int = option(0, "rank of a low-rank adapter beside each Linear (0: none)", min=0, max=512)
    lr: float = option(
        3e-3, "Adam learning rate (relative scale change per step; adapters)", min=1e-7, max=1.0
    )
    batch: int = option(2, "calibration windows per step", min=1, max=256)
    heldout: int = option(
        4, "distinct calibration windows held out for early stop (at most half)", min=1, max=64
    )
    eval_every: int = option(10, "steps between held-out scores", min=1, max=100_000)
    patience: int = option(4, "held-out scores without improvement before stopping", min=1, max=1000)
    seed: int = option(0, "order of the training windows and the adapters' start", min=0, max=2**31 - 1)


@dataclass
class DistillReport:
    """What a distillation did, for the manifest, the report and the Quantize screen's curve."""

    config: DistillConfig
    train_windows: int
    heldout_windows: int
    seq_len: int
    steps_run: int = 0
    tokens_seen: int = 0  # training tokens through the student (with repeats)
    losses: list[float] = field(default_factory=list)  # training KL per step
    heldout: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out KL)
    best_step: int = 0
    stop: str = ""  # why it ended
    seconds: float = 0.0
    trained_params: int = 0
    adapter_params: int = 0

    @property
    def heldout_before(self) -> float:
        return self.heldout[0][1] if self.heldout else float("nan")

    @property
    def heldout_best(self) -> float:
        return min((k for _, k in self.heldout), default=float("nan"))

    def describe(self) -> dict[str, object]:
        cfg = self.config
        return {
            "steps": cfg.steps,
            "steps_run": self.steps_run,
            "adapter_rank": cfg.adapter_rank,
            "lr": cfg.lr,
            "batch": cfg.batch,
            "seq_len": self.seq_len,
            "train_tokens": self.train_windows * self.seq_len,
            "heldout_tokens": self.heldout_windows * self.seq_len,
            "tokens_seen": self.tokens_seen,
            "heldout_kld_before": _round(self.heldout_before),
            "heldout_kld_best": _round(self.heldout_best),
            "best_step": self.best_step,
            "stop": self.stop,
            "seconds": round(self.seconds, 1),
            "trained_params": self.trained_params,
            "adapter_params": self.adapter_params,
            "loss_curve": [_round(x) for x in _thin(self.losses, 100)],
            "heldout_curve": [[s, _round(k)] for s, k in self.heldout],
        }


def summary(info: object) -> str:
    """A manifest's ``distill`` entry in one line (empty when the variant was not distilled)."""
    if not isinstance(info, dict):
        return ""
    adapter = f", adapters r{info['adapter_rank']}" if info.get("adapter_rank") else ""
    return (
        f"held-out KL {info.get('heldout_kld_before')} -> {info.get('heldout_kld_best')} "
        f"(best step {info.get('best_step')} of {info.get('steps_run')}{adapter}; "
        f"{info.get('train_tokens')} training tokens, {info.get('tokens_seen')} seen; {info.get('stop')})"
    )


def _round(x: float) -> float | None:
    return round(x, 5) if math.isfinite(x) else None


def _thin(xs: list[float], n: int) -> list[float]:
    """At most ``n`` points of a curve: the means of equal runs."""
    if len(xs) <= n:
        return list(xs)
    per = math.ceil(len(xs) / n)
    return [sum(xs[i : i + per]) / len(xs[i : i + per]) for i in range(0, len(xs), per)]


def parse(text: str) -> DistillConfig | None:
    """What a user typed for distillation in the app: ``""`` (none), ``"60"`` (steps), ``"60 r8"``
    (steps and an adapter of rank 8), plus any ``KEY=VALUE`` of :class:`DistillConfig`."""
    words = text.split()
    if not words:
        return None
    values: dict[str, object] = {}
    rest: list[str] = []
    for word in words:
        if word.isdigit():
            values["steps"] = word
        elif re.fullmatch(r"r\d+", word):
            values["adapter_rank"] = word[1:]
        else:
            rest.append(word)
    values.update(typed.parse_assignments(rest, "distillation parameter"))
    return typed.build(DistillConfig, values, "distillation")


def split_windows(calibration: Calibration, heldout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) windows ``[n, seq_len]`` cut from the calibration stream's *distinct*
    tokens (a short stream is repeated to fill the windows; a held-out window must not reappear
    in training). The last ``heldout`` windows are held out, at most half of them."""
    ids = calibration.ids
    seq_len = int(ids.shape[1])
    distinct = min(int(calibration.unique_tokens), ids.numel())
    windows = distinct // seq_len
    held = max(1, min(heldout, windows // 2))
    if windows - held < 1:
        raise DistillError(
            f"distillation needs calibration tokens left after the held-out split: {distinct} distinct "
            f"tokens make {windows} window(s) of {seq_len}, {held} held out; give more calibration "
            "text (--calibration FILE:SAMPLESxSEQ_LEN) or shorter windows"
        )
    flat = ids.flatten()[: windows * seq_len].reshape(windows, seq_len)
    return flat[: windows - held].clone(), flat[windows - held :].clone()


def memory_bytes(model: nn.Module, config: DistillConfig, seq_len: int) -> int:
    """What distillation adds to a quantization's peak, from shapes alone: the teacher in float32,
    the student's decoded weights and saved activations for one batch, the logits (and their
    gradients) for one batch, the held-out targets, Adam's two moments of the trained values."""
    cfg = getattr(model, "config", None)
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    inter = int(getattr(cfg, "intermediate_size", 0) or 4 * hidden)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    params = sum(p.numel() for p in model.parameters())
    tokens = config.batch * seq_len
    saved = tokens * layers * (10 * hidden + 4 * inter) * 4  # what backward needs, per block
    logits = 4 * tokens * vocab * 4 + config.heldout * seq_len * vocab * 4
    trained = params // 32 * 3 * 4 + config.adapter_rank * (hidden + inter) * 7 * layers * 3 * 4
    return params * 4 * 2 + saved + logits + trained  # teacher + decoded student weights


# ------------------------------------------------------------------------------ trainable layer
class TrainableLinear(nn.Module):
    """A :class:`QLinear` during distillation: frozen codes, trainable scales (and float zeros),
    an optional low-rank adapter; the weight is decoded each forward with ``FormatSpec.decode``."""

    codes: torch.Tensor  # registered buffers (not saved: the layer keeps the stored form)
    scale0: torch.Tensor
    zero0: torch.Tensor | None
    transform: torch.Tensor | None
    bias: torch.Tensor | None

    def __init__(self, layer: QLinear, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        qw = layer.qw
        if qw is None:
            raise DistillError("distillation needs the stored codes; the layer was laid out for a kernel")
        self.layer = layer
        self.fmt: FormatSpec = qw.fmt
        self.out_features, self.in_features = qw.shape
        group = self.fmt.group_for(self.in_features)
        self.register_buffer("codes", qw.codes().reshape(self.out_features, -1, group), persistent=False)
        self.register_buffer("scale0", qw.scales.float(), persistent=False)
        self.log_scale = nn.Parameter(torch.zeros_like(self.scale0))
        float_zero = qw.qzeros is not None and self.fmt.zero_dtype == "float16"
        self.register_buffer("zero0", qw.qzeros.float() if qw.qzeros is not None else None, persistent=False)
        self.zero_shift = nn.Parameter(torch.zeros_like(self.scale0)) if float_zero else None
        self.register_buffer(
            "transform",
            layer.input_transform.float() if layer.input_transform is not None else None,
            persistent=False,
        )
        self.register_buffer(
            "bias", layer.bias.detach().float() if layer.bias is not None else None, persistent=False
        )
        self.adapter_a: nn.Parameter | None = None
        self.adapter_b: nn.Parameter | None = None
        if rank:
            a = torch.randn(rank, self.in_features, generator=generator) / math.sqrt(self.in_features)
            self.adapter_a = nn.Parameter(a)
            self.adapter_b = nn.Parameter(torch.zeros(self.out_features, rank))
        elif layer.adapter_a is not None and layer.adapter_b is not None:  # trained before: go on
            self.adapter_a = nn.Parameter(layer.adapter_a.float())
            self.adapter_b = nn.Parameter(layer.adapter_b.float())

    def scales(self) -> torch.Tensor:
        return self.scale0 * torch.exp(self.log_scale)

    def zeros(self) -> torch.Tensor | None:
        if self.zero_shift is not None and self.zero0 is not None:
            return self.zero0 + self.zero_shift
        return self.zero0

    def weight(self) -> torch.Tensor:
        w = self.fmt.decode(self.codes.float(), self.scales(), self.zeros())
        return w.reshape(self.out_features, -1)[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.transform is not None:
            x = x @ self.transform
        y = F.linear(x, self.weight(), self.bias)
        if self.adapter_a is not None and self.adapter_b is not None:
            y = y + (x @ self.adapter_a.t()) @ self.adapter_b.t()
        return y

    def state(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.parameters()]

    def load(self, state: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, s in zip(self.parameters(), state, strict=True):
                p.copy_(s)

    def write_back(self) -> QLinear:
        """The trained values into the layer, as they are stored (f16 scales and float zeros,
        16-bit adapters); returns the layer."""
        layer, qw = self.layer, self.layer.qw
        assert qw is not None
        with torch.no_grad():
            scales = FormatSpec.stored_scales(self.scales()).to(qw.scales.dtype)
            zeros = self.zeros() if self.zero_shift is not None else None
            qzeros = qw.qzeros if zeros is None or qw.qzeros is None else zeros.to(qw.qzeros.dtype)
            layer.qw = dataclasses.replace(qw, scales=scales, qzeros=qzeros)
            if self.adapter_a is not None and self.adapter_b is not None:
                layer.set_adapter(self.adapter_a.detach(), self.adapter_b.detach())
        return layer


# ------------------------------------------------------------------------------ the run
def _swap(model: nn.Module, build: Callable[[str, nn.Module], nn.Module | None]) -> None:
    for name, module in list(model.named_modules()):
        new = build(name, module)
        if new is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)


def _log_probs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, use_cache=False)
    return F.log_softmax(out.logits.float(), dim=-1)


def kl_per_token(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student), mean over tokens (natural log)."""
    return (
        F.kl_div(student_logp, teacher_logp, log_target=True, reduction="sum") / teacher_logp[..., 0].numel()
    )


def distill(
    student: nn.Module,
    teacher: nn.Module,
    calibration: Calibration,
    config: DistillConfig = DistillConfig(),
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    device: torch.device | str | None = None,
) -> DistillReport:
    """Train ``student``'s quantized Linears (in place) towards ``teacher`` on ``calibration``.

    ``student`` is the quantized model in float32 with :class:`QLinear` layers still holding their
    codes (before kernels are laid out); ``teacher`` the 16-bit model it came from (any dtype).
    Raises :class:`Cancelled` when ``cancel`` is set (the student is then unusable: discard it)."""
    train, held = split_windows(calibration, config.heldout)
    dev = torch.device(device or "cpu")
    report = DistillReport(config, int(train.shape[0]), int(held.shape[0]), int(train.shape[1]))
    gen = torch.Generator().manual_seed(config.seed)
    layers: list[TrainableLinear] = []

    def to_trainable(name: str, module: nn.Module) -> nn.Module | None:
        if isinstance(module, QLinear):
            layers.append(TrainableLinear(module, config.adapter_rank, gen))
            return layers[-1]
        return None

    for p in student.parameters():
        p.requires_grad_(False)
    _swap(student, to_trainable)
    if not layers:
        raise DistillError("nothing to distill: the model has no quantized Linear")
    student.to(dev)
    teacher.to(dev).eval()
    params = [p for layer in layers for p in layer.parameters()]
    report.trained_params = sum(p.numel() for p in params)
    report.adapter_params = sum(
        p.numel() for layer in layers for p in (layer.adapter_a, layer.adapter_b) if p is not None
    )
    start = time.perf_counter()

    def say(step: int, text: str) -> None:
        if progress:
            progress(step, config.steps, f"{STAGE}: {text}")

    try:
        with torch.no_grad():  # the held-out targets once
            held_targets = [_log_probs(teacher, w.unsqueeze(0).to(dev)) for w in held]

        def score() -> float:
            with torch.no_grad():
                total = sum(
                    float(kl_per_token(t, _log_probs(student, w.unsqueeze(0).to(dev))))
                    for t, w in zip(held_targets, held, strict=True)
                )
            return total / len(held_targets)

        best = score()
        report.heldout.append((0, best))
        best_state = [layer.state() for layer in layers]
        say(0, f"held-out KL {best:.4f} before training")
        opt = torch.optim.Adam(params, lr=config.lr)
        order = torch.randperm(train.shape[0], generator=gen)
        at, bad = 0, 0
        report.stop = f"ran {config.steps} steps"
        for step in range(1, config.steps + 1):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"distillation cancelled at step {step}; nothing was saved")
            if at + config.batch > len(order):
                order, at = torch.randperm(train.shape[0], generator=gen), 0
            batch = train[order[at : at + config.batch]].to(dev)
            at += config.batch
            with torch.no_grad():
                target = _log_probs(teacher, batch)
            loss = kl_per_token(target, _log_probs(student, batch))
            value = float(loss.detach())
            if not math.isfinite(value):
                report.stop = f"stopped at step {step}: the loss is {value}; kept step {report.best_step}"
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            report.steps_run, report.tokens_seen = step, report.tokens_seen + batch.numel()
            report.losses.append(value)
            if step % config.eval_every == 0 or step == config.steps:
                held_kl = score()
                report.heldout.append((step, held_kl))
                if held_kl < best:
                    best, bad, report.best_step = held_kl, 0, step
                    best_state = [layer.state() for layer in layers]
                else:
                    bad += 1
                if not math.isfinite(held_kl):
                    report.stop = (
                        f"stopped at step {step}: held-out KL is {held_kl}; kept step {report.best_step}"
                    )
                    break
                if bad >= config.patience:
                    report.stop = f"early stop at step {step}: held-out KL did not improve for {bad} scores"
                    break
            say(step, f"step {step}/{config.steps}, KL {value:.4f}, held-out {best:.4f}")
        for layer, state in zip(layers, best_state, strict=True):
            layer.load(state)
    finally:
        by_id = {id(layer): layer for layer in layers}
        _swap(student, lambda _n, m: by_id[id(m)].write_back() if id(m) in by_id else None)
        student.to("cpu")
    report.seconds = time.perf_counter() - start
    say(config.steps, f"held-out KL {report.heldout_before:.4f} -> {report.heldout_best:.4f}")
    return report
