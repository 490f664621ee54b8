"""QLinear and the kernel backends it runs on.

Backends, tried in order for each layer (the first that supports the format and device wins):

* ``int8pack``: int8 per-channel weights, ``torch._weight_int8pack_mm`` (CPU; CUDA where the
  build has it).
* ``int4pack``: torch's tinygemm int4 kernel (``_weight_int4pack_mm_for_cpu`` on CPU,
  ``_weight_int4pack_mm`` on CUDA). It computes ``(q4 - 8) * scale + zero`` with a float zero per
  group, which represents every grid qtui has at 4 bits or fewer *exactly*: int4 directly, int2
  codes widened to 4-bit codes (q4 = q + 6) and 1-bit signs as q4 = 2q + 6. So int2 and 1-bit run
  at int4 speed and int4 memory at run time (2 / 1 bits on disk); there is no native int2 or
  1-bit kernel in torch, and this is the fastest honest path found. The backend label says so.
* ``dense``: dequantized once at load into a 16-bit weight; used only when no kernel applies
  (reported, never silent).
* ``naive``: dequantize the whole weight on every call. The slow path earlier tools shipped; it
  exists only as a reference for tests and benchmarks and is never picked automatically.

Kernels want 16-bit activations: on CPU quantized variants compute in bf16 (the int4 kernel is
~7x slower with fp32 activations).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.quant import primitives as P
from engine.quant.formats import FormatSpec, QuantizedWeight

Buffers = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Backend:
    name: str
    label: Callable[[FormatSpec], str]
    supports: Callable[[FormatSpec, torch.device], bool]
    prepare: Callable[[QuantizedWeight, torch.device, torch.dtype], Buffers]
    forward: Callable[[torch.Tensor, Buffers, QLinear], torch.Tensor]
    automatic: bool = True


# Many rows at once (prefill, loglik scoring): torch's CPU int4/int8 weight-only kernels are built
# for few rows (decoding) and fall behind the bf16 matmul from a few dozen rows on. From
# ``MANY_ROWS`` rows up, the layer's weight is dequantized to bf16 for that call (one pass over the
# weight, shared by all rows) and the dense matmul runs. Decoding (1 row) never takes this path.
# The thresholds are the crossovers bench/prefill.py measured on the default model (2-core EPYC):
# int8 gains from ~128 rows (128 rows: 78 vs 118 ms), int4 from ~256 (256 rows: 179 vs 215 ms;
# unpacking the int4 layout costs ~0.5 ns a weight). See bench/RESULTS.md.
MANY_ROWS = {"int8pack": 128, "int4pack": 256}


# ------------------------------------------------------------------------------ int4pack
@functools.cache
def int4_cpu_block() -> int | None:
    """The row-block size of ``_convert_weight_to_int4pack_for_cpu``'s layout (64 with AVX-512, 32
    with AVX2 in torch's source), found by packing known codes once; None if no block size explains
    the layout (the many-rows path is then off and the kernel is used for every call)."""
    try:
        codes = torch.randint(0, 16, (128, 64), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    except Exception:
        return None
    for block in (64, 32, 16, 128):
        if torch.equal(_unpack_int4_cpu(packed, 128, 64, block).to(torch.int32), codes):
            return block
    return None


def _unpack_int4_cpu(packed: torch.Tensor, n: int, k: int, block: int) -> torch.Tensor:
    """Codes ``[n, k]`` (uint8) from the CPU int4pack layout: per block of ``block`` rows, ``k``
    runs of ``block / 2`` bytes; row ``j`` of the block in the low nibble, row ``j + block/2`` high."""
    p = packed.reshape(n // block, k, block // 2)
    codes = torch.cat([p & 15, p >> 4], dim=-1)  # [n / block, k, block]
    return codes.permute(0, 2, 1).reshape(n, k)


def _int4_dequantize_cpu(b: Buffers, layer: QLinear) -> torch.Tensor | None:
    block = int4_cpu_block()
    n, k = layer.out_features, layer.padded_in
    if block is None or n % block:
        return None
    codes = _unpack_int4_cpu(b["w"], n, k, block).to(torch.bfloat16).view(n, -1, layer.group_size)
    sz = b["sz"]  # [groups, n, 2]: w = (q - 8) * scale + zero
    scale, zero = sz[..., 0].t().unsqueeze(-1), sz[..., 1].t().unsqueeze(-1)
    return codes.sub_(8).mul_(scale).add_(zero).view(n, k)


def _int4_offset(fmt: FormatSpec) -> int:
    """Offset c that puts ``mult*q + c`` in the middle of the 0..15 int4 code range."""
    return (16 - (fmt.mult * (fmt.levels - 1) + 1)) // 2


def int4_codes_and_params(qw: QuantizedWeight, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Widen ``qw``'s codes to int4 codes and build tinygemm's ``[groups, out, 2]`` (scale, zero)."""
    fmt = qw.fmt
    c = _int4_offset(fmt)
    q4 = qw.codes().to(torch.int32) * fmt.mult + c
    scale = qw.scales.float()
    zero = (8 - c - qw.zero_points()) * scale
    params = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(dtype)
    return q4, params


