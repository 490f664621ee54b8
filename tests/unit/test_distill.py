"""Distillation (engine/quant/distill.py): frozen codes, trained scales/zeros/adapters, held-out
early stop, NaN and cancel handling, saved and loaded back bit-identically."""

from __future__ import annotations

import threading

import pytest
import torch

from engine import store
from engine.errors import Cancelled, QtuiError
from engine.quant import calibration as C
from engine.quant import distill as D
from engine.quant.formats import get_format
from engine.quant.layers import QLinear
from engine.quant.methods import get_method
from engine.quant.pipeline import QuantOptions, quantize_model
from engine.runtime import GenSettings, generate, load_variant, variant_from_model
from tests.helpers import build_model, build_tokenizer

IDS = torch.tensor([[1, 5, 9, 14, 3, 7, 22, 40, 2, 11, 6, 8]])
SOURCE = {"id": "tiny-llama", "kind": "folder", "label": "tiny-llama", "hash": "sha256:test"}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def calib(tok):
    return C.build(C.CalibrationSpec(samples=12, seq_len=16), tok)


def quantized(fmt: str = "int2-g64", method: str = "rtn", seed: int = 0):
    model = build_model("llama", seed=seed)
    teacher = build_model("llama", seed=seed)
    report = quantize_model(model, get_format(fmt), get_method(method))
    return model, teacher, report


def layers(model) -> dict[str, QLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QLinear)}


# ------------------------------------------------------------------------------ the split
def test_heldout_windows_never_reappear_in_training(calib):
    train, held = D.split_windows(calib, 3)
    assert train.shape[1] == held.shape[1] == 16
    assert held.shape[0] == 3 and train.shape[0] >= 1
    assert not any(torch.equal(h, t) for h in held for t in train)
    assert train.shape[0] + held.shape[0] <= calib.unique_tokens // 16


def test_a_repeated_stream_is_cut_to_its_distinct_tokens(tok):
    short = C.Calibration(
        C.CalibrationSpec(samples=8, seq_len=16), torch.arange(8 * 16).reshape(8, 16) % 40, 40, 1, "x"
    )
    train, held = D.split_windows(short, 4)  # 40 distinct tokens: 2 windows, at most half held out
    assert (train.shape[0], held.shape[0]) == (1, 1)


def test_no_tokens_left_after_the_split_is_one_clear_line():
    one = C.Calibration(C.CalibrationSpec(samples=1, seq_len=16), torch.arange(16).reshape(1, 16), 16, 1, "x")
    with pytest.raises(D.DistillError, match="no|left after the held-out split"):
        D.split_windows(one, 4)


# ------------------------------------------------------------------------------ training
def test_distillation_lowers_heldout_kl_and_keeps_the_codes(calib):
    model, teacher, _ = quantized()
    before = {n: (m.qw.qweight.clone(), m.qw.scales.clone()) for n, m in layers(model).items()}
    report = D.distill(model, teacher, calib, D.DistillConfig(steps=30, eval_every=5, lr=1e-2, patience=10))
    assert report.steps_run == 30 and report.tokens_seen == 30 * 2 * 16
    assert report.heldout_best < report.heldout_before
    assert report.best_step > 0
    assert len(report.losses) == 30
    after = layers(model)
    assert set(after) == set(before)  # every Linear back as a QLinear
    for name, (codes, _) in before.items():
        assert torch.equal(after[name].qw.qweight, codes)  # frozen
        assert after[name].qw.scales.dtype == torch.float16
    assert any(not torch.equal(after[n].qw.scales, s) for n, (_, s) in before.items())
    info = report.describe()
    assert info["train_tokens"] + info["heldout_tokens"] <= calib.unique_tokens
    assert info["heldout_kld_best"] < info["heldout_kld_before"]


def test_the_kept_state_is_the_best_heldout_one(calib):
    model, teacher, _ = quantized()
    report = D.distill(model, teacher, calib, D.DistillConfig(steps=20, eval_every=5, lr=0.3, patience=10))
    # a huge learning rate overshoots: whatever the last step did, the saved state scores best
    _, held = D.split_windows(calib, 4)
    from engine.quant.pipeline import prepare_model

    prepare_model(model, "cpu", torch.float32)
    with torch.no_grad():
        kl = sum(
            float(D.kl_per_token(D._log_probs(teacher, w[None]), D._log_probs(model, w[None]))) for w in held
        ) / len(held)
    assert kl == pytest.approx(report.heldout_best, rel=0.05, abs=1e-3)


