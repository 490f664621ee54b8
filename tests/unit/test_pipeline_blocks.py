"""The block-by-block pipeline: input capture, every method x arch saving and loading back
bit-identically, progress and cancel, mixed precision, calibration sources and the manifest."""

from __future__ import annotations

import copy
import json
import threading

import pytest
import torch
from torch import nn

from engine import store
from engine.errors import Cancelled, QtuiError
from engine.quant import calibration as C
from engine.quant.blocks import capture_inputs
from engine.quant.formats import get_format
from engine.quant.layers import QLinear
from engine.quant.methods import get_method, list_methods
from engine.quant.pipeline import QuantOptions, decoder_layers, quantize_model, quantized_modules
from engine.runtime import load_variant, variant_from_model
from tests.helpers import quantize_saved

# every method on every arch at least once, the calibrated ones on all three
CASES = [
    ("llama", "rtn", "int4-g32"),
    ("llama", "gptq", "int8"),
    ("qwen2", "gptq", "q1_0_g128"),
    ("qwen3", "gptq", "int4-g64"),
    ("llama", "awq", "int4-g32"),
    ("qwen2", "awq", "int4-g32"),
    ("qwen3", "awq", "int2-g64"),
    ("qwen2", "hqq", "int2-g64-asym"),
    ("qwen3", "hqq", "q1_0_g128"),
    ("llama", "hqq", "int4fz-g64"),
    ("llama", "smoothquant", "w8a8"),
    ("qwen3", "smoothquant", "w8a8"),
]
FAST = {"awq": {"n_grid": 4}}
SMALL = C.CalibrationSpec(samples=4, seq_len=32)


def test_capture_gets_what_the_first_block_receives(tiny_model):
    model, tok = tiny_model("qwen3")
    ids = C.build(SMALL, tok).ids
    seen = []
    hook = decoder_layers(model)[0].register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((args, kwargs)), with_kwargs=True
    )
    with torch.no_grad():
        model(ids[:2])
    hook.remove()
    captured, per_block = capture_inputs(model, ids, 2, "cpu")
    assert len(per_block) == len(decoder_layers(model)) and all(len(kws) == 2 for kws in per_block)
    assert len(captured) == 2 and captured[0][0].shape == (2, 32, 64)
    real = seen[0][0][0] if seen[0][0] else seen[0][1]["hidden_states"]
    assert torch.equal(captured[0][0], real)
    assert "position_embeddings" in captured[0][1]
    assert not isinstance(decoder_layers(model)[0], type(None)) and decoder_layers(model)[
        0
    ].__class__.__name__.endswith("DecoderLayer")


@pytest.mark.parametrize("arch,method,fmt_name", CASES)
def test_every_method_saves_and_loads_back_bit_identically(loaded_source, tmp_path, arch, method, fmt_name):
    loaded = loaded_source(arch)
    cal = C.build(SMALL, loaded.tokenizer)
    fmt = get_format(fmt_name)
    model = copy.deepcopy(loaded.model)
    report = quantize_model(model, fmt, get_method(method), FAST.get(method), calibration=cal)
    assert all(r.out_rel_error is not None and r.out_rel_error < 1.5 for r in report.layers)
    expected = {k: t.clone() for n, m in quantized_modules(model).items() for k, t in m.qw.tensors(n).items()}
    dest = tmp_path / "variant"
    store.save_variant(model, loaded.tokenizer, dest, fmt, method, {"id": "tiny"}, report)
    manifest = store.read_manifest(dest)
    tensors = store.load_tensors(dest, manifest)
    for key, t in expected.items():
        assert torch.equal(tensors[key], t), key
    assert manifest.raw["calibration"]["samples"] == 4 and manifest.raw["calibration"]["source"] == "builtin"
    assert all("out_rel_error" in entry and "sqnr_db" in entry for entry in manifest.raw["layers"])
    loaded_back = load_variant(dest, "cpu")
    in_memory = variant_from_model("mem", model, loaded.tokenizer, fmt, "cpu")
    ids = cal.ids[:1]
    with torch.no_grad():
        assert torch.equal(loaded_back.model(ids).logits, in_memory.model(ids).logits)


def test_progress_per_linear_and_cancel(loaded_source, tmp_path):
    loaded = loaded_source("llama")
    cal = C.build(SMALL, loaded.tokenizer)
    calls = []
    quantize_model(
        copy.deepcopy(loaded.model),
        get_format("int4-g32"),
        get_method("gptq"),
        calibration=cal,
        progress=lambda d, t, s: calls.append((d, t, s)),
    )
    assert calls[-1][0] == calls[-1][1] == 14  # 2 blocks x 7 Linears
    assert any("block 2/2" in s for _, _, s in calls)
    cancel = threading.Event()

    def stop_in_block_two(done, total, text):
        if "block 2/2" in text:
            cancel.set()

    dest = tmp_path / "never"
    with pytest.raises(Cancelled):
        quantize_saved(
            loaded,
            get_format("int4-g32"),
            "gptq",
            dest,
            progress=stop_in_block_two,
            cancel=cancel,
            calibration=SMALL,
        )
    assert not dest.exists() and not list(tmp_path.glob(".never*"))


