"""What the quantizer needs to know about a decoder architecture, discovered from the model itself.

* **Decoder blocks**: ``model.model.layers``, a ``ModuleList`` whose blocks hold ``nn.Linear``
  layers (every transformers decoder-only family of the llama lineage). A model without it, or whose
  blocks keep 2-D weights outside Linears (mixture-of-experts tensors, convolutions), is a one-line
  :class:`SourceError` naming the architecture. :func:`check_config` runs the same checks on a
  meta-device skeleton built from a config (no weights, no memory).
* **Linears of a block** are found by type; which of them read one input is decided at run time by
  the block driver (same tensor: shared statistics, one quantization job).
* **Norms a per-channel scale can fold into** (AWQ, SmoothQuant) are found by tracing: the skeleton
  runs one forward pass on the meta device while hooks note every module's output and a
  ``TorchFunctionMode`` notes every operation that reads it. A norm precedes a group of Linears
  when its output *is* their input and nothing else reads it. How the scale enters the norm is then
  found on the norm itself (:func:`norm_rule`): ``x * w`` (Llama RMSNorm, LayerNorm; a bias is
  divided too) or ``x * (1 + w)`` (Gemma). A norm with neither cannot take a scale; Linears reading
  the residual stream (OLMo-2 puts its norms after attention and MLP) have no norm before them. Such
  groups are skipped and reported, never folded approximately.
* **Linear -> Linear folds** stay name-based (``v_proj -> o_proj``, ``up_proj -> down_proj``): the
  product ``act(gate) * up`` is no tensor identity a trace could see. Fused layouts fold only the
  rows that are exact: the value rows of Phi-3's ``qkv_proj`` into ``o_proj`` and the up half of
  ``gate_up_proj`` into ``down_proj``. An attention with a ``v_norm`` gets no ``v -> o`` fold.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from engine.errors import SourceError
from engine.quant.methods import LinearStats

# how a scale s folds into the module before: its output divided by s
Rule = Literal["linear", "weight", "one_plus_weight"]


def model_type(model_or_config: object) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    return str(getattr(config, "model_type", None) or type(model_or_config).__name__)


def unsupported(arch: str, why: str) -> SourceError:
    return SourceError(f"architecture {arch!r} is not supported: {why}")


# ------------------------------------------------------------------------------ blocks and Linears
def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks, in order (``model.model.layers``)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise unsupported(model_type(model), f"{type(model).__name__} has no decoder blocks at model.layers")
    return layers


def block_linears(block: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name in the block, Linear) in forward-definition order."""
    return [(n, m) for n, m in block.named_modules() if isinstance(m, nn.Linear)]


def check_model(model: nn.Module) -> None:
    """Blocks found, each with Linears, and no 2-D weight outside them (nothing left unquantized)."""
    arch = model_type(model)
    for i, block in enumerate(decoder_blocks(model)):
        linears = block_linears(block)
        if not linears:
            raise unsupported(arch, f"its decoder blocks ({type(block).__name__}) have no Linear layers")
        owned = {id(p) for _, lin in linears for p in lin.parameters()}
        for name, p in block.named_parameters():
            if p.dim() >= 2 and id(p) not in owned:
                raise unsupported(
                    arch, f"model.layers.{i}.{name} is a {p.dim()}-D weight outside a Linear layer"
                )


