"""QLinear on every CPU backend against a float64 dequantize-then-matmul reference."""

from __future__ import annotations

import pytest
import torch

from engine.quant.formats import get_format, list_format_names
from engine.quant.layers import BACKENDS, QLinear, pick_backend

FORMATS = [n for n in list_format_names() if not get_format(n).is_float]  # every registered format
CPU = torch.device("cpu")
K, N = 576, 48  # 576 is not a multiple of 128: the int4 kernel sees padded inputs
BOUND = 0.01  # bf16 activations and outputs; measured ~0.003


def cases():
    for name in FORMATS:
        fmt = get_format(name)
        for backend in BACKENDS.values():
            if backend.supports(fmt, CPU):
                yield pytest.param(name, backend.name, id=f"{name}-{backend.name}")


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


@pytest.fixture(scope="module")
def weights():
    gen = torch.Generator().manual_seed(11)
    return torch.randn(N, K, generator=gen) * 0.05, torch.randn(N, generator=gen) * 0.1


def test_every_format_has_a_kernel_and_the_references():
    names = {p.values[1] for p in cases()}
    assert names == {"int8pack", "int4pack", "w8a8", "dense", "naive"}
    covered = {p.values[0] for p in cases() if p.values[1] in ("int8pack", "int4pack", "w8a8")}
    assert covered == set(FORMATS)


@pytest.mark.parametrize("name, backend", list(cases()))
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_qlinear_matches_float64_reference(name, backend, with_bias, weights):
    w, b = weights
    qw = get_format(name).quantize(w)
    w64 = qw.dequantize(torch.float64)
    bias = b if with_bias else None
    layer = QLinear(qw, bias)
    chosen = layer.prepare(CPU, torch.bfloat16, backend)
    assert chosen.name == backend and layer.backend_label == BACKENDS[backend].label(qw.fmt)
    gen = torch.Generator().manual_seed(12)
    for shape in [(1, K), (5, K), (2, 3, K)]:
        x = torch.randn(*shape, generator=gen).to(torch.bfloat16)
        ref = x.double() @ w64.T
        if with_bias:
            ref = ref + b.to(torch.bfloat16).double()
        y = layer(x)
        assert y.shape == (*shape[:-1], N) and y.dtype == torch.bfloat16
        # w8a8 also rounds the activations to int8 per token (measured ~0.006)
        assert _rel(y, ref) < (2 * BOUND if backend == "w8a8" else BOUND), (name, backend, shape)


@pytest.mark.parametrize("name", ["int4-g128", "int2-g64", "q1_0_g128", "int8"])
def test_kernel_output_equals_dense_closely(name, weights):
    # the low-bit kernels and the dequantized weight compute the same product
    w, _ = weights
    qw = get_format(name).quantize(w)
    x = torch.randn(7, K, generator=torch.Generator().manual_seed(13)).to(torch.bfloat16)
    fast = QLinear(qw, None)
    fast.prepare(CPU)
    dense = QLinear(qw, None)
    dense.prepare(CPU, backend="dense")
    assert fast.backend.name != "dense"
    assert _rel(fast(x), dense(x).double()) < BOUND


def test_release_drops_stored_weight_and_still_runs(weights):
    w, _ = weights
    qw = get_format("int4-g64").quantize(w)
    layer = QLinear(qw, None)
    layer.prepare(CPU, release=True)
    assert layer.qw is None
    assert 0 < layer.runtime_bytes() < w.numel() * 2  # int4 buffers, well under a bf16 copy
    x = torch.randn(2, K).to(torch.bfloat16)
    ref = x.double() @ qw.dequantize(torch.float64).T
    assert _rel(layer(x), ref) < BOUND


def test_forward_prepares_lazily_in_bf16_for_fp32_inputs(weights):
    w, _ = weights
    qw = get_format("int8").quantize(w)
    layer = QLinear(qw, None)
    assert layer.backend_label == "not prepared"
    x = torch.randn(3, K)
    y = layer(x)
    assert layer.backend is not None and layer.backend.name == "int8pack"
    assert y.dtype == torch.float32
    assert _rel(y, x.double() @ qw.dequantize(torch.float64).T) < BOUND


