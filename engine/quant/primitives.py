"""Low-level pieces shared by every format: bit packing and group-wise statistics.

Codes are always unsigned integers ``0 .. 2**bits - 1`` stored in ``uint8``; a format says how a
code maps back to a real number (see ``formats.py``). Any width from 1 to 8 bits packs
along the last dimension (see :func:`pack`).
"""

from __future__ import annotations

import torch

MAX_BITS = 8


def _check(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"cannot pack {bits}-bit codes; widths 1 to {MAX_BITS} are supported")


def packed_length(n_codes: int, bits: int) -> int:
    """Bytes that ``n_codes`` codes of ``bits`` bits take (``n_codes`` a multiple of 8)."""
    return n_codes * bits // 8


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (``uint8``, values < 2**bits) along the last dim into bytes.

    Widths that divide 8 put ``8 // bits`` codes in a byte, the first code in the lowest bits.
    Other widths (3, 5, 6, 7) pack runs of 8 codes into ``bits`` bytes, little-endian: the codes
    form one ``8 * bits``-bit integer with the first code in the lowest bits.
    """
    _check(bits)
    codes = codes.to(torch.uint8)
    if bits == 8:
        return codes.contiguous()
    per_run = 8 // bits if 8 % bits == 0 else 8
    if codes.shape[-1] % per_run:
        raise ValueError(f"last dim {codes.shape[-1]} is not a multiple of {per_run}")
    if 8 % bits == 0:
        grouped = codes.reshape(*codes.shape[:-1], codes.shape[-1] // per_run, per_run)
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
        return (grouped << shifts).sum(dim=-1, dtype=torch.uint8).contiguous()
    runs = codes.reshape(*codes.shape[:-1], -1, 8).to(torch.int64)
    shifts = torch.arange(0, 8 * bits, bits, dtype=torch.int64, device=codes.device)
    word = (runs << shifts).sum(dim=-1, keepdim=True)  # [..., runs, 1], at most 56 bits
    byte_shifts = torch.arange(0, 8 * bits, 8, dtype=torch.int64, device=codes.device)
    out = ((word >> byte_shifts) & 0xFF).to(torch.uint8)  # [..., runs, bits]
    return out.reshape(*codes.shape[:-1], -1).contiguous()


def unpack(packed: torch.Tensor, bits: int, length: int | None = None) -> torch.Tensor:
    """Inverse of :func:`pack`; ``length`` trims the last dim (defaults to all codes)."""
    _check(bits)
    mask = (1 << bits) - 1
    if bits == 8:
        out = packed.to(torch.uint8)
    elif 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
        out = (packed.unsqueeze(-1) >> shifts) & mask
        out = out.reshape(*packed.shape[:-1], packed.shape[-1] * (8 // bits))
    else:
        runs = packed.reshape(*packed.shape[:-1], -1, bits).to(torch.int64)
        byte_shifts = torch.arange(0, 8 * bits, 8, dtype=torch.int64, device=packed.device)
        word = (runs << byte_shifts).sum(dim=-1, keepdim=True)
        shifts = torch.arange(0, 8 * bits, bits, dtype=torch.int64, device=packed.device)
        out = ((word >> shifts) & mask).to(torch.uint8)
        out = out.reshape(*packed.shape[:-1], -1)
    if length is not None:
        out = out[..., :length]
    return out.contiguous()


def padded_length(in_features: int, group_size: int) -> int:
    """``in_features`` rounded up to a whole number of groups (576 -> 640 for groups of 128)."""
    return -(-in_features // group_size) * group_size


def grouped(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split rows into groups, padding the last group with zeros.

    Returns ``(groups, mask)`` with shape ``[out, n_groups, group_size]``; ``mask`` is True on
    real weights and False on padding, so statistics can ignore the padding.
    """
    out_features, in_features = weight.shape
    padded = padded_length(in_features, group_size)
    mask = torch.ones(out_features, padded, dtype=torch.bool, device=weight.device)
    if padded != in_features:
        weight = torch.nn.functional.pad(weight, (0, padded - in_features))
        mask[:, in_features:] = False
    n_groups = padded // group_size
    return (
        weight.reshape(out_features, n_groups, group_size),
        mask.reshape(out_features, n_groups, group_size),
    )


def masked_minmax(groups: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    big = torch.finfo(groups.dtype).max
    lo = groups.masked_fill(~mask, big).amin(dim=-1)
    hi = groups.masked_fill(~mask, -big).amax(dim=-1)
    return lo, hi


def masked_absmean(groups: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    total = (groups.abs() * mask).sum(dim=-1)
    return total / mask.sum(dim=-1).clamp(min=1)
