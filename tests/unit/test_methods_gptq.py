"""GPTQ: lower output error than RTN at the same format, every grid, padded groups, act-order."""

from __future__ import annotations

import pytest
import torch

from engine.quant.formats import get_format
from engine.quant.methods import get_method
from engine.quant.methods.gptq import gptq_quantize, group_params, search_params


def _data(out_features: int, in_features: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g)
    mix = torch.eye(in_features) + 0.15 * torch.randn(in_features, in_features, generator=g)
    x = torch.randn(1024, in_features, generator=g) @ mix
    x[:, :3] *= 8  # a few outlier channels, as in real activations
    return w, x


def _out_err(w, qw, x) -> float:
    return float(((w - qw.dequantize()) @ x.t()).norm() / (w @ x.t()).norm())


@pytest.mark.parametrize(
    "fmt_name", ["int8", "int4-g64", "int4-g32", "int4-g128-sym", "int2-g64", "int2-g64-asym", "q1_0_g128"]
)
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("mse", [False, True])
def test_gptq_beats_rtn_on_output_error(fmt_name, act_order, mse):
    # 96 inputs: not a multiple of 64 or 128, so the last group is padded
    w, x = _data(48, 96 if fmt_name != "q1_0_g128" else 160)
    fmt = get_format(fmt_name)
    H = 2 * x.t() @ x / x.shape[0]
    qg = gptq_quantize(w, H, fmt, blocksize=32, act_order=act_order, mse=mse)
    qr = fmt.quantize(w)
    assert qg.fmt == fmt and qg.qweight.shape == qr.qweight.shape and qg.scales.shape == qr.scales.shape
    assert _out_err(w, qg, x) < 0.9 * _out_err(w, qr, x)


def test_gptq_codes_are_the_formats_own_encoding():
    w, x = _data(32, 128)
    fmt = get_format("int4-g64")
    qg = gptq_quantize(w, 2 * x.t() @ x / len(x), fmt)
    # re-encoding the dequantized weight with the same scales/zeros gives the same codes
    again = fmt.quantize(qg.dequantize(), scales=qg.scales.float(), zeros=qg.qzeros.float())
    assert torch.equal(again.qweight, qg.qweight)
    assert int(qg.qzeros.max()) <= 15


def test_dead_inputs_and_damping():
    w, x = _data(16, 64)
    x[:, 5] = 0.0  # an input that never fires: zero Hessian diagonal
    qg = gptq_quantize(w, 2 * x.t() @ x / len(x), get_format("int4-g32"))
    assert torch.isfinite(qg.dequantize()).all()
    assert float(qg.dequantize()[:, 5].abs().max()) == 0.0


def test_gptq_is_registered_with_parameters():
    m = get_method("gptq")
    assert m.needs_calibration and m.quantize_linear is not None
    assert [(n, d) for n, _, d, _ in m.parameters()] == [
        ("blocksize", 32),
        ("percdamp", 0.01),
        ("act_order", False),
        ("mse", None),
    ]  # fmt: skip  (mse None = auto)


@pytest.mark.parametrize("fmt_name", ["int4-g64", "int4-g64-sym", "int2-g64", "int2-g64-asym", "q1_0_g128"])
def test_mse_search_never_loses_to_the_plain_range(fmt_name):
    # the search includes the unshrunk range (p = 1), so per row its |w - q|^2.4 error is never larger
    fmt = get_format(fmt_name)
    cols = torch.randn(200, 64, generator=torch.Generator().manual_seed(3))
    cols[:, 7] *= 6  # an outlier per row: min/max ranges waste levels on it
    plain = _group_error(fmt, cols, *group_params(fmt, cols))
    searched = _group_error(fmt, cols, *search_params(fmt, cols))
    assert bool((searched <= plain + 1e-6).all())
    if fmt.grid != "sign":
        assert float(searched.sum()) < (0.9 if fmt.bits == 2 else 1.0) * float(plain.sum())


def _group_error(fmt, cols, scale, zero):
    # independent of the search's own error: the format's quantize/dequantize with these parameters
    qw = fmt.quantize(cols, scales=scale.unsqueeze(1), zeros=None if zero is None else zero.unsqueeze(1))
    return (qw.dequantize() - cols).abs().pow(2.4).sum(1)


def test_mse_auto_follows_the_bits():
    gptq = get_method("gptq")

    def mse(value, fmt_name):
        return gptq.configure({"mse": value}).resolved(get_format(fmt_name)).mse

    assert mse("auto", "int4-g64") and mse("auto", "int2-g64")
    assert not mse("auto", "int8")
    assert mse("true", "int8") and not mse(False, "int2-g64")


@pytest.mark.parametrize("fmt_name,expected", [("int4-g32", True), ("int8", False)])
def test_report_records_the_resolved_mse(tiny_model, fmt_name, expected):
    from engine.quant import calibration as C
    from engine.quant.pipeline import quantize_model

    model, tok = tiny_model("llama")
    cal = C.build(C.CalibrationSpec(samples=2, seq_len=16), tok)
    report = quantize_model(model, get_format(fmt_name), get_method("gptq"), calibration=cal)
    assert report.config.mse is expected  # "auto" never reaches the manifest