def _int4_supports(fmt: FormatSpec, device: torch.device) -> bool:
    if fmt.is_float or fmt.bits > 4 or fmt.group_size not in (32, 64, 128, 256):
        return False
    if device.type == "cpu":
        return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
    return device.type == "cuda" and hasattr(torch.ops.aten, "_weight_int4pack_mm")


def _int4_prepare(qw: QuantizedWeight, device: torch.device, dtype: torch.dtype) -> Buffers:
    q4, params = int4_codes_and_params(qw, torch.bfloat16)
    if device.type == "cpu":
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4.contiguous(), 1)
    else:
        kp = q4.shape[1]
        tiles = next(t for t in (8, 4, 2, 1) if kp % (t * 16) == 0)
        as_bytes = ((q4[:, ::2] << 4) | q4[:, 1::2]).to(torch.uint8).to(device)
        packed = torch.ops.aten._convert_weight_to_int4pack(as_bytes.contiguous(), tiles)
    return {"w": packed.to(device), "sz": params.to(device)}


def _int4_forward(x: torch.Tensor, b: Buffers, layer: QLinear) -> torch.Tensor:
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)
    if layer.padded_in != layer.in_features:
        x2 = F.pad(x2, (0, layer.padded_in - layer.in_features))
    if x2.device.type == "cpu":
        w = _int4_dequantize_cpu(b, layer) if x2.shape[0] >= MANY_ROWS["int4pack"] else None
        if w is not None:
            y = F.linear(x2, w)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, b["w"], layer.group_size, b["sz"])
    else:
        y = torch.ops.aten._weight_int4pack_mm(x2.contiguous(), b["w"], layer.group_size, b["sz"])
    return y.reshape(*shape[:-1], -1).to(x.dtype)


def _int4_label(fmt: FormatSpec) -> str:
    if fmt.bits == 4:
        return "int4pack (torch tinygemm int4 kernel)"
    return f"int4pack ({fmt.bits}-bit codes widened to int4; no native {fmt.bits}-bit kernel)"


# ------------------------------------------------------------------------------ int8pack
def _int8_supports(fmt: FormatSpec, device: torch.device) -> bool:
    return fmt.family == "int8" and device.type in ("cpu", "cuda") and hasattr(torch, "_weight_int8pack_mm")


def _int8_prepare(qw: QuantizedWeight, device: torch.device, dtype: torch.dtype) -> Buffers:
    w8 = (qw.codes().to(torch.int16) - int(qw.fmt.zero_const)).to(torch.int8)
    return {"w": w8.to(device).contiguous(), "s": qw.scales[:, 0].to(device=device, dtype=dtype)}


