"""Quantization formats: each one registered spec that says how weights become codes and back.

Every low-bit format here is *affine per group*: a code ``q`` (unsigned, ``bits`` wide) stands for

    w = (mult * q - zero) * scale

with one ``scale`` (stored f16) per group of ``group_size`` input weights of an output row, and
``zero`` either an integer per group (asymmetric formats, stored uint8, so that a weight of 0 is
exactly representable) or a constant of the format (symmetric ones). ``group_size=None`` means one
group per output row (int8 per channel). Rows whose length the group size does not divide are
padded with zeros to whole groups (SmolLM2's 576 with groups of 128 -> 640); statistics ignore the
padding and the padding is sliced away on dequantize.

Adding a format means registering one :class:`FormatFamily` here: kernels (``layers.py``), the
store and the methods work from the spec's fields, never from its name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.errors import FormatError
from engine.quant import primitives as P


@dataclass(frozen=True)
class QuantizedWeight:
    """A quantized 2-D weight as it is stored: packed codes, f16 scales, optional int zeros."""

    fmt: FormatSpec
    shape: tuple[int, int]  # (out_features, in_features) of the real weight
    qweight: torch.Tensor  # uint8 [out, padded_in * bits / 8]
    scales: torch.Tensor  # float16 [out, n_groups]
    qzeros: torch.Tensor | None  # uint8 [out, n_groups] for asymmetric formats

    def codes(self) -> torch.Tensor:
        """Unpacked codes ``[out, padded_in]`` (uint8)."""
        return P.unpack(self.qweight, self.fmt.bits)

    def zero_points(self) -> torch.Tensor:
        """Per-group zero in code units (float32 ``[out, n_groups]``), constant or stored."""
        if self.qzeros is not None:
            return self.qzeros.float()
        return torch.full(self.scales.shape, self.fmt.zero_const, device=self.scales.device)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The real-valued weight ``[out, in]`` this encodes (reference path; never per call)."""
        out_features, in_features = self.shape
        group = self.fmt.group_for(in_features)
        codes = self.codes().float().reshape(out_features, -1, group)
        weight = self.fmt.decode(codes, self.scales, self.qzeros).reshape(out_features, -1)
        return weight[:, :in_features].to(dtype)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}.qweight": self.qweight, f"{prefix}.scales": self.scales}
        if self.qzeros is not None:
            out[f"{prefix}.qzeros"] = self.qzeros
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors, measured (``FormatSpec.storage_bytes`` predicts it)."""
        tensors = [self.qweight, self.scales] + ([self.qzeros] if self.qzeros is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device | str) -> QuantizedWeight:
        """The same weight with its tensors on ``device``."""
        qzeros = self.qzeros.to(device) if self.qzeros is not None else None
        return QuantizedWeight(self.fmt, self.shape, self.qweight.to(device), self.scales.to(device), qzeros)


@dataclass(frozen=True)
class FormatSpec:
    """One concrete format, e.g. ``int4-g64`` or ``q1_0_g128``."""

    name: str
    family: str
    bits: int  # code width; 16 for the float formats
    group_size: int | None  # None: one group per output row
    symmetric: bool
    grid: str  # "float" | "affine" | "symint" | "halfstep" | "sign"
    mult: int = 1  # code multiplier in w = (mult*q - zero) * scale
    zero_const: float = 0.0  # zero for symmetric grids (ignored when asymmetric)
    description: str = ""
    zero_dtype: str = "uint8"  # storage of asymmetric zeros: "uint8" (integer) or "float16" (HQQ-style)

    @property
    def is_float(self) -> bool:
        return self.grid == "float"

    @property
    def levels(self) -> int:
        return 1 << self.bits

    def group_for(self, in_features: int) -> int:
        return self.group_size or in_features

    @property
    def zero_bytes(self) -> int:
        """Bytes of one stored zero point per group: 0 (symmetric), 1 (uint8) or 2 (float16)."""
        if self.symmetric:
            return 0
        return 2 if self.zero_dtype == "float16" else 1

    def storage_bytes(self, shape: tuple[int, int]) -> int:
        """Bytes a weight of ``shape`` (out, in) takes stored in this format: the one formula the
        size estimates, bits/weight figures and tests use (a 16-bit format: 2 bytes a weight)."""
        out_features, in_features = shape
        if self.is_float:
            return out_features * in_features * self.bits // 8
        group = self.group_for(in_features)
        n_groups = -(-in_features // group)
        codes = out_features * P.packed_length(P.padded_length(in_features, group), self.bits)
        return codes + out_features * n_groups * (2 + self.zero_bytes)

    def bits_per_weight(self, in_features: int | None = None) -> float:
        """Storage bits per real weight of a row of ``in_features``: codes + f16 scale (+ zero) per
        group (+ padding); 4096 when not given."""
        k = in_features or 4096
        return self.storage_bytes((1, k)) * 8 / k

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "f16": torch.float16}.get(self.family, torch.bfloat16)

    # ---------------------------------------------------------------- round to nearest
    def quantize(
        self, weight: torch.Tensor, scales: torch.Tensor | None = None, zeros: torch.Tensor | None = None
    ) -> QuantizedWeight:
        """Round-to-nearest quantization of ``weight`` ``[out, in]``.

        ``scales``/``zeros`` (``[out, n_groups]``) may be given by a calibrated method; by default
        they come from the group statistics (min/max, absmax or mean |w|).
        """
        if self.is_float:
            raise FormatError(f"{self.name} is a float format; it is cast, not quantized")
        if weight.dim() != 2:
            raise FormatError(f"{self.name}: expected a 2-D weight, got shape {tuple(weight.shape)}")
        w = weight.detach().float()
        group = self.group_for(w.shape[1])
        groups, mask = P.grouped(w, group)
        if scales is None:
            scales, zeros = self.default_params(groups, mask)
        scales = self.stored_scales(scales)
        codes = self.encode(groups, scales.unsqueeze(-1), zeros)
        codes = codes.reshape(w.shape[0], -1).to(torch.uint8)
        return QuantizedWeight(
            fmt=self,
            shape=(w.shape[0], w.shape[1]),
            qweight=P.pack(codes, self.bits),
            scales=scales.to(torch.float16).contiguous(),
            qzeros=None if zeros is None else zeros.to(getattr(torch, self.zero_dtype)).contiguous(),
        )

    def fake_quantize(self, weight: torch.Tensor) -> torch.Tensor:
        """What ``quantize(weight).dequantize()`` gives, in float and without packing (AWQ's search
        tries many scalings of one weight)."""
        w = weight.detach().float()
        groups, mask = P.grouped(w, self.group_for(w.shape[1]))
        scales, zeros = self.default_params(groups, mask)
        scales = self.stored_scales(scales)
        codes = self.encode(groups, scales.unsqueeze(-1), zeros)
        return self.decode(codes, scales, zeros).reshape(w.shape[0], -1)[:, : w.shape[1]]

    @staticmethod
    def stored_scales(scales: torch.Tensor) -> torch.Tensor:
        """Scales as stored (rounded through f16, kept above f16's smallest normal): codes are
        chosen against the scale the kernels will use."""
        return scales.float().to(torch.float16).float().clamp(min=torch.finfo(torch.float16).tiny)

    def decode(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None) -> torch.Tensor:
        """``(mult * q - zero) * scale`` for codes ``[out, groups, group]`` (float) with scales and
        zeros ``[out, groups]``; the one place a code becomes a number."""
        zero = zeros.float().unsqueeze(-1) if zeros is not None else self.zero_const
        return (self.mult * codes - zero) * scales.float().unsqueeze(-1)

    def default_params(
        self, groups: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        qmax = self.levels - 1
        if self.grid == "affine" and self.zero_dtype == "float16":
            # a float zero (int4fz/int2fz): the group's own min and max, the zero not rounded, as
            # llama.cpp's Q4_1 does (w = d*q + m with d = (max-min)/qmax, m = min; here m = -zero*d);
            # the zero is chosen against the stored f16 scale and stored in f16 itself
            lo, hi = P.masked_minmax(groups, mask)
            # a near-constant group: a step of at least |w|/2**15 keeps the zero inside f16's range
            scales = torch.maximum((hi - lo) / qmax, torch.maximum(lo.abs(), hi.abs()) / 32768).clamp(
                min=1e-8
            )
            scales16 = self.stored_scales(scales)
            return scales, (-lo / scales16).to(torch.float16).float()
        if self.grid == "affine":
            lo, hi = P.masked_minmax(groups, mask)
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)  # keep 0 inside the range
            scales = ((hi - lo) / qmax).clamp(min=1e-8)
            scales16 = scales.to(torch.float16).float().clamp(min=1e-8)
            zeros = torch.round(-lo / scales16).clamp(0, qmax)
            return scales, zeros
        lo, hi = P.masked_minmax(groups, mask)
        absmax = torch.maximum(lo.abs(), hi.abs())
        if self.grid == "symint":
            return absmax / (self.levels // 2 - 1), None
        if self.grid == "halfstep":
            return absmax / (self.levels / 2 - 0.5), None
        if self.grid == "sign":
            return P.masked_absmean(groups, mask), None
        raise FormatError(f"{self.name}: unknown grid {self.grid}")

    def encode(self, groups: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None) -> torch.Tensor:
        """Nearest code for each weight given per-group scales ``[out, g, 1]`` (and zeros)."""
        qmax = self.levels - 1
        if self.grid == "sign":
            return (groups >= 0).to(torch.uint8)
        zero = zeros.unsqueeze(-1).float() if zeros is not None else self.zero_const
        q = torch.round((groups / scales + zero) / self.mult)
        return q.clamp(0, qmax)


@dataclass(frozen=True)
class FormatFamily:
    """A family (``int4``) and how to build a concrete spec from options."""

    family: str
    bits: int
    default_group: int | None
    groups: tuple[int | None, ...]
    default_symmetric: bool
    build: Callable[[int | None, bool], FormatSpec]  # (group_size, symmetric) -> FormatSpec
    summary: str
    listed: tuple[str, ...] = ()  # the names offered in lists and menus (and tested), in order


def _float_family(name: str) -> FormatFamily:
    spec = FormatSpec(name, name, 16, None, True, "float", description=f"{name} weights (no quantization)")
    return FormatFamily(name, 16, None, (None,), True, lambda g, s: spec, spec.description, (name,))


def _int8(group: int | None, symmetric: bool) -> FormatSpec:
    if not symmetric:
        raise FormatError("int8 is symmetric per output channel (zero must stay exactly 0)")
    if group is not None:
        raise FormatError("int8 is per output channel; it takes no group size")
    return FormatSpec(
        "int8",
        "int8",
        8,
        None,
        True,
        "symint",
        zero_const=128.0,
        description="int8 per output channel, symmetric",
    )


def _uniform(bits: int) -> Callable[[int | None, bool], FormatSpec]:
    """intN group-wise: asymmetric min/max with an integer zero, or symmetric around 2**(N-1)."""

    def build(group: int | None, symmetric: bool) -> FormatSpec:
        suffix = "-sym" if symmetric else ""
        kind = "symmetric" if symmetric else "asymmetric (int zero)"
        return FormatSpec(
            f"int{bits}-g{group}{suffix}",
            f"int{bits}",
            bits,
            group,
            symmetric,
            "symint" if symmetric else "affine",
            zero_const=float(1 << (bits - 1)),
            description=f"int{bits}, groups of {group}, {kind}",
        )

    return build


def _int2(group: int | None, symmetric: bool) -> FormatSpec:
    if symmetric:
        return FormatSpec(
            f"int2-g{group}",
            "int2",
            2,
            group,
            True,
            "halfstep",
            zero_const=1.5,
            description=f"int2, groups of {group}, grid {{-1.5,-0.5,+0.5,+1.5}}*scale",
        )
    return FormatSpec(
        f"int2-g{group}-asym",
        "int2",
        2,
        group,
        False,
        "affine",
        description=f"int2, groups of {group}, asymmetric min/max",
    )


def _w8a8(group: int | None, symmetric: bool) -> FormatSpec:
    if group is not None:
        raise FormatError("w8a8 is per output channel; it takes no group size")
    return FormatSpec(
        "w8a8",
        "w8a8",
        8,
        None,
        True,
        "symint",
        zero_const=128.0,
        description="int8 weights per output channel x int8 activations per token (dynamic)",
    )


def _float_zero(bits: int) -> Callable[[int | None, bool], FormatSpec]:
    """int4fz / int2fz: asymmetric with an f16 zero per group (HQQ's solution kept exactly)."""

    def build(group: int | None, symmetric: bool) -> FormatSpec:
        if symmetric:
            raise FormatError(f"int{bits}fz has a float zero point; it is asymmetric by definition")
        return FormatSpec(
            f"int{bits}fz-g{group}",
            f"int{bits}fz",
            bits,
            group,
            False,
            "affine",
            description=f"int{bits}, groups of {group}, f16 scale and f16 zero (float zero, as HQQ finds it)",
            zero_dtype="float16",
        )

    return build


def _q1(group: int | None, symmetric: bool) -> FormatSpec:
    if group != 128:
        raise FormatError("q1_0 is defined with groups of 128")
    return FormatSpec(
        "q1_0_g128",
        "q1",
        1,
        128,
        True,
        "sign",
        mult=2,
        zero_const=1.0,
        description="1-bit sign + one f16 scale (mean |w|) per 128 weights",
    )


KERNEL_GROUPS = (32, 64, 128, 256)
FAMILIES: dict[str, FormatFamily] = {}


def register(family: FormatFamily) -> None:
    FAMILIES[family.family] = family


register(_float_family("bf16"))
register(_float_family("f16"))
register(
    FormatFamily("int8", 8, None, (None,), True, _int8, "int8 per output channel (symmetric)", ("int8",))
)
register(
    FormatFamily(
        "int4", 4, 64, KERNEL_GROUPS, False, _uniform(4), "int4 group-wise",
        ("int4-g32", "int4-g64", "int4-g128", "int4-g64-sym"),
    )
)  # fmt: skip
register(FormatFamily("int3", 3, 64, KERNEL_GROUPS, False, _uniform(3), "int3 group-wise", ("int3-g64",)))
register(
    FormatFamily("int2", 2, 64, KERNEL_GROUPS, True, _int2, "int2 group-wise", ("int2-g64", "int2-g64-asym"))
)
register(FormatFamily("q1", 1, 128, (128,), True, _q1, "1-bit sign with mean-|w| scale", ("q1_0_g128",)))
register(
    FormatFamily(
        "int4fz", 4, 64, KERNEL_GROUPS, False, _float_zero(4), "int4 group-wise, float zero", ("int4fz-g64",)
    )
)
register(
    FormatFamily(
        "int2fz", 2, 64, KERNEL_GROUPS, False, _float_zero(2), "int2 group-wise, float zero", ("int2fz-g64",)
    )
)
register(FormatFamily("w8a8", 8, None, (None,), True, _w8a8, "int8 weights x int8 activations", ("w8a8",)))

_ALIASES = {
    "fp16": "f16",
    "float16": "f16",
    "bfloat16": "bf16",
    "1bit": "q1",
    "1-bit": "q1",
    "q1_0": "q1",
    "q1_0_g128": "q1",
    "int1": "q1",
}
_NAME = re.compile(r"^(?P<fam>[a-z0-9_]+?)(?:-g(?P<g>\d+))?(?P<sym>-sym|-asym)?$")


def get_format(name: str, group_size: int | None = None, symmetric: bool | None = None) -> FormatSpec:
    """Parse ``int4``, ``int4-g128``, ``int4-g64-sym``, ``int2-g64-asym``, ``q1_0_g128``, ``bf16``..."""
    raw = name.strip().lower()
    raw = _ALIASES.get(raw, raw)
    m = _NAME.match(raw)
    fam_name = _ALIASES.get(m.group("fam"), m.group("fam")) if m else raw
    family = FAMILIES.get(fam_name)
    if family is None or m is None:
        known = ", ".join(list_format_names())
        raise FormatError(f"unknown format {name!r}; known: {known}")
    if m.group("g"):
        group_size = int(m.group("g"))
    if m.group("sym"):
        symmetric = m.group("sym") == "-sym"
    if group_size is None:
        group_size = family.default_group
    if symmetric is None:
        symmetric = family.default_symmetric
    # families without group sizes (int8, per channel) reject a group in their builder, clearly
    if family.bits < 16 and group_size not in family.groups and any(family.groups):
        allowed = ", ".join(str(g) for g in family.groups if g)
        raise FormatError(f"{fam_name}: group size {group_size} not supported (use {allowed})")
    return family.build(group_size, symmetric)


def list_format_names() -> list[str]:
    """Every listed format name, in registry order (what menus show and tests parametrize over)."""
    return [name for family in FAMILIES.values() for name in family.listed]