@pytest.mark.parametrize("bits", [8, 16])
def test_mixed_precision_keeps_the_most_sensitive(loaded_source, tmp_path, bits):
    loaded = loaded_source("qwen2")
    opts = QuantOptions(keep_sensitive=2, sensitive_bits=bits)
    path, report = quantize_saved(
        loaded, get_format("int2-g64"), "gptq", tmp_path / "v", options=opts, calibration=SMALL
    )
    manifest = store.read_manifest(path)
    kept = manifest.raw["mixed_precision"]["layers"]
    assert len(kept) == 2 and manifest.raw["mixed_precision"]["bits"] == bits
    low = [r.out_rel_error for r in report.layers if r.name not in kept]
    before = [i["out_rel_error_before"] for i in report.block_info if "kept" in i]
    assert min(before) >= max(low)  # the kept ones were the worst by output error
    variant = load_variant(path, "cpu")
    for name in kept:
        module = variant.model.get_submodule(name)
        if bits == 8:
            assert isinstance(module, QLinear) and module.fmt.name == "int8"
            assert manifest.raw["tensors"][f"{name}.weight"]["format"] == "int8"
        else:
            assert type(module) is nn.Linear
    others = [n for n, m in quantized_modules(variant.model).items() if n not in kept]
    assert all(variant.model.get_submodule(n).fmt.name == "int2-g64" for n in others)


def test_calibration_sources(tmp_path, tiny_tokenizer):
    txt = tmp_path / "wiki.txt"
    txt.write_text(
        "\n\n".join(f"Paragraph {i} about rivers, bridges and towns in the valley." for i in range(20))
    )
    jl = tmp_path / "chat.jsonl"
    jl.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]}
        )
        + "\n"
        + json.dumps({"prompt": "what is 2+2?", "response": "4"})
        + "\n"
        + json.dumps({"text": "plain text line that is long enough"})
        + "\n"
    )
    a = C.build(C.CalibrationSpec(str(txt), 3, 16), tiny_tokenizer)
    assert a.ids.shape == (3, 16) and a.documents == 20
    b = C.build(C.CalibrationSpec(str(jl), 2, 16), tiny_tokenizer)
    assert b.documents == 3 and b.describe()["tokens"] == 32
    builtin = C.build(C.CalibrationSpec(), tiny_tokenizer)
    assert builtin.ids.shape == (16, 256) and builtin.documents >= 40
    with pytest.raises(QtuiError, match="not found"):
        C.build(C.CalibrationSpec("/nope.txt"), tiny_tokenizer)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(QtuiError, match="line 1"):
        C.build(C.CalibrationSpec(str(bad)), tiny_tokenizer)


def test_registry_and_params():
    names = {m.name for m in list_methods()}
    assert {"rtn", "gptq", "awq", "hqq", "smoothquant"} <= names
    with pytest.raises(QtuiError, match="calibration"):
        quantize_model(nn.Module(), get_format("int4-g64"), get_method("gptq"))


class _Reuse(nn.Module):
    """Two Linears of one width whose inputs are different tensors; the first input is freed
    before the second is made, so the allocator may hand the second the first one's address."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 64, bias=False)
        self.b = nn.Linear(64, 64, bias=False)

    def forward(self, h):
        t = h * 2.0
        u = self.a(t)
        del t
        v = torch.tanh(u) + 1.0  # same shape as t: may land at t's freed address
        return self.b(v)


def test_stats_never_confuse_a_freed_input_with_a_new_one():
    from engine.quant.blocks import collect_stats

    torch.manual_seed(0)
    block = _Reuse()
    inputs = [(torch.randn(4, 512, 64), {}) for _ in range(3)]
    stats = collect_stats(block, inputs, sample_tokens=64)
    assert stats["a"] is not stats["b"]
    with torch.no_grad():
        xs = [(torch.tanh(block.a(h * 2.0)) + 1.0).reshape(-1, 64).double() for h, _ in inputs]
    n = sum(x.shape[0] for x in xs)
    expect = sum(x.t() @ x for x in xs) * (2.0 / n)  # GPTQ's H = 2 X^T X / n of b's real input
    got = stats["b"].hessian().double()
    assert torch.allclose(got, expect, rtol=1e-4, atol=1e-4 * float(expect.abs().max()))