def skeleton(config: Any) -> nn.Module:
    """The model ``config`` describes, on the meta device (no weights allocated)."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(config)
    with torch.device("meta"):
        model: nn.Module = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    return model.eval()


def check_config(config: Any) -> None:
    """:func:`check_model` on the meta skeleton of ``config``; a one-line SourceError if it fails."""
    try:
        model = skeleton(config)
    except Exception as exc:  # transformers raises many types for configs it cannot build
        raise unsupported(
            model_type(config), f"transformers cannot build it as a causal LM ({_short(exc)})"
        ) from exc
    check_model(model)


def restore_buffers(model: nn.Module, module: nn.Module) -> bool:
    """Recompute ``module``'s buffers that no checkpoint holds and a meta skeleton left empty
    (Gemma's ``embed_scale``, rotary ``inv_freq``) with the model's own initializer, its parameters
    untouched (flagged as initialised, as transformers does for loaded weights). True when none is
    left on the meta device."""
    init = getattr(model, "_init_weights", None)
    empty = {n: b for n, b in module.named_buffers(recurse=False) if b.is_meta}
    if init is None or not empty or any(not b.is_floating_point() for b in empty.values()):
        return not empty
    for name, b in empty.items():  # NaN until the initializer writes it
        module._buffers[name] = torch.full(b.shape, float("nan"), dtype=b.dtype)
    params = list(module.parameters(recurse=False))
    flags = [p.__dict__.get("_is_hf_initialized") for p in params]
    try:
        for p in params:
            p._is_hf_initialized = True  # type: ignore[attr-defined]  # transformers' own flag
        with torch.no_grad():
            init(module)
    except Exception:
        pass  # judged below
    finally:
        for p, flag in zip(params, flags, strict=True):
            if flag is None:
                p.__dict__.pop("_is_hf_initialized", None)
            else:
                p._is_hf_initialized = flag  # type: ignore[attr-defined]
    if any(bool(module._buffers[n].isnan().any()) for n in empty):  # type: ignore[union-attr]
        for name, b in empty.items():
            module._buffers[name] = b
        return False
    return True


# ------------------------------------------------------------------------------ tracing
@dataclass(frozen=True)
class InputGroup:
    """Linears reading one input, and the norm that produced it (``None``: ``why`` there is none)."""

    linears: tuple[str, ...]
    norm: str | None
    why: str = ""


Layout = tuple[InputGroup, ...]


class _Uses(TorchFunctionMode):
    """Notes, for each watched tensor, which Linears (by weight) or other operations read it."""

    def __init__(self, weights: dict[int, str]):
        super().__init__()
        self.weights = weights
        self.watched: dict[int, torch.Tensor] = {}
        self.uses: dict[int, set[str | None]] = {}

    def watch(self, t: torch.Tensor) -> None:
        self.watched[id(t)] = t  # kept alive: its id cannot be reused during the trace
        self.uses.setdefault(id(t), set())

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = [o for o in tree_leaves(out) if isinstance(o, torch.Tensor)]
        for leaf in tree_leaves((args, kwargs)):
            if not isinstance(leaf, torch.Tensor) or self.watched.get(id(leaf)) is not leaf:
                continue
            if not outs or (len(outs) == 1 and outs[0] is leaf):
                continue  # a metadata query (shape, dtype) or a no-op (.to of the same dtype)
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            linear = self.weights.get(id(weight)) if func is F.linear else None
            self.uses[id(leaf)].add(linear)
        return out


def _trace_blocks(model: nn.Module) -> list[Layout]:
    """One forward pass of a meta skeleton: the input groups of every block and their norms."""
    blocks = decoder_blocks(model)
    weights = {id(m.weight): f"{b}:{n}" for b, block in enumerate(blocks) for n, m in block_linears(block)}
    mode = _Uses(weights)
    produced: dict[int, str] = {}  # id(output) -> "block:module" (leaf modules other than Linears)
    inputs: dict[str, torch.Tensor] = {}  # "block:linear" -> its input
    block_in: dict[int, torch.Tensor] = {}

    def on_output(key: str, out: object) -> None:
        # the first module to return a tensor made it (an eval-mode dropout hands its input back)
        if isinstance(out, torch.Tensor) and id(out) not in produced:
            produced[id(out)] = key
            mode.watch(out)

    with ExitStack() as stack:
        for b, block in enumerate(blocks):
            hooks = [
                block.register_forward_pre_hook(
                    lambda m, a, kw, b=b: block_in.__setitem__(b, a[0] if a else kw["hidden_states"]),
                    with_kwargs=True,
                )
            ]
            for name, m in block.named_modules():
                if isinstance(m, nn.Linear):
                    hooks.append(
                        m.register_forward_pre_hook(lambda m, a, k=f"{b}:{name}": inputs.__setitem__(k, a[0]))
                    )
                elif name and not any(True for _ in m.children()):
                    hooks.append(m.register_forward_hook(lambda m, a, o, k=f"{b}:{name}": on_output(k, o)))
            for h in hooks:
                stack.callback(h.remove)
        stack.enter_context(_no_data_dependent_masks())
        stack.enter_context(torch.no_grad())
        stack.enter_context(mode)
        ids = torch.zeros(1, 8, dtype=torch.long, device="meta")
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    layouts: list[Layout] = []
    for b in range(len(blocks)):
        groups: dict[int, list[str]] = {}  # in the order the forward pass calls them
        for key, x in inputs.items():
            where, _, name = key.partition(":")
            if where == str(b):
                groups.setdefault(id(x), []).append(name)
        layout = []
        for tensor_id, names in groups.items():
            x = inputs[f"{b}:{names[0]}"]
            producer = produced.get(tensor_id, "")
            readers = mode.uses.get(tensor_id, set())
            if x is block_in.get(b):
                group = InputGroup(tuple(names), None, "they read the block's input (the residual stream)")
            elif not producer.startswith(f"{b}:"):
                group = InputGroup(
                    tuple(names), None, "their input is computed in the block, not a norm's output"
                )
            elif readers != {f"{b}:{n}" for n in names}:
                norm = producer.split(":", 1)[1]
                group = InputGroup(tuple(names), None, f"{norm}'s output is also read by other operations")
            else:
                group = InputGroup(tuple(names), producer.split(":", 1)[1])
            layout.append(group)
        layouts.append(tuple(layout))
    return layouts


@contextmanager
def _no_data_dependent_masks() -> Iterator[None]:
    """transformers' mask helpers look at mask values (``.all()``) unless they think they are being
    traced; on the meta device there are no values, so they are told they are."""
    from transformers import masking_utils

    if not hasattr(masking_utils, "is_tracing"):
        yield
        return
    with mock.patch.object(masking_utils, "is_tracing", lambda *a, **k: True):
        yield


def _merge(layouts: list[Layout]) -> Layout:
    """The layout of every block: a norm is kept only where all blocks agree on it."""
    first = layouts[0]
    if all(lay == first for lay in layouts):
        return first
    merged = []
    for group in first:
        same = all(group in lay for lay in layouts)
        merged.append(
            group if same else InputGroup(group.linears, None, "blocks differ in where their norms are")
        )
    return tuple(merged)


_LAYOUTS: dict[str, Layout | str] = {}


def layout_of(config: Any) -> Layout | str:
    """The traced layout of a block of ``config``'s model, or why it could not be traced (cached)."""
    try:
        key = config.to_json_string(use_diff=False)
    except Exception:
        key = json.dumps(repr(config))
    if key not in _LAYOUTS:
        try:
            _LAYOUTS[key] = _merge(_trace_blocks(skeleton(config)))
        except Exception as exc:  # a forward pass that does not run on the meta device
            _LAYOUTS[key] = f"could not trace {model_type(config)} on the meta device ({_short(exc)})"
    return _LAYOUTS[key]


def block_config(block: nn.Module) -> Any:
    """The model config a block keeps (transformers' attention modules hold one), or None."""
    for m in block.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "model_type") and hasattr(cfg, "to_json_string"):
            return cfg
    return None


