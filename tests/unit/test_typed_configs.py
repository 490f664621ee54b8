"""Typed method configs, the quantize request, devices: values parsed once, bad input one line."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from engine import devices, sources, specs, typed
from engine.errors import QtuiError
from engine.quant.formats import get_format
from engine.quant.methods import MethodConfig, MethodSpec, get_method, list_methods
from engine.request import QuantRequest
from engine.runtime import GenSettings


@pytest.mark.parametrize("method", [m.name for m in list_methods()])
def test_every_method_declares_a_frozen_config_with_help(method):
    spec = get_method(method)
    cfg = spec.configure({})
    assert dataclasses.is_dataclass(cfg) and isinstance(cfg, MethodConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        for f in dataclasses.fields(cfg):
            setattr(cfg, f.name, None)
        raise dataclasses.FrozenInstanceError("no fields")  # a method without parameters
    for name, _, _, help_text in spec.parameters():
        assert help_text, f"{method}.{name} has no help"
    assert spec.name in spec.hint()


def test_unknown_parameter_is_refused_listing_the_valid_ones():
    # the bug: `-p itres=5` for hqq ran with the default iters and the manifest recorded `itres`
    with pytest.raises(
        typed.ConfigError, match=r"unknown parameter 'itres' \(valid: lp_norm, beta, kappa, iters, refit\)"
    ):
        get_method("hqq").configure({"itres": "5"})
    with pytest.raises(typed.ConfigError, match="method rtn: unknown parameter 'damp' .valid: none"):
        get_method("rtn").configure({"damp": "0.02"})


@pytest.mark.parametrize(
    "method, values, message",
    [
        ("gptq", {"percdamp": "abc"}, "percdamp must be a number, got 'abc'"),
        ("gptq", {"blocksize": "0"}, "blocksize must be >= 1, got 0"),
        ("gptq", {"blocksize": ""}, "blocksize must be a whole number"),
        ("gptq", {"act_order": "maybe"}, "act_order must be true or false"),
        ("gptq", {"mse": "sometimes"}, "mse must be true or false or auto"),
        ("gptq", {"percdamp": "nan"}, "finite"),
        ("awq", {"n_grid": "2.5"}, "n_grid must be a whole number"),
        ("hqq", {"iters": "-1"}, "iters must be >= 1"),
        ("smoothquant", {"alpha": "1.5"}, "alpha must be <= 1.0"),
    ],
)
def test_bad_values_are_one_line_errors(method, values, message):
    with pytest.raises(typed.ConfigError, match=message) as info:
        get_method(method).configure(values)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"method {method}:")


def test_values_are_typed_and_auto_is_resolved_per_format():
    gptq = get_method("gptq")
    cfg = gptq.configure({"percdamp": "0.02", "act_order": "yes", "blocksize": 64, "mse": "auto"})
    assert (cfg.percdamp, cfg.act_order, cfg.blocksize, cfg.mse) == (0.02, True, 64, None)
    assert cfg.resolved(get_format("int4-g64")).mse is True
    assert cfg.resolved(get_format("int8")).mse is False
    assert typed.values(cfg.resolved(get_format("int2-g64"))) == {
        "blocksize": 64, "percdamp": 0.02, "act_order": True, "mse": True,
    }  # fmt: skip
    assert typed.changed(cfg) == {"blocksize": 64, "percdamp": 0.02, "act_order": True}


def test_assignments_parser():
    assert typed.parse_assignments("damp=0.01  act_order=true") == {"damp": "0.01", "act_order": "true"}
    assert typed.parse_assignments(["alpha=0.5"]) == {"alpha": "0.5"}
    with pytest.raises(typed.ConfigError, match="KEY=VALUE"):
        typed.parse_assignments("damp")


def test_manifest_records_the_typed_config(tiny_model, tmp_path):
    from engine import store
    from engine.quant.pipeline import quantize_model

    model, tok = tiny_model("llama")
    report = quantize_model(model, get_format("int4-g64"), get_method("hqq"), {"iters": "3"})
    assert report.config == get_method("hqq").configure({"iters": 3})
    saved = store.save_variant(model, tok, tmp_path / "v", get_format("int4-g64"), "hqq", {}, report)
    on_disk = json.loads((tmp_path / "v" / store.MANIFEST).read_text())
    assert on_disk["method"]["params"] == {
        "lp_norm": 0.7,
        "beta": 10.0,
        "kappa": 1.01,
        "iters": 3,
        "refit": 3,
    }
    assert saved.manifest.method_params == on_disk["method"]["params"]
    assert on_disk["quantized_on"] == "cpu"


# ------------------------------------------------------------------------------ request
def test_request_is_built_once_and_typed():
    req = QuantRequest.build("default", "int4", "gptq", "percdamp=0.02", "builtin:8x128", device="cpu")
    assert req.fmt.name == "int4-g64" and req.method.name == "gptq"
    assert req.config.percdamp == 0.02
    assert (req.calibration.samples, req.calibration.seq_len) == (8, 128)
    assert req.device == torch.device("cpu")
    assert req.dest.name == "int4-g64-gptq"


def test_request_keep_sensitive_suffix_lives_in_one_place():
    from engine.quant.plan import QuantOptions

    req = QuantRequest.build("default", "int4", options=QuantOptions(keep_sensitive=3, sensitive_bits=16))
    assert req.dest.name == "int4-g64-rtn-keep3x16"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fmt": "int5"}, "unknown format"),
        ({"fmt": "int4", "method": "smoothquant"}, "works with w8a8 only"),
        ({"fmt": "int4", "method": "nope"}, "unknown method"),
        ({"fmt": "int4", "params": "itres=5", "method": "hqq"}, "unknown parameter 'itres'"),
        ({"fmt": "int4", "calibration": "builtin:0x128"}, "calibration: samples must be >= 1"),
        ({"fmt": "int4", "calibration": "builtin:8xabc"}, "SAMPLESxSEQ_LEN"),
        ({"fmt": "int4", "device": "tpu"}, "unknown device .tpu."),
        ({"fmt": "int4", "device": "mps"}, "not supported for quantizing"),
    ],
)
def test_request_refuses_bad_input_before_loading(kwargs, message):
    with pytest.raises(QtuiError, match=message):
        QuantRequest.build("default", **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error_not_a_silent_cpu_run():
    # the bug: the device chosen on the Models screen never reached the quantizer (always CPU)
    with pytest.raises(devices.DeviceError, match="sees no CUDA GPU; use --device cpu"):
        QuantRequest.build("default", "int4", device="cuda")
    assert devices.available() == ["cpu"]
    assert devices.resolve("auto") == torch.device("cpu")


def test_device_reaches_the_quantizer(tiny_model, monkeypatch):
    """The request's device is where the weights are quantized (recorded in the report)."""
    from engine import variants
    from engine.quant import pipeline

    seen = {}
    real = pipeline.quantize_model

    def spy(*args, **kwargs):
        seen["device"] = kwargs.get("device")
        return real(*args, **kwargs)

    monkeypatch.setattr(variants, "quantize_model", spy)
    model, tok = tiny_model("llama")
    req = QuantRequest.build("default", "int4", device="cpu", out="/nonexistent")
    loaded = sources.LoadedSource(req.source, req.source.path, model, tok, "x")
    monkeypatch.setattr(variants.store, "save_variant", lambda *a, **k: a[6])  # the report
    report = variants.quantize_and_save(req, loaded=loaded)
    assert seen["device"] == torch.device("cpu") and report.device == "cpu"


