"""Calibrated methods on the real default model: GPTQ and AWQ beat RTN on KLD vs bf16 at int4 g64,
and a GPTQ variant saved through the CLI path loads back and runs on the int4 kernel.

Kept short for CI (default calibration, 1024 evaluation tokens); bench/methods.py measures
every method x format with the default calibration over more tokens.
"""

from __future__ import annotations

import copy

import pytest
import torch

from engine.evals import fidelity
from engine.evals.data import SHARED_SAMPLES
from engine.quant import calibration as C
from engine.quant.formats import get_format
from engine.quant.methods import get_method
from engine.quant.pipeline import prepare_model, quantize_model

pytestmark = pytest.mark.e2e

WIKI = SHARED_SAMPLES / "wikitext2_test_head.txt"


@pytest.fixture(scope="module")
def reference(default_loaded):
    if not WIKI.exists():
        pytest.skip(f"{WIKI} not available")
    windows = fidelity.token_windows(default_loaded.tokenizer, WIKI.read_text(), ctx=512, max_tokens=1024)
    base = copy.deepcopy(default_loaded.model).to(torch.bfloat16).eval()
    return fidelity.reference(base, windows)


def _kld(loaded, ref, method: str, fmt_name: str) -> tuple[float, dict]:
    model = copy.deepcopy(loaded.model)
    cal = C.build(C.CalibrationSpec(), loaded.tokenizer)  # the default 16 x 256
    quantize_model(model, get_format(fmt_name), get_method(method), calibration=cal)
    labels = prepare_model(model, "cpu", torch.bfloat16)
    return fidelity.compare(model.eval(), ref).kld_mean, labels


def test_gptq_and_awq_beat_rtn_at_int4_g64(default_loaded, reference):
    rtn, _ = _kld(default_loaded, reference, "rtn", "int4-g64")
    gptq, labels = _kld(default_loaded, reference, "gptq", "int4-g64")
    awq, _ = _kld(default_loaded, reference, "awq", "int4-g64")
    assert all(label.startswith("int4pack") for label in labels), labels  # same kernel as RTN
    assert gptq < rtn
    assert awq < rtn
