"""Incoherence processing: rotate a model so that its weights fit a uniform grid (QuaRot, SpinQuant).

A decoder's residual stream can be expressed in any orthonormal basis: with ``x' = x R`` (``R``
orthogonal, ``d x d``), every Linear that reads the stream through an RMSNorm computes the same
thing with ``W' = (W diag(g)) R`` (the norm's gain ``g`` fused into the columns first, the norm's
weight then set to one: RMSNorm commutes with rotations, its gain does not), and every Linear that
writes into the stream with ``W' = R^T W`` (bias ``b R``). Inside attention, each head's value and
output space takes a second rotation ``H`` (the head width's Hadamard): ``W_v' = H^T W_v`` per kv
head and ``W_o' = W_o H`` per head. The function is unchanged (exactly, in real arithmetic: a test
compares logits at float32 precision); the weights are not: a product with a random-signed
Hadamard or Haar-random orthogonal matrix spreads every row's few large entries over all of them,
so rows become near Gaussian and a 2-4 bit grid fits them (QuIP#'s "incoherence").

Where ``R`` goes: the embeddings and the LM head are left as they are (a tied table stays one
table) and the stream is rotated on entry (``embed(ids) @ R``) and back on exit (``x' @ R^T``
before the final norm): two ``d x d`` products per token, ~0.5% of the default model's work.
``R`` is saved with the variant (float32, ``qtui_rotation.input_transform``) and the hooks are put
back when it is loaded.

``kind``: ``hadamard`` (a Hadamard matrix of order ``d``, Sylvester/Paley/Kronecker-built when one
of those constructions reaches ``d`` (576 = 36 x 16, 2560 = 20 x 128), times seeded random signs)
or ``random`` (a seeded Haar-random orthogonal matrix; also what ``hadamard`` falls back to when no
construction reaches ``d``, said in the report).

Architectures whose norms sit on block outputs (Gemma-2/3's and OLMo-2's post-norms) cannot be
rotated this way: the refusal names the norm.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

import torch
from torch import nn

from engine.errors import QtuiError
from engine.quant import arch

Kind = Literal["none", "hadamard", "random"]
KINDS: tuple[Kind, ...] = ("none", "hadamard", "random")
MODULE = "qtui_rotation"
KEY = f"{MODULE}.input_transform"  # the suffix the store keeps in float32
OUTPUT_LINEARS = ("o_proj", "down_proj")  # write into the residual stream


class RotationError(QtuiError):
    """The model cannot be rotated (the message names the layer)."""


# ------------------------------------------------------------------------------ matrices
def _is_prime(n: int) -> bool:
    return n > 1 and all(n % p for p in range(2, int(n**0.5) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    squares = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0] + [1 if i in squares else -1 for i in range(1, q)], dtype=torch.float64)
    idx = (torch.arange(q).unsqueeze(0) - torch.arange(q).unsqueeze(1)) % q  # [i, j] = j - i
    return chi[idx]


def _paley(n: int) -> torch.Tensor | None:
    """A Hadamard matrix of order ``n`` by Paley's constructions (prime ``q`` only), or None."""
    q = n - 1
    if _is_prime(q) and q % 4 == 3:  # Paley I: order q + 1
        s = torch.zeros(n, n, dtype=torch.float64)
        s[0, 1:], s[1:, 0] = 1, -1
        s[1:, 1:] = _jacobsthal(q)
        return s + torch.eye(n, dtype=torch.float64)
    if n % 2 == 0:
        q = n // 2 - 1
        if _is_prime(q) and q % 4 == 1:  # Paley II: order 2(q + 1)
            s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
            s[0, 1:], s[1:, 0] = 1, 1
            s[1:, 1:] = _jacobsthal(q)
            a = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
            b = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
            return torch.kron(s, a) + torch.kron(torch.eye(q + 1, dtype=torch.float64), b)
    return None