# ------------------------------------------------------------------------------ specs
def test_spec_grammars():
    assert specs.parse_format_backend("int4-g64@naive")[1] == "naive"
    assert specs.parse_format_backend("int4-g64:naive")[1] == "naive"  # the older spelling
    fmt, backend = specs.parse_format_backend("int8")
    assert (fmt.name, backend) == ("int8", None)
    assert specs.parse_task_mode("arc_easy") == ("arc_easy", "loglik")
    assert specs.parse_task_mode("gsm8k:generate") == ("gsm8k", "generate")
    with pytest.raises(QtuiError, match="unknown mode"):
        specs.parse_task_mode("gsm8k:guess")
    assert specs.parse_calibration("") is None
    spec = specs.parse_calibration("/data/notes.jsonl:32x512")
    assert (spec.source, spec.samples, spec.seq_len) == ("/data/notes.jsonl", 32, 512)
    assert specs.parse_calibration("/data/my notes.txt").source == "/data/my notes.txt"


def test_generation_settings_bounds():
    gen = typed.build(GenSettings, {"max_new_tokens": "64", "temperature": "0.7"}, "generation settings")
    assert (gen.max_new_tokens, gen.temperature) == (64, 0.7)
    with pytest.raises(typed.ConfigError, match="top_p must be <= 1.0"):
        typed.build(GenSettings, {"top_p": "2"}, "generation settings")