def test_float_zeros_are_trained(calib):
    model, teacher, _ = quantized("int4fz-g32")
    zeros = {n: m.qw.qzeros.clone() for n, m in layers(model).items()}
    D.distill(model, teacher, calib, D.DistillConfig(steps=6, eval_every=3, lr=1e-2))
    assert any(not torch.equal(m.qw.qzeros, zeros[n]) for n, m in layers(model).items())
    assert all(m.qw.qzeros.dtype == zeros[n].dtype for n, m in layers(model).items())


def test_early_stop_when_heldout_stops_improving(calib, monkeypatch):
    model, teacher, _ = quantized()
    scores = iter([1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99])
    real = D.kl_per_token
    calls = {"n": 0}

    def fake(t, s):  # the held-out scores (no grad) follow the script; training losses are real
        if not torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] % len(D.split_windows(calib, 4)[1]) == 0:
                return torch.tensor(next(scores))
            return torch.tensor(0.0)
        return real(t, s)

    monkeypatch.setattr(D, "kl_per_token", fake)
    report = D.distill(model, teacher, calib, D.DistillConfig(steps=50, eval_every=2, patience=3))
    assert report.stop.startswith("early stop at step 8")
    assert report.best_step == 2


def test_a_nan_loss_stops_and_keeps_the_last_good_state(calib, monkeypatch):
    model, teacher, _ = quantized()
    real = D.kl_per_token
    count = {"train": 0}

    def poisoned(t, s):
        if torch.is_grad_enabled():
            count["train"] += 1
            if count["train"] == 4:
                return real(t, s) * float("nan")
        return real(t, s)

    monkeypatch.setattr(D, "kl_per_token", poisoned)
    report = D.distill(model, teacher, calib, D.DistillConfig(steps=10, eval_every=1, lr=1e-2))
    assert "loss is nan" in report.stop and "kept step" in report.stop
    assert report.steps_run == 3
    for m in layers(model).values():
        assert torch.isfinite(m.qw.scales.float()).all()


def test_cancel_stops_between_steps(calib):
    model, teacher, _ = quantized()
    cancel = threading.Event()

    def progress(done, total, text):
        if done == 2:
            cancel.set()

    with pytest.raises(Cancelled, match="distillation cancelled at step 3"):
        D.distill(model, teacher, calib, D.DistillConfig(steps=10), progress=progress, cancel=cancel)


# ------------------------------------------------------------------------------ adapters, saved
def test_adapters_are_trained_saved_and_loaded_back_bit_identically(calib, tok, tmp_path, capsys):
    model, teacher, report = quantized("int2-g64", "rtn")
    result = D.distill(model, teacher, calib, D.DistillConfig(steps=8, adapter_rank=4, eval_every=4, lr=1e-2))
    assert result.adapter_params > 0
    q = layers(model)
    assert all(m.adapter_rank == 4 and m.adapter_a.dtype == torch.bfloat16 for m in q.values())
    assert any(m.adapter_b.abs().sum() > 0 for m in q.values())  # B starts at zero: it moved
    report.options = QuantOptions(distill=D.DistillConfig(steps=8, adapter_rank=4))
    report.distill = result.describe()
    saved = store.save_variant(model, tok, tmp_path / "v", get_format("int2-g64"), "rtn", SOURCE, report)
    assert saved.manifest.raw["distill"]["adapter_rank"] == 4
    name = next(iter(q)) + ".adapter_a"
    assert saved.manifest.tensors[name]["format"] == "bf16"
    mem = variant_from_model("mem", model, tok, get_format("int2-g64"), device="cpu")
    disk = load_variant(saved.path, device="cpu")
    assert disk.name == "int2-g64-rtn-distill8r4"
    with torch.no_grad():
        assert torch.equal(mem.model(input_ids=IDS).logits, disk.model(input_ids=IDS).logits)
    settings = GenSettings(max_new_tokens=4)
    assert generate(mem, "hello", settings).token_ids == generate(disk, "hello", settings).token_ids
    from qtui.cli import main

    for target in ("gguf", "compressed-tensors"):  # adapters have no place there: refused, nothing written
        out = tmp_path / f"export-{target}"
        capsys.readouterr()
        assert main(["export", str(saved.path), "--to", target, "--out", str(out)]) == 1
        assert "distilled low-rank adapter" in capsys.readouterr().err
        assert not out.exists()


