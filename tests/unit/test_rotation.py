"""Rotations (engine/quant/rotation.py): exact in 16/32 bits, refused where they cannot pass, saved
and loaded back bit-identically, and what they are for: outlier channels stop hurting a grid."""

from __future__ import annotations

import pytest
import torch

from engine import store
from engine.quant import calibration as C
from engine.quant import rotation
from engine.quant.formats import get_format
from engine.quant.methods import get_method
from engine.quant.pipeline import QuantOptions, quantize_model
from engine.runtime import GenSettings, generate, load_variant, variant_from_model
from tests.helpers import build_model, build_tokenizer

ROTATABLE = ["llama", "qwen2", "qwen3", "mistral", "smollm3", "granite", "phi3"]
POST_NORMS = {"gemma2": "post_attention_layernorm", "gemma3_text": "post_attention_layernorm"}
IDS = torch.tensor([[1, 5, 9, 14, 3, 7, 22, 40, 2, 11, 6, 8]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits[0].float()


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def calib(tok):
    return C.build(C.CalibrationSpec(samples=2, seq_len=16), tok)


# ------------------------------------------------------------------------------ matrices
@pytest.mark.parametrize("n", [1, 2, 12, 16, 20, 36, 48, 64, 96, 160, 576, 1536, 2560])
def test_hadamard_orders(n):
    h = rotation.hadamard(n)
    assert h is not None and h.shape == (n, n)
    assert set(h.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["hadamard", "random"])
@pytest.mark.parametrize("n", [64, 576, 6])
def test_orthogonal_is_orthogonal_and_seeded(kind, n):
    q, what = rotation.orthogonal(n, kind, seed=3)
    assert torch.allclose(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    again, _ = rotation.orthogonal(n, kind, seed=3)
    other, _ = rotation.orthogonal(n, kind, seed=4)
    assert torch.equal(q, again) and not torch.equal(q, other)
    if kind == "hadamard":  # 6 has no Hadamard matrix: a random orthogonal, and the report says so
        assert ("no Hadamard construction reaches 6" in what) == (n == 6)


# ------------------------------------------------------------------------------ exact
@pytest.mark.parametrize("kind", ["hadamard", "random"])
@pytest.mark.parametrize("family", ROTATABLE)
def test_rotated_model_computes_the_same_logits(family, kind):
    model = build_model(family)
    ref = logits(model)
    before = {n: p.clone() for n, p in model.named_parameters()}
    info = rotation.rotate_model(model, kind, seed=1)
    got = logits(model)
    # float32 throughout: the difference is float32 rounding of the rotated products
    assert float((got - ref).abs().max()) <= 2e-5 * float(ref.abs().max()) + 1e-5
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any("q_proj" in n or "qkv_proj" in n for n in changed)
    assert any("down_proj" in n for n in changed)
    assert info["dim"] == model.config.hidden_size
    assert info["value_output_heads"] == (0 if family == "phi3" else 2)  # phi3 fuses v into qkv


@pytest.mark.parametrize("family, norm", sorted(POST_NORMS.items()) + [("olmo2", "post_attention_layernorm")])
def test_post_norm_architectures_are_refused_naming_the_norm(family, norm):
    model = build_model(family)
    with pytest.raises(rotation.RotationError) as info:
        rotation.rotate_model(model, "hadamard")
    msg = str(info.value)
    assert "\n" not in msg and "model.layers.0." in msg
    assert norm in msg or "post_feedforward_layernorm" in msg or "pre_feedforward_layernorm" in msg


# ------------------------------------------------------------------------------ quantize, save, load
@pytest.mark.parametrize("method", ["rtn", "gptq", "hqq"])
def test_rotated_variant_saves_and_loads_bit_identically(method, tok, calib, tmp_path):
    fmt = get_format("int4-g32")
    model = build_model("llama")
    options = QuantOptions(rotate="hadamard", rotate_seed=5)
    report = quantize_model(
        model, fmt, get_method(method), options=options, calibration=calib if method == "gptq" else None
    )
    assert report.block_info[0]["model"] == "rotate"
    source = {"id": "tiny-llama", "kind": "folder", "label": "tiny-llama", "hash": "sha256:test"}
    saved = store.save_variant(model, tok, tmp_path / "v", fmt, method, source, report)
    assert saved.manifest.raw["options"]["rotate"] == "hadamard"
    assert saved.manifest.raw["options"]["rotate_seed"] == 5
    assert saved.manifest.tensors[rotation.KEY]["format"] == "f32"
    mem = variant_from_model("mem", model, tok, fmt, device="cpu")
    disk = load_variant(saved.path, device="cpu")
    assert disk.name == f"int4-g32-{method}-hadamard5"
    assert torch.equal(logits(mem.model), logits(disk.model))
    settings = GenSettings(max_new_tokens=4)
    assert (
        generate(mem, "hello world", settings).token_ids == generate(disk, "hello world", settings).token_ids
    )


def test_variant_name_says_rotation():
    fmt = get_format("int2-g64")
    assert store.variant_name(fmt, "gptq", QuantOptions(rotate="hadamard")) == "int2-g64-gptq-hadamard"
    assert (
        store.variant_name(fmt, "rtn", QuantOptions(rotate="random", rotate_seed=2)) == "int2-g64-rtn-random2"
    )
    assert store.variant_name(fmt, "rtn", QuantOptions()) == "int2-g64-rtn"


def test_rotation_and_quantized_embeddings_are_refused_together():
    from engine.errors import QtuiError

    with pytest.raises(QtuiError, match="cannot be combined with --quantize-embeddings"):
        quantize_model(
            build_model("llama"),
            get_format("int4"),
            get_method("rtn"),
            options=QuantOptions(quantize_embeddings=True, rotate="hadamard"),
        )


# ------------------------------------------------------------------------------ what it is for
def test_rotation_spreads_outlier_channels_so_rtn_int2_fits_them():
    """Plant a few input channels 30x larger (the activation-outlier pattern of real LLMs folded
    into weights): the grid of every group holding one is stretched and its other weights collapse
    to zero. Rotated, each row is near Gaussian and the output error of int2 RTN falls."""
    fmt = get_format("int2-g64")

    def outliers():
        model = build_model("llama", seed=3)
        with torch.no_grad():
            for block in model.model.layers:
                for lin in (block.self_attn.q_proj, block.mlp.gate_proj, block.mlp.up_proj):
                    lin.weight[:, :3] *= 30
        return model

    ref = logits(outliers())
    errors = {}
    for kind in ("none", "hadamard"):
        model = outliers()
        quantize_model(model, fmt, get_method("rtn"), options=QuantOptions(rotate=kind))
        errors[kind] = float((logits(model) - ref).norm() / ref.norm())
    assert errors["hadamard"] < 0.7 * errors["none"], errors