@pytest.mark.parametrize(
    "name, expected",
    [
        ("int8", "int8pack"),
        ("int4-g32", "int4pack"),
        ("int4-g64", "int4pack"),
        ("int4-g128", "int4pack"),
        ("int4-g64-sym", "int4pack"),
        ("int2-g64", "int4pack"),
        ("int2-g64-asym", "int4pack"),
        ("q1_0_g128", "int4pack"),
    ],
)
def test_pick_backend_on_cpu(name, expected):
    fmt = get_format(name)
    backend = pick_backend(fmt, CPU, torch.bfloat16)
    assert backend.name == expected
    label = backend.label(fmt)
    if fmt.bits in (1, 2):
        assert f"{fmt.bits}-bit codes widened to int4" in label
        assert f"no native {fmt.bits}-bit kernel" in label
    elif fmt.bits == 4:
        assert label.startswith("int4pack") and "widened" not in label
    else:
        assert label.startswith("int8pack")


def test_naive_is_never_picked_and_float_formats_have_no_kernel():
    assert BACKENDS["naive"].automatic is False
    for name in FORMATS:
        assert pick_backend(get_format(name), CPU, torch.bfloat16).name != "naive"
    for backend in BACKENDS.values():
        assert not backend.supports(get_format("bf16"), CPU)


@pytest.mark.parametrize("name", ["int4-g64", "int2-g64", "q1_0_g128"])
def test_shape_the_int4_kernel_rejects_falls_back_to_dense(name):
    # CPU tinygemm needs out_features % 16 == 0; 40 is a multiple of 8 but not of 16
    w = torch.randn(40, K, generator=torch.Generator().manual_seed(14)) * 0.05
    qw = get_format(name).quantize(w)
    with pytest.raises(RuntimeError):
        QLinear(qw, None).prepare(CPU, backend="int4pack")  # asked for explicitly: no fallback
    layer = QLinear(qw, None)
    assert layer.prepare(CPU).name == "dense"
    assert layer.backend_label.startswith("dense")
    x = torch.randn(5, K).to(torch.bfloat16)
    y = layer(x)
    assert y.shape == (5, 40)
    assert _rel(y, x.double() @ qw.dequantize(torch.float64).T) < BOUND


def test_int4_cpu_layout_is_understood():
    from engine.quant.layers import int4_cpu_block

    assert int4_cpu_block() in (16, 32, 64, 128)  # the many-rows path is live on this machine


@pytest.mark.parametrize("name", ["int8", "int4-g64", "int4-g128", "int2-g64", "q1_0_g128"])
@pytest.mark.parametrize("rows", [1, 255, 300])
def test_many_rows_path_matches_float64_reference_and_the_kernel(name, rows):
    # prefill-sized inputs take the dequantize-once bf16 matmul; it must compute the same product
    from engine.quant import layers

    gen = torch.Generator().manual_seed(21)
    w = torch.randn(128, K, generator=gen) * 0.05  # 128 rows: whole int4pack row blocks
    qw = get_format(name).quantize(w)
    w64 = qw.dequantize(torch.float64)
    layer = QLinear(qw, None)
    layer.prepare(CPU, torch.bfloat16)
    x = torch.randn(rows, K, generator=gen).to(torch.bfloat16)
    y = layer(x)
    assert _rel(y, x.double() @ w64.T) < BOUND
    threshold = layers.MANY_ROWS[layer.backend.name]
    if rows >= threshold:
        saved = dict(layers.MANY_ROWS)
        layers.MANY_ROWS.update({k: 10**9 for k in saved})  # force the kernel for the same rows
        try:
            y_kernel = layer(x)
        finally:
            layers.MANY_ROWS.update(saved)
        assert _rel(y, y_kernel.double()) < BOUND
