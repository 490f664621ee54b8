"""Fidelity (KLD / top-1 / PPL) on tiny random models."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.evals import fidelity as F
from engine.quant.formats import get_format
from engine.quant.methods import get_method
from engine.quant.pipeline import prepare_model, quantize_model


def _windows(n_windows=2, ctx=32, vocab=272, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (ctx + 1,), generator=g) for _ in range(n_windows)]


def test_model_against_itself_is_zero_kld_and_full_agreement(tiny_model):
    model, _ = tiny_model("llama")
    windows = _windows()
    ref = F.reference(model, windows, k=16)
    result = F.compare(model, ref)
    assert result.n_tokens == 64
    assert result.kld_mean == pytest.approx(0.0, abs=1e-4)
    assert result.top1_agreement == 1.0
    assert result.ppl == pytest.approx(result.ppl_ref, rel=1e-5)
    assert result.ppl_ratio == pytest.approx(1.0, rel=1e-5)


def test_topk_with_rest_bucket_is_a_lower_bound_and_exact_with_full_vocab(tiny_model):
    model, _ = tiny_model("qwen3")
    other = copy.deepcopy(model)
    quantize_model(other, get_format("int2-g64"), get_method("rtn"))
    prepare_model(other, "cpu", torch.float32)
    window = _windows(1)[0]
    lp_ref, lp = F._logprobs(model, window), F._logprobs(other, window)
    full = (lp_ref.exp() * (lp_ref - lp)).sum(-1)
    everything = lp_ref.topk(lp_ref.shape[-1], dim=-1)
    assert torch.allclose(F.kld_topk(everything.indices, everything.values, lp), full, atol=1e-4)
    few = lp_ref.topk(8, dim=-1)
    partial = F.kld_topk(few.indices, few.values, lp)
    assert (partial <= full + 1e-5).all() and partial.mean() > 0


def test_quantized_model_has_positive_kld_growing_as_bits_fall(tiny_model):
    model, _ = tiny_model("llama")
    windows = _windows(ctx=48)
    ref = F.reference(model, windows, k=4096)
    results = {}
    for name in ("int8", "int4-g32", "int2-g64"):
        q = copy.deepcopy(model)
        quantize_model(q, get_format(name), get_method("rtn"))
        prepare_model(q, "cpu", torch.bfloat16)
        results[name] = F.compare(q, ref)
    assert 0 < results["int8"].kld_mean < results["int4-g32"].kld_mean < results["int2-g64"].kld_mean
    assert results["int8"].top1_agreement >= results["int2-g64"].top1_agreement


def test_short_text_is_a_clear_error(tiny_tokenizer):
    with pytest.raises(ValueError, match="too short"):
        F.token_windows(tiny_tokenizer, "hi", ctx=512)