def block_layout(block: nn.Module) -> Layout | str:
    config = block_config(block)
    if config is None:
        return f"{type(block).__name__} keeps no config to trace"
    layout = layout_of(config)
    if isinstance(layout, str):
        return layout
    names = {n for n, _ in block_linears(block)}
    if {n for g in layout for n in g.linears} != names:
        return f"{type(block).__name__}'s Linears differ from its config's skeleton"
    return layout


# ------------------------------------------------------------------------------ folds
@dataclass(frozen=True)
class Fold:
    """``prev``'s output is divided by a per-channel scale, the ``linears``' input columns multiplied
    by it. ``rows``: for a Linear ``prev``, the (start, count) of its output rows that feed them."""

    prev: str
    linears: tuple[str, ...]
    rule: Rule = "linear"
    rows: tuple[int, int] | None = None


@dataclass
class FoldPlan:
    folds: list[tuple[Fold, nn.Module]]  # in forward order of their first Linear
    skipped: dict[str, str]  # "linear, linear": why no scale folds into their input
    linear_groups: set[tuple[str, ...]]  # consumers of name-based Linear -> Linear pairs (found or not)


def norm_rule(norm: nn.Module, channels: int) -> Rule | None:
    """How dividing ``norm``'s output by a per-channel scale is written into its parameters, tried
    on the norm itself (a copy): ``weight`` (``x * w [+ b]``), ``one_plus_weight`` (``x * (1 + w)``),
    or None (it cannot take one exactly)."""
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != (channels,):
        return None
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (channels,)):
        return None
    if any(p is not weight and p is not bias for p in norm.parameters()):
        return None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, channels, generator=g).to(weight.device, weight.dtype)
    s = (0.5 + 1.5 * torch.rand(channels, generator=g)).to(weight.device)
    with torch.no_grad():
        want = norm(x).float() / s
        for rule in ("weight", "one_plus_weight"):
            trial = copy.deepcopy(norm)
            _fold_into_norm(trial, rule, s)
            got = trial(x).float()
            if (
                got.shape == want.shape
                and float((got - want).abs().max()) <= 1e-4 * float(want.abs().max()) + 1e-6
            ):
                return rule
    return None


