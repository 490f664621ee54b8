"""The evaluation API on tiny models: loglik, batched generation, fidelity, the result cache."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.errors import Cancelled, QtuiError
from engine.evals import api, results
from engine.evals.batchgen import generate_batch
from engine.quant.formats import get_format
from engine.runtime import GenSettings, generate, variant_from_model


@pytest.fixture
def variant(tiny_model):
    model, tok = tiny_model("llama")
    return variant_from_model("tiny", model, tok, get_format("f16"), device="cpu")


def test_batched_greedy_equals_one_at_a_time(tiny_model):
    model, tok = tiny_model("qwen2")
    v = variant_from_model("tiny", model.float(), tok, get_format("bf16"), device="cpu")
    v.model.float()  # float32 so padding cannot flip a greedy choice through rounding
    prompts = ["Hi", "a much longer prompt with many more tokens in it", "the third one"]
    batched = generate_batch(v, prompts, max_new_tokens=12, stop_on_loop=False)
    for prompt, g in zip(prompts, batched, strict=True):
        single = generate(v, prompt, GenSettings(max_new_tokens=12))
        assert g.token_ids == single.token_ids
        assert g.finish == "length" and g.batch_size == 3


def test_loglik_run_is_cached_by_content(variant):
    first = api.run(variant, "knowledge", "loglik", limit=6)
    assert first.n == 6 and not first.cached and len(first.items) == 6
    assert 0 <= first.correct <= 6 and first.metrics["pairs"] == 24
    again = api.run(variant, "knowledge", "loglik", limit=6)
    assert again.cached and again.correct == first.correct and again.items == first.items
    other = api.run(variant, "knowledge", "loglik", limit=5)  # other settings: another entry
    assert not other.cached
    stored = results.cached_results(api.variant_hash(variant))
    assert {r.settings["limit"] for r in stored} == {5, 6}


def test_generate_run_counts_compliance_and_degenerate(variant):
    r = api.run(
        variant, "arithmetic", "generate", limit=4, settings=api.EvalSettings(max_new_tokens=8, batch_size=3)
    )
    assert r.n == 4 and len(r.items) == 4
    m = r.metrics
    assert m["boxed"] + m["fallback"] + m["no_answer"] == 4
    # a random model never writes EOS (conftest): every answer hits the limit or loops
    assert m["degenerate"] == 4 and m["hit_limit"] + m["looped"] >= 4 - m["empty"]
    assert all(item["tokens"] <= 8 for item in r.items) and m["tokens_per_s"] > 0
    assert r.compliance.n == 4 and r.strict.k <= r.correct


def test_fidelity_of_a_model_against_itself(variant, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    settings = api.EvalSettings(ctx=64, k=32)
    r = api.run(variant, "file", "fidelity", limit=256, data=text, settings=settings)
    assert r.metrics["kld_mean"] == pytest.approx(0.0, abs=1e-6)
    assert r.metrics["top1_agreement"] == 1.0 and r.correct == r.n
    assert r.metrics["ppl_ratio"] == pytest.approx(1.0)
    refs = list((results.cache_dir() / "references").glob("*.safetensors"))
    assert len(refs) == 1  # the reference is stored once ...
    again = api.run(variant, "file", "fidelity", limit=256, data=text, settings=settings, use_cache=False)
    assert again.metrics["kld_mean"] == pytest.approx(0.0, abs=1e-6)  # ... and reused


def test_fidelity_against_a_different_baseline_is_positive(tiny_model, tmp_path):
    m1, tok = tiny_model("llama", seed=0)
    m2, _ = tiny_model("llama", seed=1)
    a = variant_from_model("a", m1, tok, get_format("f16"), device="cpu")
    b = variant_from_model("b", m2, tok, get_format("f16"), device="cpu")
    text = tmp_path / "t.txt"
    text.write_text("hello world, this is a test of the fidelity path. " * 30)
    r = api.run(api.subject_from_variant(a, baseline=b), "f", "fidelity", limit=128, data=text,
                settings=api.EvalSettings(ctx=64, k=64))  # fmt: skip
    assert r.metrics["kld_mean"] > 0.01 and r.metrics["top1_agreement"] < 1.0


def test_reference_round_trip(variant, tmp_path):
    from engine.evals import fidelity as fid

    windows = [torch.arange(17) % 200, (torch.arange(17) * 3) % 200]
    ref = fid.reference(variant.model, windows, k=16)
    fid.save_reference(ref, tmp_path / "r.safetensors")
    back = fid.load_reference(tmp_path / "r.safetensors")
    assert (
        back.k == 16 and torch.equal(back.top_ids, ref.top_ids) and torch.equal(back.top_logp, ref.top_logp)
    )
    assert fid.load_reference(tmp_path / "missing.safetensors") is None


def test_errors_and_cancel(variant):
    with pytest.raises(QtuiError, match="no loglik mode"):
        api.run(variant, "gsm8k", "loglik")
    with pytest.raises(QtuiError, match="unknown mode"):
        api.run(variant, "knowledge", "guess")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        api.run(variant, "knowledge", "loglik", limit=3, cancel=cancel)


def test_progress_is_reported(variant):
    seen = []
    api.run(variant, "yesno", "loglik", limit=4, progress=lambda d, t, s: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] == 8