def _int8_forward(x: torch.Tensor, b: Buffers, layer: QLinear) -> torch.Tensor:
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).to(b["s"].dtype)
    if x2.device.type == "cpu" and x2.shape[0] >= MANY_ROWS["int8pack"]:
        y = F.linear(x2, b["w"].to(x2.dtype) * b["s"].unsqueeze(1))
    else:
        y = torch._weight_int8pack_mm(x2.contiguous(), b["w"], b["s"])
    return y.reshape(*shape[:-1], -1).to(x.dtype)


# ------------------------------------------------------------------------------ w8a8
def _w8a8_supports(fmt: FormatSpec, device: torch.device) -> bool:
    return fmt.family == "w8a8" and device.type in ("cpu", "cuda") and hasattr(torch, "_int_mm")


def _w8a8_prepare(qw: QuantizedWeight, device: torch.device, dtype: torch.dtype) -> Buffers:
    w8 = (qw.codes().to(torch.int16) - int(qw.fmt.zero_const)).to(torch.int8)
    # _int_mm takes [k, n] as its second operand; a transposed view of the row-major weight
    return {"wt": w8.to(device).t(), "s": qw.scales[:, 0].to(device=device, dtype=torch.float32)}


def _w8a8_forward(x: torch.Tensor, b: Buffers, layer: QLinear) -> torch.Tensor:
    """int8 per-token dynamic activations x int8 weights -> int32 (torch._int_mm), then rescale."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).float()
    sx = x2.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0
    xq = torch.round(x2 / sx).clamp(-127, 127).to(torch.int8)
    m = xq.shape[0]
    if x2.device.type == "cuda" and m <= 16:  # cuBLAS int8 GEMM wants more than 16 rows
        xq = F.pad(xq, (0, 0, 0, 17 - m))
    acc = torch._int_mm(xq.contiguous(), b["wt"])[:m]
    y = acc.float() * sx * b["s"]
    return y.reshape(*shape[:-1], -1).to(x.dtype)


# ------------------------------------------------------------------------------ dense / naive
def _dense_prepare(qw: QuantizedWeight, device: torch.device, dtype: torch.dtype) -> Buffers:
    return {"w": qw.dequantize(dtype).to(device)}


def _dense_forward(x: torch.Tensor, b: Buffers, layer: QLinear) -> torch.Tensor:
    return F.linear(x.to(b["w"].dtype), b["w"]).to(x.dtype)


def _naive_prepare(qw: QuantizedWeight, device: torch.device, dtype: torch.dtype) -> Buffers:
    out = {
        "qweight": qw.qweight.to(device),
        "scales": qw.scales.to(device),
        "zeros": qw.zero_points().to(device),
    }
    out["dtype_probe"] = torch.empty(0, dtype=dtype, device=device)
    return out


def _naive_forward(x: torch.Tensor, b: Buffers, layer: QLinear) -> torch.Tensor:
    fmt = layer.fmt
    codes = P.unpack(b["qweight"], fmt.bits).to(b["scales"].dtype)
    codes = codes.reshape(layer.out_features, -1, fmt.group_for(layer.in_features))
    w = (fmt.mult * codes - b["zeros"].to(codes.dtype).unsqueeze(-1)) * b["scales"].unsqueeze(-1)
    w = w.reshape(layer.out_features, -1)[:, : layer.in_features].to(b["dtype_probe"].dtype)
    return F.linear(x.to(w.dtype), w).to(x.dtype)


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> None:
    BACKENDS[backend.name] = backend


register(
    Backend(
        "int8pack",
        lambda f: "int8pack (torch _weight_int8pack_mm)",
        _int8_supports,
        _int8_prepare,
        _int8_forward,
    )
)
register(
    Backend(
        "w8a8",
        lambda f: "w8a8 (int8 x int8 -> int32, torch._int_mm; activations per token)",
        _w8a8_supports,
        _w8a8_prepare,
        _w8a8_forward,
    )
)
register(Backend("int4pack", _int4_label, _int4_supports, _int4_prepare, _int4_forward))
register(
    Backend(
        "dense",
        lambda f: "dense (dequantized once at load; no low-bit kernel)",
        lambda f, d: not f.is_float,
        _dense_prepare,
        _dense_forward,
    )
)
register(
    Backend(
        "naive",
        lambda f: "naive (dequantize every call; reference only)",
        lambda f, d: not f.is_float,
        _naive_prepare,
        _naive_forward,
        automatic=False,
    )
)

_PROBED: dict[tuple[str, str, str], bool] = {}


def _works(backend: Backend, fmt: FormatSpec, device: torch.device, dtype: torch.dtype) -> bool:
    """Run the backend once on a tiny layer: a build may list an op yet not implement it."""
    key = (backend.name, fmt.name, str(device))
    if key not in _PROBED:
        try:
            w = torch.randn(16, 256)
            layer = QLinear(fmt.quantize(w), None)
            layer.prepare(device, dtype, backend.name, probe=False)
            layer(torch.randn(2, 256, device=device, dtype=dtype))
            _PROBED[key] = True
        except Exception:
            _PROBED[key] = False
    return _PROBED[key]


def pick_backend(fmt: FormatSpec, device: torch.device, dtype: torch.dtype) -> Backend:
    for backend in BACKENDS.values():
        if backend.automatic and backend.supports(fmt, device) and _works(backend, fmt, device, dtype):
            return backend
    return BACKENDS["dense"]


class QLinear(nn.Module):
    """A Linear whose weight is stored quantized and multiplied by a low-bit kernel.

    ``input_transform`` (optional, ``[in, in]``) is applied to the input first, ``y = (x T) W_q^T``:
    a model-level method (a rotation) that cannot fold ``T`` into the layer before keeps it here,
    and the store saves it (float32) with the layer.

    ``adapter`` (optional, ``(A [r, in], B [out, r])``, trained by distillation) adds a low-rank
    correction beside the kernel, ``y += ((x T) A^T) B^T``: two small matmuls, saved (16-bit).
    """

    input_transform: torch.Tensor | None  # a registered buffer (saved with the layer)
    adapter_a: torch.Tensor | None  # registered buffers, both or neither
    adapter_b: torch.Tensor | None

    def __init__(
        self,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        input_transform: torch.Tensor | None = None,
        adapter: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        super().__init__()
        if input_transform is not None and tuple(input_transform.shape) != (qw.shape[1], qw.shape[1]):
            raise ValueError(f"input transform {tuple(input_transform.shape)} does not fit {qw.shape}")
        self.register_buffer(
            "input_transform", None if input_transform is None else input_transform.detach().float()
        )
        self.register_buffer("adapter_a", None)
        self.register_buffer("adapter_b", None)
        self.fmt = qw.fmt
        self.out_features, self.in_features = qw.shape
        self.group_size = qw.fmt.group_for(self.in_features)
        self.padded_in = P.padded_length(self.in_features, self.group_size)
        self.qw: QuantizedWeight | None = qw
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        self.backend: Backend | None = None
        self._buffers_k: Buffers = {}
        if adapter is not None:
            self.set_adapter(*adapter)

    def prepare(
        self,
        device: torch.device | str,
        dtype: torch.dtype = torch.bfloat16,
        backend: str | None = None,
        probe: bool = True,
        release: bool = False,
    ) -> Backend:
        """Lay the weight out for a backend on ``device``; ``release`` drops the stored form."""
        device = torch.device(device)
        qw = self.qw
        if qw is None:
            raise RuntimeError("cannot prepare again: the quantized weight was released (release=True)")
        chosen = pick_backend(self.fmt, device, dtype) if backend is None else BACKENDS[backend]
        try:
            self._buffers_k = chosen.prepare(qw, device, dtype)
        except RuntimeError:
            # a kernel can reject one layer's shape (CPU int4pack needs out_features % 16 == 0);
            # an automatic choice then falls back to dense, which the backend label reports
            if backend is not None:
                raise
            chosen = BACKENDS["dense"]
            self._buffers_k = chosen.prepare(qw, device, dtype)
        self.backend = chosen
        if self.bias is not None:
            self.bias.data = self.bias.data.to(device=device, dtype=dtype)
        if self.adapter_a is not None and self.adapter_b is not None:
            self.adapter_a = self.adapter_a.to(device=device, dtype=dtype)
            self.adapter_b = self.adapter_b.to(device=device, dtype=dtype)
        if release:
            self.qw = None
        return chosen

    def set_adapter(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Put a low-rank adapter beside the kernel (``a [r, in]``, ``b [out, r]``; kept 16-bit)."""
        rank = a.shape[0]
        if (
            a.dim() != 2
            or tuple(a.shape) != (rank, self.in_features)
            or tuple(b.shape) != (self.out_features, rank)
        ):
            raise ValueError(
                f"adapter {tuple(a.shape)} x {tuple(b.shape)} does not fit {self.out_features}x{self.in_features}"
            )
        dtype = a.dtype if a.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        self.adapter_a = a.detach().to(dtype)
        self.adapter_b = b.detach().to(dtype)

    @property
    def adapter_rank(self) -> int:
        return 0 if self.adapter_a is None else int(self.adapter_a.shape[0])

    @property
    def backend_label(self) -> str:
        return self.backend.label(self.fmt) if self.backend else "not prepared"

    def runtime_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._buffers_k.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = self.backend
        if backend is None:
            backend = self.prepare(x.device, x.dtype if x.dtype != torch.float32 else torch.bfloat16)
        if self.input_transform is not None:
            x = x @ self.input_transform.to(device=x.device, dtype=x.dtype)
        y = backend.forward(x, self._buffers_k, self)
        if self.adapter_a is not None and self.adapter_b is not None:
            a = self.adapter_a.to(device=x.device, dtype=x.dtype)
            b = self.adapter_b.to(device=x.device, dtype=x.dtype)
            y = y + (x @ a.t()) @ b.t()
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def extra_repr(self) -> str:
        adapter = f", adapter r{self.adapter_rank}" if self.adapter_rank else ""
        return f"{self.in_features}->{self.out_features}, {self.fmt.name}, {self.backend_label}{adapter}"


