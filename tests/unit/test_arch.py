"""Architecture discovery (engine.quant.arch) on tiny random-weight models of every tested family:
blocks and Linears found, RTN/GPTQ int4 quantize, save, reload bit-identically and generate; the
scales AWQ and SmoothQuant fold are exact in float (same logits), and what cannot fold is skipped."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from engine import sources, store
from engine.errors import SourceError
from engine.quant import arch
from engine.quant import calibration as C
from engine.quant.blocks import capture_inputs, collect_stats
from engine.quant.formats import get_format
from engine.quant.methods import get_method
from engine.quant.methods.awq import head_tying, tie_heads
from engine.quant.pipeline import decoder_layers, quantize_model, quantized_modules
from engine.runtime import GenSettings, generate, load_variant, variant_from_model
from tests.helpers import ARCHS, build_model, build_tokenizer

FAMILIES = list(ARCHS)
FMT = get_format("int4-g32")
IDS = torch.tensor([[5, 70, 101, 33, 260, 7, 99, 180, 12, 44, 3, 250]])  # longer than the sliding windows
QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
GATE_UP = ("mlp.gate_proj", "mlp.up_proj")
LLAMA_LIKE = {
    "input_layernorm": (QKV, "weight"),
    "self_attn.v_proj": (("self_attn.o_proj",), "linear"),
    "post_attention_layernorm": (GATE_UP, "weight"),
    "mlp.up_proj": (("mlp.down_proj",), "linear"),
}
# arch -> {module folded into: (Linears whose input columns take the scale, how)}
EXPECTED_FOLDS = {
    **{a: LLAMA_LIKE for a in ("llama", "mistral", "qwen2", "qwen3", "smollm3", "granite")},
    **{
        a: {  # (1 + w) norms; the MLP reads pre_feedforward_layernorm (post_attention_layernorm is a post-norm)
            "input_layernorm": (QKV, "one_plus_weight"),
            "self_attn.v_proj": (("self_attn.o_proj",), "linear"),
            "pre_feedforward_layernorm": (GATE_UP, "one_plus_weight"),
            "mlp.up_proj": (("mlp.down_proj",), "linear"),
        }
        for a in ("gemma2", "gemma3_text")
    },
    "phi3": {  # fused: only the value rows of qkv_proj and the up half of gate_up_proj fold
        "input_layernorm": (("self_attn.qkv_proj",), "weight"),
        "self_attn.qkv_proj": (("self_attn.o_proj",), "linear"),
        "post_attention_layernorm": (("mlp.gate_up_proj",), "weight"),
        "mlp.gate_up_proj": (("mlp.down_proj",), "linear"),
    },
    "olmo2": {  # post-norms: q/k/v and gate/up read the residual stream, nothing to fold into
        "self_attn.v_proj": (("self_attn.o_proj",), "linear"),
        "mlp.up_proj": (("mlp.down_proj",), "linear"),
    },
}
EXPECTED_SKIPPED = {"olmo2": {", ".join(QKV), ", ".join(GATE_UP)}}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def calib(tok):
    return C.build(C.CalibrationSpec(samples=2, seq_len=16), tok)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits[0].float()


def hidden(out):
    return out[0] if isinstance(out, tuple) else out


def first_block_stats(model, calib):
    inputs, _ = capture_inputs(model, calib.ids, 2, "cpu")
    block = decoder_layers(model)[0]
    return block, collect_stats(block, inputs, 64)


# ------------------------------------------------------------------------------ discovery
@pytest.mark.parametrize("family", FAMILIES)
def test_discovery_finds_blocks_linears_and_folds(family, calib):
    model = build_model(family)
    sources.check_supported(model.config, "tiny")  # the meta skeleton passes the same checks
    arch.check_model(model)
    assert len(arch.decoder_blocks(model)) == 2
    block, stats = first_block_stats(model, calib)
    plan = arch.fold_plan(block, stats)
    got = {f.prev: (f.linears, f.rule) for f, _ in plan.folds}
    assert got == EXPECTED_FOLDS[family]
    assert set(plan.skipped) == EXPECTED_SKIPPED.get(family, set())
    for fold, _ in plan.folds:  # the folds' Linears share one input at run time (one stats object)
        assert {id(stats[n]) for n in fold.linears} == {id(stats[fold.linears[0]])}
    if family == "phi3":  # the rows that feed: v (last kv rows of qkv), up (second half of gate_up)
        rows = {f.prev: f.rows for f, _ in plan.folds}
        assert rows["self_attn.qkv_proj"] == (96, 32) and rows["mlp.gate_up_proj"] == (128, 128)


def test_unsupported_layouts_are_one_line_errors_naming_the_architecture():
    from transformers import AutoConfig

    gpt2 = AutoConfig.for_model("gpt2", n_layer=1, n_embd=32, n_head=2)
    moe = AutoConfig.for_model(
        "mixtral",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    for config, name, why in (
        (gpt2, "gpt2", "no decoder blocks at model.layers"),
        (moe, "mixtral", "weight outside a Linear layer"),
    ):
        with pytest.raises(SourceError) as info:
            sources.check_supported(config, "here")
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"here: architecture {name!r} is not supported: ")
        assert why in msg and "qtui is tested with llama, mistral" in msg

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(8)

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Block()])

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()

    with pytest.raises(SourceError, match=r"architecture 'Model' is not supported: .*no Linear layers"):
        arch.check_model(Model())


def test_norm_rules_are_found_by_trying_them():
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    assert arch.norm_rule(LlamaRMSNorm(16), 16) == "weight"
    assert arch.norm_rule(Gemma2RMSNorm(16), 16) == "one_plus_weight"
    assert arch.norm_rule(nn.LayerNorm(16), 16) == "weight"  # bias divided too
    assert arch.norm_rule(nn.LayerNorm(16, elementwise_affine=False), 16) is None  # no weight
    assert arch.norm_rule(LlamaRMSNorm(16), 8) is None  # not per input channel
    g = torch.Generator().manual_seed(1)
    for norm in (nn.LayerNorm(16), Gemma2RMSNorm(16)):
        with torch.no_grad():
            for p in norm.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        rule = arch.norm_rule(norm, 16)
        assert rule is not None
        x, s = torch.randn(5, 16, generator=g), 0.2 + 3 * torch.rand(16, generator=g)
        want = norm(x) / s
        arch.fold_scale(norm, arch.Fold("norm", (), rule), [], s, s)
        assert torch.allclose(norm(x), want, rtol=1e-5, atol=1e-6)


def test_untraceable_block_skips_norm_folds_but_keeps_linear_ones(calib, monkeypatch):
    model = build_model("llama")
    block, stats = first_block_stats(model, calib)
    monkeypatch.setattr(arch, "block_config", lambda block: None)
    plan = arch.fold_plan(block, stats)
    assert [f.prev for f, _ in plan.folds] == ["self_attn.v_proj", "mlp.up_proj"]
    assert plan.skipped == {"norms": "not traced: LlamaDecoderLayer keeps no config to trace"}


# ------------------------------------------------------------------------------ folds are exact
@pytest.mark.parametrize("family", FAMILIES)
def test_every_fold_with_random_scales_keeps_the_logits(family, calib):
    """Each fold the plan finds, with a random scale of range 0.25..4 (GQA-tied as AWQ does)."""
    model = build_model(family)
    ref = logits(model)
    folded = copy.deepcopy(model)
    g = torch.Generator().manual_seed(2)
    inputs, per_block = capture_inputs(folded, calib.ids, 2, "cpu")
    for b, block in enumerate(decoder_layers(folded)):
        inputs = [(h, kw) for (h, _), kw in zip(inputs, per_block[b], strict=True)]
        stats = collect_stats(block, inputs, 16)
        for fold, prev in arch.fold_plan(block, stats).folds:
            linears = [block.get_submodule(n) for n in fold.linears]
            tying = head_tying(fold, prev, linears[0].in_features, block)
            assert tying is not False
            s_in, s_prev = tie_heads(4.0 ** (2 * torch.rand(linears[0].in_features, generator=g) - 1), tying)
            arch.fold_scale(prev, fold, linears, s_in, s_prev)
    out = logits(folded)
    assert any(not torch.equal(a, b) for a, b in zip(folded.parameters(), model.parameters(), strict=True))
    assert float((out - ref).abs().max()) < 1e-4 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("method", ["awq", "smoothquant"])
@pytest.mark.parametrize("family", FAMILIES)
def test_awq_and_smoothquant_fold_exactly(family, method, calib):
    """prepare_block over every block of the float model (before any rounding): same logits."""
    model = build_model(family)
    with torch.no_grad():  # a few large input channels, so AWQ's search picks alpha > 0
        emb = model.get_input_embeddings().weight
        emb[:, :3] *= 8.0
    ref = logits(model)
    spec = get_method(method)
    cfg = spec.configure({"n_grid": 4} if method == "awq" else None)
    fmt = get_format("w8a8" if method == "smoothquant" else "int4-g32")
    inputs, per_block = capture_inputs(model, calib.ids, 2, "cpu")
    infos = []
    with torch.no_grad():
        for b, block in enumerate(decoder_layers(model)):
            inputs = [(h, kw) for (h, _), kw in zip(inputs, per_block[b], strict=True)]
            infos.append(spec.prepare_block(block, collect_stats(block, inputs, 32), fmt, cfg))
            inputs = [(hidden(block(h, **kw)), kw) for h, kw in inputs]
    out = logits(model)
    assert float((out - ref).abs().max()) < 1e-4 * max(1.0, float(ref.abs().max()))
    norms = [p for p, (_, rule) in EXPECTED_FOLDS[family].items() if rule != "linear"]
    if method == "smoothquant":
        assert all(info["smoothed"] == norms for info in infos)
    else:
        assert all(list(info["alpha"]) == list(EXPECTED_FOLDS[family]) for info in infos)
        assert any(a > 0 for info in infos for a in info["alpha"].values())
    skipped = EXPECTED_SKIPPED.get(family, set())
    assert all(set(info.get("skipped", {})) == skipped for info in infos)


# ------------------------------------------------------------------------------ quantize, save, reload
@pytest.mark.parametrize("method", ["rtn", "gptq"])
@pytest.mark.parametrize("family", FAMILIES)
def test_int4_quantize_save_reload_generate(family, method, tok, calib, tmp_path):
    model = build_model(family)
    ref = logits(model)
    report = quantize_model(model, FMT, get_method(method), calibration=calib)
    n_linears = sum(len(arch.block_linears(b)) for b in decoder_layers(build_model(family)))
    assert len(quantized_modules(model)) == n_linears == len(report.layers)
    source = {"id": f"tiny-{family}", "kind": "folder", "label": f"tiny-{family}", "hash": "sha256:test"}
    saved = store.save_variant(model, tok, tmp_path / "v", FMT, method, source, report)
    mem = variant_from_model("mem", model, tok, FMT, device="cpu")
    disk = load_variant(saved.path, device="cpu")
    a, b = logits(mem.model), logits(disk.model)
    assert torch.equal(a, b)
    # int4 of a tiny random model with 32 calibration tokens: 0.01-0.66 of the logits' norm (Gemma-3
    # the most sensitive); an unrelated model of the same family is at ~1.4
    assert float((a - ref).norm() / ref.norm()) < 0.8
    settings = GenSettings(max_new_tokens=4)
    x, y = generate(mem, "hello world", settings), generate(disk, "hello world", settings)
    assert x.new_tokens == 4 and x.token_ids == y.token_ids


def test_scaled_embeddings_are_not_quantized_silently():
    """Gemma's embedding multiplies by sqrt(hidden): a plain quantized table would drop that."""
    from engine.errors import QtuiError
    from engine.quant.pipeline import QuantOptions, targets

    with pytest.raises(QtuiError, match=r"Gemma2TextScaledWordEmbedding is not a plain embedding table"):
        targets(build_model("gemma2"), QuantOptions(quantize_embeddings=True))
    assert targets(build_model("llama"), QuantOptions(quantize_embeddings=True))[0][0] == "model.embed_tokens"


