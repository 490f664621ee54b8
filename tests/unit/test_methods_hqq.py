"""HQQ: the hqq package's solver, stored in qtui's formats; beats plain min/max rounding."""

from __future__ import annotations

import pytest
import torch

from engine.quant.formats import get_format
from engine.quant.methods import get_method
from engine.quant.methods.hqq import hqq_affine, quantize_weight


def _weight(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 192, generator=g) * (0.5 + torch.rand(64, 1, generator=g))
    w[torch.rand(64, 192, generator=g) < 0.01] *= 6  # heavy tails, as in real weights
    return w


def _l1(w, qw) -> float:
    return float((w - qw.dequantize()).abs().mean())


def test_uses_the_hqq_package():
    import hqq.core.optimize  # noqa: F401  (a dependency, not a hand copy)

    assert get_method("hqq").needs_calibration is False


@pytest.mark.parametrize("fmt_name", ["int4-g64", "int4-g128", "int2-g64-asym", "int4-g64-sym", "int2-g64"])
def test_hqq_beats_min_max_rounding(fmt_name):
    w = _weight()
    fmt = get_format(fmt_name)
    qh = quantize_weight(w, fmt, get_method("hqq").configure())
    qr = fmt.quantize(w)  # plain min/max (asym) or absmax (sym) rounding
    assert qh.fmt == fmt and qh.qweight.shape == qr.qweight.shape
    assert _l1(w, qh) < 0.99 * _l1(w, qr)
    x = torch.randn(256, w.shape[1], generator=torch.Generator().manual_seed(3))
    out = [float(((w - q.dequantize()) @ x.t()).norm()) for q in (qh, qr)]
    assert out[0] < out[1]  # the Linear's output error on random inputs too
    if not fmt.symmetric:  # integer zeros in range, as the format stores them
        assert int(qh.qzeros.max()) <= fmt.levels - 1


def test_one_bit_runs_and_keeps_signs():
    w = _weight(1)
    fmt = get_format("q1_0_g128")
    qh = quantize_weight(w, fmt, get_method("hqq").configure())
    assert torch.equal(qh.dequantize() >= 0, w >= 0)
    assert _l1(w, qh) <= _l1(w, fmt.quantize(w)) * 1.001


def test_rounding_hqqs_float_zero_costs_little():
    """qtui stores integer zeros: rounding hqq's float zero and re-fitting the scale stays close."""
    w = _weight(2)
    fmt = get_format("int4-g64")
    params = get_method("hqq").configure()
    s_f, z_f = hqq_affine(w, fmt, params, round_zero=False)
    groups = w.reshape(64, -1, 64)
    q = torch.clamp(torch.round(groups / s_f.unsqueeze(-1) + z_f.unsqueeze(-1)), 0, 15)
    float_zero = float((groups - (q - z_f.unsqueeze(-1)) * s_f.unsqueeze(-1)).abs().mean())
    rounded = _l1(w, quantize_weight(w, fmt, params))
    assert rounded < float_zero * 1.10


def test_float_zero_format_keeps_hqqs_solution():
    """int4fz stores hqq's float zero (f16): lower error than integer zeros and than RTN."""
    w = _weight(4)
    params = get_method("hqq").configure()
    fz = quantize_weight(w, get_format("int4fz-g64"), params)
    iz = quantize_weight(w, get_format("int4-g64"), params)
    assert fz.qzeros.dtype == torch.float16 and iz.qzeros.dtype == torch.uint8
    err = [float((w - q.dequantize()).norm()) for q in (fz, iz, get_format("int4-g64").quantize(w))]
    assert err[0] < err[1] < err[2]