class TransformedLinear(nn.Linear):
    """A float Linear that applies an input transform first, ``y = (x T) W^T + b``: what a
    model-level method (``MethodSpec.prepare_model``, e.g. a rotation) puts in place of a Linear
    whose input it changes. Quantizing it gives a :class:`QLinear` with the same transform."""

    input_transform: torch.Tensor

    def __init__(self, linear: nn.Linear, transform: torch.Tensor, weight: torch.Tensor) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None)
        if tuple(transform.shape) != (linear.in_features, linear.in_features):
            raise ValueError(f"input transform {tuple(transform.shape)} does not fit {linear}")
        self.weight = nn.Parameter(weight.detach().to(linear.weight.dtype), requires_grad=False)
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.register_buffer("input_transform", transform.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ self.input_transform.to(device=x.device, dtype=x.dtype)
        return F.linear(x, self.weight, self.bias)


class QEmbedding(nn.Module):
    """An embedding table stored quantized; looked-up rows are dequantized (only those rows)."""

    def __init__(self, qw: QuantizedWeight, padding_idx: int | None = None):
        super().__init__()
        self.qw = qw
        self.num_embeddings, self.embedding_dim = qw.shape
        self.padding_idx = padding_idx
        self.dtype = torch.bfloat16

    def prepare(self, device: torch.device | str, dtype: torch.dtype = torch.bfloat16, **_: object) -> None:
        qw = self.qw
        self.qw = QuantizedWeight(
            qw.fmt,
            qw.shape,
            qw.qweight.to(device),
            qw.scales.to(device),
            None if qw.qzeros is None else qw.qzeros.to(device),
        )
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        qw = self.qw
        flat = ids.reshape(-1)
        rows = QuantizedWeight(
            qw.fmt,
            (flat.numel(), self.embedding_dim),
            qw.qweight[flat],
            qw.scales[flat],
            None if qw.qzeros is None else qw.qzeros[flat],
        )
        return rows.dequantize(self.dtype).reshape(*ids.shape, self.embedding_dim)

    @property
    def backend_label(self) -> str:
        return "row gather + dequantize"