def _fold_into_norm(norm: nn.Module, rule: Rule, s: torch.Tensor) -> None:
    weight = norm.weight
    assert isinstance(weight, torch.Tensor)  # norm_rule checked it
    if rule == "one_plus_weight":
        weight.add_(1).div_(s.to(weight.dtype)).sub_(1)
    else:
        weight.div_(s.to(weight.dtype))
    bias = getattr(norm, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.div_(s.to(bias.dtype))


@torch.no_grad()
def fold_scale(
    prev: nn.Module, fold: Fold, linears: list[nn.Linear], s_in: torch.Tensor, s_prev: torch.Tensor
) -> None:
    """Divide ``prev``'s output (its ``fold.rows``) by ``s_prev``, multiply the Linears' input columns
    by ``s_in``: the block computes the same function (exactly, in real arithmetic)."""
    if isinstance(prev, nn.Linear):
        start, count = fold.rows or (0, prev.out_features)
        prev.weight[start : start + count].div_(s_prev.to(prev.weight.dtype).unsqueeze(1))
        if prev.bias is not None:
            prev.bias[start : start + count].div_(s_prev.to(prev.bias.dtype))
    else:
        _fold_into_norm(prev, fold.rule, s_prev)
    for lin in linears:
        lin.weight.mul_(s_in.to(lin.weight.dtype).unsqueeze(0))


def _linear_folds(block: nn.Module) -> Iterator[Fold | tuple[str, str]]:
    """Name-based Linear -> Linear folds; a (consumer, why) pair where the pair exists but cannot fold."""
    linears = dict(block_linears(block))
    for name, lin in linears.items():
        parent, _, leaf = name.rpartition(".")
        p = f"{parent}." if parent else ""
        if leaf == "o_proj":
            if f"{p}v_proj" in linears:
                if _has(block, f"{p}v_norm"):
                    yield name, f"{p}v_norm sits between v_proj and o_proj"
                else:
                    yield Fold(f"{p}v_proj", (name,))
            elif f"{p}qkv_proj" in linears:
                extra = linears[f"{p}qkv_proj"].out_features - lin.in_features  # k and v rows
                if extra > 0 and extra % 2 == 0:
                    total = linears[f"{p}qkv_proj"].out_features
                    yield Fold(f"{p}qkv_proj", (name,), rows=(total - extra // 2, extra // 2))
                else:
                    yield name, "qkv_proj's rows do not split into q, k, v"
        elif leaf == "down_proj":
            if f"{p}up_proj" in linears:
                yield Fold(f"{p}up_proj", (name,))
            elif f"{p}gate_up_proj" in linears:
                if linears[f"{p}gate_up_proj"].out_features == 2 * lin.in_features:
                    yield Fold(f"{p}gate_up_proj", (name,), rows=(lin.in_features, lin.in_features))
                else:
                    yield name, "gate_up_proj's rows do not split into gate, up"


def _has(block: nn.Module, name: str) -> bool:
    try:
        block.get_submodule(name)
    except AttributeError:
        return False
    return True


def fold_plan(block: nn.Module, stats: dict[str, LinearStats]) -> FoldPlan:
    """Where AWQ / SmoothQuant can fold a per-channel scale in ``block``, and where not (and why)."""
    folds: list[tuple[Fold, nn.Module]] = []
    skipped: dict[str, str] = {}
    linear_groups: set[tuple[str, ...]] = set()

    def shared(names: tuple[str, ...]) -> bool:  # the run-time statistics agree: one input, only theirs
        st = stats.get(names[0])
        return st is not None and all(stats.get(n) is st for n in names) and set(st.names) == set(names)

    layout = block_layout(block)
    if isinstance(layout, str):
        skipped["norms"] = f"not traced: {layout}"
        layout = ()
    # folds run in forward order (the trace's; the definition order without one): an earlier
    # fold's search sees the weights as the forward pass meets them
    called = [n for group in layout for n in group.linears]
    order = {n: i for i, n in enumerate(called or [n for n, _ in block_linears(block)])}
    for group in layout:
        label = ", ".join(group.linears)
        if group.norm is None:
            skipped[label] = f"no norm to fold into: {group.why}"
            continue
        norm = block.get_submodule(group.norm)
        in_features = cast(nn.Linear, block.get_submodule(group.linears[0])).in_features
        rule = norm_rule(norm, in_features)
        if rule is None:
            skipped[label] = f"{group.norm} ({type(norm).__name__}) cannot take a per-channel scale"
        elif not shared(group.linears):
            skipped[label] = "their inputs differ at run time"
        else:
            folds.append((Fold(group.norm, group.linears, rule), norm))
    for item in _linear_folds(block):
        if isinstance(item, tuple):
            linear_groups.add((item[0],))
            skipped[item[0]] = f"no Linear -> Linear fold: {item[1]}"
            continue
        linear_groups.add(item.linears)
        skipped.pop(", ".join(item.linears), None)
        if shared(item.linears):
            folds.append((item, block.get_submodule(item.prev)))
        else:
            skipped[", ".join(item.linears)] = "their inputs differ at run time"
    folds.sort(key=lambda f: order[f[0].linears[0]])
    return FoldPlan(folds, skipped, linear_groups)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]
