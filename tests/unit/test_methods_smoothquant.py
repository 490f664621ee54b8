"""SmoothQuant W8A8: the int8 x int8 backend, outlier migration, and the format's rules."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.errors import FormatError
from engine.quant import calibration as C
from engine.quant.formats import get_format
from engine.quant.layers import QLinear
from engine.quant.methods import get_method
from engine.quant.pipeline import decoder_layers, prepare_model, quantize_model


def test_w8a8_backend_matches_the_reference():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g)
    qw = get_format("w8a8").quantize(w)
    layer = QLinear(qw, None)
    layer.prepare("cpu", torch.bfloat16)
    assert layer.backend.name == "w8a8" and "_int_mm" in layer.backend_label
    for rows in (1, 7, 33):
        x = torch.randn(rows, 96, generator=g)
        ref = x @ qw.dequantize().t()
        y = layer(x.to(torch.bfloat16)).float()
        assert float((y - ref).norm() / ref.norm()) < 0.02


def test_smoothquant_needs_w8a8():
    with pytest.raises(FormatError, match="w8a8"):
        get_method("smoothquant").check_format(get_format("int4-g64"))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_smoothing_beats_plain_w8a8_with_activation_outliers(tiny_model, arch):
    model, tok = tiny_model(arch)
    with torch.no_grad():  # a few activation channels 30x larger than the rest, as in real LLMs
        for block in decoder_layers(model):
            block.input_layernorm.weight[:3] *= 30.0
            block.post_attention_layernorm.weight[:3] *= 30.0
    cal = C.build(C.CalibrationSpec(samples=4, seq_len=48), tok)
    ids = cal.ids[:2]
    with torch.no_grad():
        ref = model(ids).logits
    errs = {}
    for name in ("rtn", "smoothquant"):
        m = copy.deepcopy(model)
        report = quantize_model(m, get_format("w8a8"), get_method(name), calibration=cal)
        labels = prepare_model(m, "cpu", torch.bfloat16)
        assert any(label.startswith("w8a8") for label in labels)
        with torch.no_grad():
            out = m(ids).logits.float()
        errs[name] = float((out - ref).norm() / ref.norm())
        if name == "smoothquant":
            assert report.block_info[0]["smoothed"] == ["input_layernorm", "post_attention_layernorm"]
    assert errs["smoothquant"] < errs["rtn"]