def test_resolving_a_folder_checks_untested_families_by_discovery(tmp_path):
    import json

    def folder(name, config):
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text(json.dumps(config))
        (path / "model.safetensors").write_bytes(b"\0" * 16)
        return str(path)

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    assert sources.resolve(folder("olmo", {"model_type": "olmo", **small})).kind == "folder"
    with pytest.raises(SourceError) as info:
        sources.resolve(folder("foo", {"model_type": "foo"}))
    msg = str(info.value)
    assert (
        "\n" not in msg and "architecture 'foo' is not supported: transformers cannot read its config" in msg
    )


def test_each_block_is_captured_with_its_own_mask_and_rotary(calib):
    """Gemma-3 mixes sliding-window and full attention: block 1 (full) must not be calibrated
    with block 0's sliding-window mask or local rotary embeddings."""
    model = build_model("gemma3_text")
    _, per_block = capture_inputs(model, calib.ids, 2, "cpu")
    assert model.config.layer_types[:2] == ["sliding_attention", "full_attention"]
    first, second = per_block[0][0], per_block[1][0]

    def same(a, b) -> bool:
        if isinstance(a, tuple) and isinstance(b, tuple):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            return a.shape == b.shape and torch.equal(a, b)
        return a is b

    assert not all(same(first[k], second[k]) for k in first), "full and sliding blocks got the same kwargs"
    assert first["attention_mask"] is not None and second["attention_mask"] is None  # sliding mask vs causal