def test_the_adapter_is_what_the_trained_layer_computed(calib):
    """The QLinear after training computes what the trainable layer did (up to 16-bit storage)."""
    model, teacher, _ = quantized("int4-g32", "rtn")
    D.distill(model, teacher, calib, D.DistillConfig(steps=4, adapter_rank=2, eval_every=2, lr=1e-2))
    layer = next(iter(layers(model).values()))
    x = torch.randn(3, layer.in_features)
    gen = torch.Generator().manual_seed(0)
    again = D.TrainableLinear(layer, 0, gen)  # rank 0: picks up the layer's trained adapter
    expect = again(x)
    layer.prepare("cpu", torch.float32, backend="dense")
    assert torch.allclose(layer(x), expect, atol=2e-2, rtol=2e-2)


def test_variant_name_says_distillation():
    fmt = get_format("int2-g64")
    opts = QuantOptions(rotate="hadamard", distill=D.DistillConfig(steps=300, adapter_rank=8))
    assert store.variant_name(fmt, "gptq", opts) == "int2-g64-gptq-hadamard-distill300r8"
    assert (
        store.variant_name(fmt, "rtn", QuantOptions(distill=D.DistillConfig(steps=50)))
        == "int2-g64-rtn-distill50"
    )


# ------------------------------------------------------------------------------ the edges
def test_what_the_app_types_is_parsed_once():
    assert D.parse("") is None
    assert D.parse("60") == D.DistillConfig(steps=60)
    assert D.parse("60 r8 lr=0.001") == D.DistillConfig(steps=60, adapter_rank=8, lr=0.001)
    with pytest.raises(QtuiError, match="unknown parameter 'speed'"):
        D.parse("60 speed=2")
    with pytest.raises(QtuiError, match="steps"):
        D.parse("0")


def test_the_loss_curve_is_read_from_the_progress_line():
    assert D.loss_of("distill: step 3/60, KL 1.2345, held-out 1.5000") == 1.2345
    assert D.loss_of("distill: held-out KL 3.1 before training") is None
    assert D.loss_of("block 3/30: q_proj") is None


def test_quantize_and_save_distills_records_and_names_it(tok, tmp_path):
    from engine import sources
    from tests.helpers import quantize_saved

    folder = tmp_path / "src"
    build_model("llama").save_pretrained(folder)
    tok.save_pretrained(folder)
    loaded = sources.load(sources.resolve(str(folder)))
    seen: list[str] = []
    options = QuantOptions(distill=D.DistillConfig(steps=4, adapter_rank=2, eval_every=2))
    path, report = quantize_saved(
        loaded, "int2-g64", "rtn", options=options, calibration=C.CalibrationSpec(samples=12, seq_len=16),
        progress=lambda d, t, text: seen.append(text), out=tmp_path / "v",
    )  # fmt: skip
    assert report.distill is not None and report.distill["steps_run"] == 4
    assert any(D.loss_of(t) is not None for t in seen)
    manifest = store.read_manifest(path)
    assert manifest.raw["distill"]["heldout_kld_best"] <= manifest.raw["distill"]["heldout_kld_before"]
    assert load_variant(path, device="cpu").name == "int2-g64-rtn-distill4r2"


def test_cli_refuses_adapter_rank_without_distill(tmp_path, capsys):
    from qtui.cli import main

    code = main(["quantize", "default", "--format", "int2-g64", "--adapter-rank", "8"])
    assert code == 1
    err = capsys.readouterr().err
    assert "--adapter-rank and --distill-param need --distill STEPS" in err
    assert "Traceback" not in err


def test_cli_refuses_a_bad_distillation_parameter(capsys):
    from qtui.cli import main

    code = main(
        ["quantize", "default", "--format", "int2-g64", "--distill", "5", "--distill-param", "lr=abc"]
    )
    assert code == 1
    assert "distillation" in capsys.readouterr().err


def test_the_report_says_what_distillation_did():
    from engine.report import ReportedVariant, distill_section

    r = D.DistillReport(D.DistillConfig(steps=10, adapter_rank=8), 30, 4, 256, steps_run=10, tokens_seen=5120)
    r.heldout = [(0, 2.5), (10, 1.25)]
    r.best_step, r.stop = 10, "ran 10 steps"
    line = D.summary(r.describe())
    assert line.startswith("held-out KL 2.5 -> 1.25 (best step 10 of 10, adapters r8;")
    assert "7680 training tokens, 5120 seen; ran 10 steps" in line
    assert D.summary(None) == ""
    table = distill_section([ReportedVariant("a", "k", distilled=line), ReportedVariant("b", "k")])
    assert "| a | held-out KL 2.5" in table and "| b |" not in table


def test_distilling_a_16_bit_format_is_refused_before_any_load():
    from engine.request import QuantRequest

    with pytest.raises(QtuiError, match="bf16 has none to train"):
        QuantRequest.build("default", "bf16", "rtn", options=QuantOptions(distill=D.DistillConfig()))