@cache
def hadamard(n: int) -> torch.Tensor | None:
    """A +-1 Hadamard matrix of order ``n`` (``H H^T = n I``), or None when no construction here
    reaches ``n``: Sylvester (powers of two), Paley I/II (``q + 1``, ``2(q + 1)``, ``q`` prime) and
    Kronecker products of those."""
    if n == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if n % 2:
        return None
    if n & (n - 1) == 0:
        h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        half = hadamard(n // 2)
        assert half is not None
        return torch.kron(h2, half)
    base = _paley(n)
    if base is not None:
        return base
    for m in range(4, n // 2 + 1, 4):  # n = m * (n / m): a Paley order times any Hadamard order
        a = _paley(m) if n % m == 0 else None
        b = hadamard(n // m) if a is not None else None
        if a is not None and b is not None:
            return torch.kron(a, b)
    return None


def orthogonal(n: int, kind: Kind, seed: int) -> tuple[torch.Tensor, str]:
    """An ``n x n`` orthogonal matrix (float64) and what it is, reproducible from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    if kind == "hadamard":
        h = hadamard(n)
        if h is not None:
            signs = torch.randint(0, 2, (n,), generator=g, dtype=torch.float64) * 2 - 1
            return signs.unsqueeze(1) * h / n**0.5, f"hadamard({n}) x random signs (seed {seed})"
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # Haar: fix QR's sign ambiguity
    what = f"random orthogonal({n}) (seed {seed})"
    return q, what if kind == "random" else f"{what}: no Hadamard construction reaches {n}"


# ------------------------------------------------------------------------------ the stream
class ResidualRotation(nn.Module):
    """Holds ``R`` and rotates the residual stream on entry (after the embeddings) and back on exit
    (before the final norm). Hooks, so the model's own modules and state-dict names stay as they are."""

    input_transform: torch.Tensor

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("input_transform", matrix.detach().float())

    def enter(self, module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        return out @ self.input_transform.to(out.dtype)

    def leave(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        return (x @ self.input_transform.to(x.dtype).T, *args[1:])


def final_norm(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", model)
    norm = getattr(inner, "norm", None)
    if not isinstance(norm, nn.Module):
        raise RotationError(f"{arch.model_type(model)}: no final norm at model.norm to rotate back before")
    return norm


def install(model: nn.Module, matrix: torch.Tensor) -> ResidualRotation:
    """Attach ``R`` to ``model`` (as ``model.qtui_rotation``, saved with it) and its two hooks."""
    rot = ResidualRotation(matrix)
    model.add_module(MODULE, rot)
    embed = model.get_input_embeddings()  # type: ignore[operator]
    embed.register_forward_hook(rot.enter)
    final_norm(model).register_forward_pre_hook(rot.leave)
    return rot


# ------------------------------------------------------------------------------ the plan
def _norms(block: nn.Module, d: int) -> dict[str, nn.Module]:
    return {
        n: m
        for n, m in block.named_modules()
        if "norm" in type(m).__name__.lower()
        and isinstance(getattr(m, "weight", None), torch.Tensor)
        and tuple(m.weight.shape) == (d,)
    }


def plan_block(block: nn.Module, prefix: str, d: int) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(norm, the Linears reading it) pairs and the Linears writing into the stream, or a
    :class:`RotationError` naming what does not fit."""
    layout = arch.block_layout(block)
    if isinstance(layout, str):
        raise RotationError(f"{prefix}: cannot trace the block ({layout})")
    linears = dict(arch.block_linears(block))
    reads: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for group in layout:
        if group.norm is None:
            continue
        norm = block.get_submodule(group.norm)
        if "rms" not in type(norm).__name__.lower():  # a LayerNorm centres: no rotation commutes
            raise RotationError(f"{prefix}.{group.norm} is a {type(norm).__name__}, not an RMSNorm")
        if arch.norm_rule(norm, d) not in ("weight", "one_plus_weight"):
            raise RotationError(f"{prefix}.{group.norm}: its gain cannot be fused into the Linears after it")
        reads.append((group.norm, list(group.linears)))
        seen.update(group.linears)
    post = sorted(set(_norms(block, d)) - {n for n, _ in reads})
    if post:
        raise RotationError(
            f"{prefix}.{post[0]} normalizes a block output before the residual add (a post-norm): "
            f"a rotation of the residual stream cannot pass through it ({arch.model_type(arch.block_config(block) or block)})"
        )
    writes = [n for n in linears if n not in seen and n.rsplit(".", 1)[-1] in OUTPUT_LINEARS]
    other = [n for n in linears if n not in seen and n not in writes]
    if other:
        raise RotationError(f"{prefix}.{other[0]}: cannot tell which side of the residual stream it is on")
    for name in seen:
        if linears[name].in_features != d:
            raise RotationError(
                f"{prefix}.{name} reads {linears[name].in_features} channels, the stream has {d}"
            )
    for name in writes:
        if linears[name].out_features != d:
            raise RotationError(
                f"{prefix}.{name} writes {linears[name].out_features} channels, the stream has {d}"
            )
    return reads, writes


# ------------------------------------------------------------------------------ rotate
@torch.no_grad()
def rotate_model(model: nn.Module, kind: Kind, seed: int = 0) -> dict[str, object]:
    """Rotate ``model`` in place (see the module docstring); returns what was done, for the report."""
    config: Any = model.config
    d = int(config.hidden_size)
    blocks = arch.decoder_blocks(model)
    final_norm(model)  # everything is checked before a weight changes
    plans = [plan_block(b, f"model.layers.{i}", d) for i, b in enumerate(blocks)]
    r, what = orthogonal(d, kind, seed)
    head_dim = int(getattr(config, "head_dim", None) or d // int(config.num_attention_heads))
    h_head = orthogonal(head_dim, "hadamard", seed + 1)[0] if hadamard(head_dim) is not None else None
    vo = 0
    for block, (reads, writes) in zip(blocks, plans, strict=True):
        for norm_name, names in reads:
            norm = block.get_submodule(norm_name)
            rule = arch.norm_rule(norm, d)
            norm_w: torch.Tensor = norm.weight  # type: ignore[assignment]  # plan_block checked it
            gain = norm_w.double() + (1.0 if rule == "one_plus_weight" else 0.0)
            for name in names:
                w = _linear(block, name).weight
                w.copy_((w.double() * gain.unsqueeze(0)) @ r)
            norm_w.fill_(0.0 if rule == "one_plus_weight" else 1.0)
        for name in writes:
            lin = _linear(block, name)
            lin.weight.copy_(r.T @ lin.weight.double())
            if lin.bias is not None:
                lin.bias.copy_(lin.bias.double() @ r)
        vo += _rotate_heads(block, h_head, head_dim)
    install(model, r)
    return {"rotation": what, "dim": d, "value_output_heads": vo, "head_rotation": head_dim if vo else None}


def _linear(block: nn.Module, name: str) -> nn.Linear:
    lin = block.get_submodule(name)
    assert isinstance(lin, nn.Linear)
    return lin


def _rotate_heads(block: nn.Module, h: torch.Tensor | None, head_dim: int) -> int:
    """``W_v' = H^T W_v`` per kv head, ``W_o' = W_o H`` per head (SpinQuant's R2): foldable, free."""
    attn = getattr(block, "self_attn", None)
    v, o = getattr(attn, "v_proj", None), getattr(attn, "o_proj", None)
    if h is None or not isinstance(v, nn.Linear) or not isinstance(o, nn.Linear) or hasattr(attn, "v_norm"):
        return 0
    if v.out_features % head_dim or o.in_features % head_dim:
        return 0
    hv = torch.kron(torch.eye(v.out_features // head_dim, dtype=h.dtype), h)  # block diagonal
    ho = torch.kron(torch.eye(o.in_features // head_dim, dtype=h.dtype), h)
    v.weight.copy_(hv.T @ v.weight.double())
    if v.bias is not None:
        v.bias.copy_(v.bias.double() @ hv)
    o.weight.copy_(o.weight.double() @ ho)
    return 1
