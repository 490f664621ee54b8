"""compressed-tensors export (engine.hf_export): the variant's codes in the pack-quantized layout,
loaded by transformers' own from_pretrained (the compressed-tensors package, CPU) with the same
weights and logits as qtui's variant; refusals and failures are one line and leave nothing behind."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from engine import hf_export, runtime, store
from engine.errors import StoreError
from engine.gguf_export import ExportError
from engine.hf_export import export_compressed_tensors, pack_int32, unpack_int32, weight_args
from engine.quant.formats import get_format
from tests.helpers import quantize_saved

# every Linear of the tiny llama (hidden 96, intermediate 160) is a whole number of groups of 32
MAPPED = ["int4-g32", "int4-g32-sym", "int8"]
ct = pytest.importorskip("compressed_tensors", reason="compressed-tensors is in the dev extras")


def _variant(loaded_source, tmp_path: Path, fmt: str, arch: str = "llama", **kw) -> Path:
    folder, _ = quantize_saved(loaded_source(arch), fmt, out=tmp_path / "variants" / fmt, **kw)
    return folder


@pytest.mark.parametrize("bits", [4, 8])
def test_packing_is_compressed_tensors_own(bits):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    codes = torch.randint(0, 1 << bits, (6, 40), generator=torch.Generator().manual_seed(bits))
    offset = 1 << (bits - 1)
    signed = (codes - offset).to(torch.int8)
    ours = pack_int32(codes, bits)
    assert torch.equal(ours, pack_to_int32(signed, bits))
    assert torch.equal(unpack_int32(ours, bits, 40), codes)
    assert torch.equal(unpack_from_int32(ours, bits, torch.Size([6, 40])), signed)


@pytest.mark.parametrize(
    ("fmt", "strategy", "symmetric"),
    [("int4-g64", "group", False), ("int4-g128-sym", "group", True), ("int8", "channel", True)],
)
def test_weight_args(fmt, strategy, symmetric):
    args = weight_args(get_format(fmt))
    assert (args["strategy"], args["symmetric"], args["type"]) == (strategy, symmetric, "int")
    from compressed_tensors.quantization import QuantizationArgs

    QuantizationArgs.model_validate(args)  # the package's own schema accepts it


@pytest.mark.parametrize(
    ("fmt", "reason"),
    [
        ("int2-g64", "2-bit weights: vLLM's compressed-tensors kernels take 4- or 8-bit"),
        ("int3-g64", "3-bit weights"),
        ("q1_0_g128", "1-bit weights"),
        ("int4fz-g64", "zero points are f16 numbers"),
        ("w8a8", "w8a8 quantizes activations per token"),
        ("bf16", "nothing is quantized"),
    ],
)
def test_unmappable_formats_refused_in_one_line(fmt, reason):
    with pytest.raises(ExportError, match=reason) as err:
        weight_args(get_format(fmt))
    assert "\n" not in str(err.value) and str(err.value).startswith(f"cannot export {fmt}")


@pytest.mark.parametrize("fmt", MAPPED)
def test_transformers_loads_the_export_with_qtuis_weights_and_logits(loaded_source, tmp_path, fmt):
    from transformers import AutoModelForCausalLM

    folder = _variant(loaded_source, tmp_path, fmt)
    out = tmp_path / "export"
    result = export_compressed_tensors(folder, out)
    assert result.checks and result.max_abs_dw == 0.0
    assert {f.name for f in out.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "qtui-export.json",
    }
    assert not any(f.name.endswith(".tmp") for f in tmp_path.iterdir())
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["format"] == "pack-quantized"

    # float32: symmetric weights de-quantize in float32 from the exactly loaded f16 scales: qtui's
    # weights bit for bit; asymmetric ones go through compressed-tensors' decompress-on-load, which
    # computes (q - zp) * scale in the scale's stored dtype (f16): within f16 rounding of each weight
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    files = store.TensorFiles(folder, store.read_manifest(folder))
    manifest = store.read_manifest(folder)
    hf(torch.zeros(1, 1, dtype=torch.long))  # compressed-tensors decompresses on the first forward
    for check in result.checks:
        mine = store.quantized_weight(files, check.name, get_format(check.format), check.shape)
        theirs = hf.get_submodule(check.name).weight.detach().float()
        ref = mine.dequantize(torch.float32)
        if mine.fmt.symmetric:
            assert torch.equal(theirs, ref), check.name
        else:
            assert torch.equal(theirs, ref.to(torch.float16).float()), check.name
    assert len(result.checks) == sum(1 for d in manifest.tensors.values() if d["format"] == fmt)

    # logits: transformers' dense bf16 forward vs qtui's kernels (bf16), same prompt
    hf16 = AutoModelForCausalLM.from_pretrained(out)
    assert hf16.dtype == torch.bfloat16  # the dtype qtui computes in, written to config.json
    variant = runtime.load_variant(folder, device="cpu")
    ids = torch.randint(0, 250, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs_logits = hf16(ids).logits.float()
        ours = variant.model(ids).logits.float()
    diff = float((theirs_logits - ours).abs().max())
    # bf16 rounding of activations through 2 blocks: a few bf16 ulps of logits of size ~1
    assert diff < 0.03 * float(ours.abs().max()), diff
    assert (theirs_logits.argmax(-1) == ours.argmax(-1)).float().mean() >= 0.95


def test_tied_qwen2_with_biases_round_trips(loaded_source, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = _variant(loaded_source, tmp_path, "int4-g32-sym", arch="qwen2")
    out = tmp_path / "export"
    result = export_compressed_tensors(folder, out)
    assert result.max_abs_dw == 0.0
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    variant = runtime.load_variant(folder, device="cpu")
    ids = torch.arange(5, 29).unsqueeze(0)
    with torch.no_grad():
        diff = float((hf(ids).logits.float() - variant.model(ids).logits.float()).abs().max())
    assert diff < 0.05, diff


def test_group_that_does_not_divide_is_refused(loaded_source, tmp_path):
    folder = _variant(loaded_source, tmp_path, "int4-g64")  # down_proj: 160 inputs, not whole groups of 64
    with pytest.raises(
        ExportError, match=r"groups of 64 do not divide model.layers.0.mlp.down_proj.s 160 inputs"
    ) as err:
        export_compressed_tensors(folder, tmp_path / "export")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "export").exists()


def test_rotated_variant_is_refused(loaded_source, tmp_path):
    from engine.quant.plan import QuantOptions

    folder = _variant(loaded_source, tmp_path, "int4-g32", options=QuantOptions(rotate="hadamard"))
    with pytest.raises(ExportError, match=r"rotated variant \(rotate=hadamard\)"):
        export_compressed_tensors(folder, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_corrupted_variant_stops_before_writing(loaded_source, tmp_path):
    folder = _variant(loaded_source, tmp_path, "int4-g32-sym")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="sha256"):
        export_compressed_tensors(folder, tmp_path / "export")
    assert not (tmp_path / "export").exists() and [p.name for p in tmp_path.iterdir()] == ["variants"]


def test_existing_folder_needs_force_and_is_replaced_whole(loaded_source, tmp_path):
    folder = _variant(loaded_source, tmp_path, "int8")
    out = tmp_path / "export"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(ExportError, match="already exists; remove it or pass --force"):
        export_compressed_tensors(folder, out, overwrite=False)
    export_compressed_tensors(folder, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "variants"]


def test_read_only_folder_is_one_line(loaded_source, tmp_path, monkeypatch):
    folder = _variant(loaded_source, tmp_path, "int8")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:  # root writes into read-only folders: the OS's answer, simulated

        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(hf_export.tempfile, "mkdtemp", denied)
    try:
        with pytest.raises(ExportError, match="read-only or no permission") as err:
            export_compressed_tensors(folder, ro / "export")
        assert "\n" not in str(err.value)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_full_disk_leaves_nothing(loaded_source, tmp_path, monkeypatch):
    folder = _variant(loaded_source, tmp_path, "int8")
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(ExportError, match="disk full while writing") as err:
        export_compressed_tensors(folder, tmp_path / "export")
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["variants"]


def test_cli_export_and_errors(loaded_source, tiny_model, tmp_path, capsys):
    from qtui.cli import main

    folder = _variant(loaded_source, tmp_path, "int4-g32")
    out = tmp_path / "ct"
    assert main(["export", str(folder), "--to", "compressed-tensors", "--out", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["to"] == "compressed-tensors" and record["max_abs_dw"] == 0.0
    assert record["quantization_config"]["config_groups"]["group_0"]["weights"]["symmetric"] is False
    assert main(["export", str(folder), "--to", "compressed-tensors", "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip().endswith("already exists; remove it or pass --force")
    assert main(["export", str(folder), "--to", "compressed-tensors", "--out", str(out), "--force"]) == 0
    printed = capsys.readouterr().out
    assert "int4 groups of 32, integer zero point" in printed and "max |dW| 0 " in printed
    w8 = _variant(loaded_source, tmp_path, "w8a8")
    assert main(["export", str(w8), "--to", "compressed-tensors", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot export w8a8 to compressed-tensors" in err
    # a MODEL:FORMAT with no mapping is refused before it is quantized (nothing saved)
    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    assert main(["export", f"{tmp_path / 'hf'}:int2", "--to", "compressed-tensors"]) == 1
    assert "cannot export int2-g64 to compressed-tensors: 2-bit" in capsys.readouterr().err


def test_mixed_precision_gets_a_config_group_per_format(loaded_source, tmp_path):
    from transformers import AutoModelForCausalLM

    from engine.quant import calibration as C
    from engine.quant.plan import QuantOptions

    options = QuantOptions(keep_sensitive=3, sensitive_bits=8)
    calib = C.CalibrationSpec(samples=2, seq_len=32)
    folder = _variant(loaded_source, tmp_path, "int4-g32-sym", options=options, calibration=calib)
    result = export_compressed_tensors(folder, tmp_path / "export")
    groups = result.quantization_config["config_groups"]
    assert [g["weights"]["num_bits"] for g in groups.values()] == [4, 8]
    assert len(groups["group_1"]["targets"]) == 3 and result.max_abs_dw == 0.0
    assert sorted({c.format for c in result.checks}) == ["int4-g32-sym", "int8"]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32)
    hf(torch.zeros(1, 1, dtype=torch.long))
    files = store.TensorFiles(folder, store.read_manifest(folder))
    for check in result.checks:
        mine = store.quantized_weight(files, check.name, get_format(check.format), check.shape)
        assert torch.equal(hf.get_submodule(check.name).weight.float(), mine.dequantize(torch.float32))


@pytest.mark.parametrize("target", ["gguf", "compressed-tensors"])
def test_the_apps_export_service_writes_each_target(loaded_source, tmp_path, target):
    """The Models screen's Export button calls this (the Pilot test drives it with a fake engine)."""
    import threading

    from engine import paths
    from qtui.services import EngineService

    folder = _variant(loaded_source, tmp_path, "int4-g32")
    line = EngineService.export_variant(
        EngineService.__new__(EngineService), str(folder), target, lambda *a: None, threading.Event()
    )
    written = Path(line.split(" (")[0])
    assert written.exists() and written.is_relative_to(paths.data_dir() / "exports")
    assert ("tensors exact" if target == "gguf" else "quantized Linears, max |dW| 0") in line
