"""The real default model (SmolLM2-135M-Instruct): quantize, save, reload, ask."""

from __future__ import annotations

import pytest

from engine import runtime, store, variants
from engine.quant.formats import get_format
from tests.helpers import quantize_saved

pytestmark = pytest.mark.e2e
QUESTION = "What is the capital of France?"
GREEDY = runtime.GenSettings(max_new_tokens=48)


@pytest.fixture(scope="module")
def baseline(default_loaded):
    return variants.open_spec("default", "cpu", loaded_cache={"default": default_loaded})


def _quantize(default_loaded, tmp_path, name):
    folder, report = quantize_saved(default_loaded, get_format(name), "rtn", tmp_path / name)
    return folder, report


def test_bf16_answers_paris(baseline):
    result = runtime.generate(baseline, QUESTION, GREEDY)
    assert "Paris" in result.text
    assert result.finish == "eos" and result.decode_tps > 0 and result.ttft_s > 0


@pytest.mark.parametrize("fmt", ["int8", "int4-g64"])
def test_quantized_variant_saves_reloads_and_answers_paris(default_loaded, tmp_path, real_cache, fmt):
    folder, report = _quantize(default_loaded, tmp_path, fmt)
    manifest = store.read_manifest(folder)
    assert manifest.raw["format"]["name"] == fmt
    assert manifest.raw["source"]["hash"].startswith("sha256:")
    assert manifest.raw["tensors"]["model.embed_tokens.weight"]["format"] == "bf16"
    assert manifest.raw["tensors"]["model.layers.0.mlp.down_proj.weight"]["format"] == fmt
    variant = runtime.load_variant(folder, "cpu")
    expected_backend = "int8pack" if fmt == "int8" else "int4pack"
    assert variant.backend.startswith(expected_backend)
    result = runtime.generate(variant, QUESTION, GREEDY)
    assert "Paris" in result.text, result.text


def test_reloaded_variant_gives_same_greedy_tokens(default_loaded, tmp_path, real_cache):
    import copy

    from engine.quant.methods import get_method
    from engine.quant.pipeline import quantize_model

    fmt = get_format("int4-g128")  # 576 is not a multiple of 128: padded groups
    model = copy.deepcopy(default_loaded.model)
    quantize_model(model, fmt, get_method("rtn"))
    folder = store.save_variant(
        model, default_loaded.tokenizer, tmp_path / "v", fmt, "rtn", {"id": "default"}
    ).path
    in_memory = runtime.variant_from_model("mem", model, default_loaded.tokenizer, fmt, "cpu")
    reloaded = runtime.load_variant(folder, "cpu")
    a = runtime.generate(in_memory, QUESTION, GREEDY)
    b = runtime.generate(reloaded, QUESTION, GREEDY)
    assert a.token_ids == b.token_ids and a.new_tokens > 0


@pytest.mark.parametrize("fmt", ["int2-g64", "q1_0_g128"])
def test_very_low_bit_variants_load_and_are_flagged(default_loaded, tmp_path, real_cache, fmt):
    folder, _ = _quantize(default_loaded, tmp_path, fmt)
    variant = runtime.load_variant(folder, "cpu")
    assert "widened to int4" in variant.backend
    result = runtime.generate(variant, QUESTION, runtime.GenSettings(max_new_tokens=32))
    assert result.new_tokens > 0 and result.text
    # quality is not expected; what matters is that degenerate output is flagged
    if result.finish == "length":
        assert "max-tokens" in result.flags
    if runtime.detect_loop(result.token_ids):
        assert "loop" in result.flags