def test_a_method_with_a_model_level_transform_is_one_registration(tiny_model):
    """prepare_model / finalize_model: a new method with a model-level step needs no engine edit."""
    from engine.quant.pipeline import quantize_model

    calls = []

    @dataclass(frozen=True)
    class Cfg(MethodConfig):
        scale: float = typed.option(2.0, "factor folded out of every q_proj input", min=0.5)

    def prepare(model, fmt, cfg):
        calls.append("prepare")
        return {"scale": cfg.scale}

    def finalize(model, fmt, cfg):
        calls.append("finalize")
        return {"done": True}

    spec = MethodSpec("toy", "test method", False, lambda w, f, c: f.quantize(w), Cfg,
                      prepare_model=prepare, finalize_model=finalize)  # fmt: skip
    model, _ = tiny_model("llama")
    report = quantize_model(model, get_format("int4-g64"), spec, {"scale": "3"})
    assert calls == ["prepare", "finalize"]
    assert report.block_info[0] == {"model": "prepare", "scale": 3.0}
    assert report.block_info[-1] == {"model": "finalize", "done": True}


def test_docs_list_every_method_parameter():
    """docs/methods.md's parameter table stays in step with the config classes."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "methods.md").read_text()
    for method in list_methods():
        for name, _, _, _ in method.parameters():
            assert f"| {method.name} | `{name}` |" in doc, (
                f"{method.name}.{name} missing from docs/methods.md"
            )


# ------------------------------------------------------------------------------ input transforms
def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q.float()


def _rotate_down_proj(model, fmt, cfg):
    """A toy model-level step: every down_proj reads its input rotated, ``(x Q)(W Q)^T = x W^T``."""
    from engine.quant.layers import TransformedLinear

    done = []
    for name, module in list(model.named_modules()):
        if name.endswith("mlp.down_proj"):
            q = _orthogonal(module.in_features, len(done))
            rotated = TransformedLinear(module, q, module.weight.float() @ q)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, rotated)
            done.append(name)
    return {"rotated": done}


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_input_transform_survives_quantize_save_and_load(tiny_model, tmp_path, method):
    from engine import store
    from engine.quant import calibration as C
    from engine.quant.layers import QLinear
    from engine.quant.pipeline import prepare_model, quantize_model
    from engine.runtime import load_variant

    model, tok = tiny_model("llama")
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        before = model(ids).logits
    spec = MethodSpec(f"{method}-rot", "rotated down_proj", method == "gptq",
                      get_method(method).quantize_weight, get_method(method).config,
                      quantize_linear=get_method(method).quantize_linear,
                      prepare_model=_rotate_down_proj)  # fmt: skip
    cal = C.build(C.CalibrationSpec(samples=2, seq_len=16), tok) if method == "gptq" else None
    report = quantize_model(model, get_format("int8"), spec, calibration=cal)
    assert len(report.block_info[0]["rotated"]) == model.config.num_hidden_layers
    down = model.get_submodule("model.layers.0.mlp.down_proj")
    assert isinstance(down, QLinear) and down.input_transform is not None
    saved = store.save_variant(model, tok, tmp_path / "v", get_format("int8"), spec.name, {}, report)
    key = "model.layers.0.mlp.down_proj.input_transform"
    assert saved.manifest.tensors[key]["format"] == "f32"
    prepare_model(model, "cpu", torch.bfloat16, release=False)
    with torch.no_grad():
        after = model(ids).logits.float()
    variant = load_variant(tmp_path / "v", "cpu")
    loaded = variant.model.get_submodule("model.layers.0.mlp.down_proj")
    assert torch.equal(loaded.input_transform.float(), down.input_transform.float())
    with torch.no_grad():
        again = variant.model(ids).logits.float()
    assert torch.equal(again, after)  # bit-identical after the round trip
    # int8 of the rotated weights still computes the original function closely
    assert float((after - before).abs().max()) < 0.05 * float(before.abs().max())


def test_calibration_stats_see_the_transformed_input():
    """GPTQ's Hessian of a TransformedLinear is that of ``x T`` (what its weight multiplies)."""
    from engine.quant.blocks import collect_stats
    from engine.quant.layers import TransformedLinear

    torch.manual_seed(0)
    lin = nn.Linear(32, 16, bias=False)
    q = _orthogonal(32, 3)
    block = nn.Sequential(TransformedLinear(lin, q, lin.weight.float() @ q))
    inputs = [(torch.randn(2, 8, 32), {})]
    st = collect_stats(block, inputs, sample_tokens=16)["0"]
    x = (inputs[0][0].reshape(-1, 32) @ q).double()
    assert torch.allclose(st.hessian().double(), 2 * x.t() @ x / x.shape[0], atol=1e-4)
