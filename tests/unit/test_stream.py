"""Quantizing from disk to disk, one block at a time: same variant as in memory, bounded, bad shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine import sources, store, stream, variants
from engine.errors import SourceError
from engine.quant.plan import QuantOptions
from engine.request import QuantRequest
from engine.runtime import load_variant
from tests.helpers import quantize_saved


def _saved_source(tiny_model, folder: Path, arch: str, shard: str | None = None) -> sources.LoadedSource:
    model, tok = tiny_model(arch)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    tok.save_pretrained(folder)
    return sources.load(str(folder), eager=False)


def _in_memory(loaded: sources.LoadedSource) -> sources.LoadedSource:
    return sources.LoadedSource(
        loaded.source, loaded.folder, loaded.model, loaded.tokenizer, loaded.content_hash
    )


@pytest.mark.parametrize(
    "arch, fmt, method",
    [("llama", "int4-g32", "rtn"), ("qwen2", "int4-g32", "gptq"), ("qwen3", "int8", "awq"),
     ("llama", "int2-g64", "hqq"), ("qwen2", "bf16", "rtn"), ("llama", "w8a8", "smoothquant")],
)  # fmt: skip
def test_streamed_variant_is_the_in_memory_variant(tiny_model, tmp_path, arch, fmt, method):
    loaded = _saved_source(tiny_model, tmp_path / "src", arch, shard="60KB")
    assert loaded.lazy() is not None and len(list((tmp_path / "src").glob("*.safetensors"))) > 1
    calib = "builtin:2x16" if method != "rtn" and method != "hqq" else None
    streamed = variants.quantize_and_save(
        QuantRequest.build(loaded.source, fmt, method, calibration=calib, out=tmp_path / "s"), loaded=loaded
    )
    folder, _ = quantize_saved(_in_memory(loaded), fmt, method, out=tmp_path / "m", calibration=calib)
    memory = store.read_manifest(folder)
    assert streamed.manifest.tensor_sha256 == memory.tensor_sha256  # bit-identical tensors
    assert streamed.manifest.tensors == memory.tensors and streamed.manifest.tied == memory.tied
    assert [e["name"] for e in streamed.manifest.layers] == [e["name"] for e in memory.layers]


def test_only_one_block_is_in_memory_at_a_time(tiny_model, tmp_path, monkeypatch):
    loaded = _saved_source(tiny_model, tmp_path / "src", "llama")
    seen: list[int] = []
    real_load = stream.DiskIO.load

    def load(self, prefix):
        real_load(self, prefix)
        layers = self.lazy.model.model.layers
        seen.append(sum(any(not p.is_meta for p in block.parameters()) for block in layers))

    monkeypatch.setattr(stream.DiskIO, "load", load)
    variants.quantize_and_save(
        QuantRequest.build(loaded.source, "int4", "gptq", calibration="builtin:2x16", out=tmp_path / "v"),
        loaded=loaded,
    )
    assert seen and max(seen) == 1


def test_sharded_variant_loads_back_and_generates(tiny_model, tmp_path, monkeypatch):
    loaded = _saved_source(tiny_model, tmp_path / "src", "qwen2")
    monkeypatch.setattr(store.VariantWriter, "__init__", _small_shards(store.VariantWriter.__init__))
    saved = variants.quantize_and_save(
        QuantRequest.build(loaded.source, "int4", out=tmp_path / "v"), loaded=loaded
    )
    assert len(saved.manifest.weight_files) > 1
    assert (tmp_path / "v" / store.INDEX).exists()
    variant = load_variant(tmp_path / "v", "cpu")
    ids = torch.tensor([[1, 5, 9, 14]])
    with torch.no_grad():
        assert torch.isfinite(variant.model(ids).logits).all()


def _small_shards(init):
    def wrapped(self, dest, fmt, overwrite=False, shard_bytes=1 << 30):
        init(self, dest, fmt, overwrite, shard_bytes=20_000)

    return wrapped


def test_mixed_precision_falls_back_to_memory(tiny_model, tmp_path):
    request = QuantRequest.build("default", "int4", options=QuantOptions(keep_sensitive=2))
    assert not variants.streamable(request)
    assert variants.streamable(QuantRequest.build("default", "int4", "gptq"))


# ------------------------------------------------------------------------------ bad shards
def _sharded(tiny_model, tmp_path) -> Path:
    folder = tmp_path / "src"
    _saved_source(tiny_model, folder, "llama", shard="60KB")
    return folder


def _expect_clean_failure(folder: Path, tmp_path: Path, match: str) -> None:
    with pytest.raises(SourceError, match=match) as info:
        loaded = sources.load(str(folder), eager=False)
        variants.quantize_and_save(
            QuantRequest.build(loaded.source, "int4", out=tmp_path / "v"), loaded=loaded
        )
    assert "\n" not in str(info.value)
    assert not (tmp_path / "v").exists() and not list(tmp_path.glob(".v.tmp-*"))


def test_missing_shard(tiny_model, tmp_path):
    folder = _sharded(tiny_model, tmp_path)
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    _expect_clean_failure(folder, tmp_path, f"{shard.name} is missing")


def test_shard_truncated_mid_tensor(tiny_model, tmp_path):
    folder = _sharded(tiny_model, tmp_path)
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size - 100])
    _expect_clean_failure(folder, tmp_path, f"{shard.name} is truncated")


def test_index_names_a_tensor_no_shard_has(tiny_model, tmp_path):
    folder = _sharded(tiny_model, tmp_path)
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = sorted(folder.glob("model-*.safetensors"))[0].name
    data["weight_map"]["model.layers.0.mlp.extra.weight"] = first
    index.write_text(json.dumps(data))
    _expect_clean_failure(folder, tmp_path, "has no such tensor")


def test_a_weight_the_model_needs_is_in_no_shard(tiny_model, tmp_path):
    folder = tmp_path / "src"
    _saved_source(tiny_model, folder, "llama")
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    _expect_clean_failure(folder, tmp_path, "lack 1 tensor.*model.layers.1.mlp.down_proj.weight")


# ------------------------------------------------------------------------------ memory budget
def test_budget_too_small_for_one_block_is_refused_before_anything_is_written(tiny_model, tmp_path, capsys):
    from qtui import cli

    _saved_source(tiny_model, tmp_path / "src", "llama")
    out = tmp_path / "v"
    code = cli.main(
        ["quantize", str(tmp_path / "src"), "--format", "int4", "--max-memory", "1MB", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 1 and "memory budget is 1.0 MB" in err and "--max-memory" in err
    assert "Traceback" not in err and not out.exists() and not list(tmp_path.glob(".v.tmp-*"))


@pytest.mark.parametrize(
    "text, expected", [("6GB", 6e9), ("512 MiB", 512 << 20), ("1.5g", 1.5e9), ("2000", 2000)]
)
def test_parse_bytes(text, expected):
    from engine import budget

    assert budget.parse_bytes(text) == int(expected)


@pytest.mark.parametrize("text", ["6XB", "", "-1GB", "0"])
def test_parse_bytes_rejects(text):
    from engine import budget

    with pytest.raises(budget.BudgetError):
        budget.parse_bytes(text)


def test_estimate_of_a_qwen3_4b_shape_is_one_block_not_the_model():
    """From the config alone (meta tensors): streaming needs one block, memory the whole model."""
    from transformers import AutoModelForCausalLM

    from engine import budget
    from engine.quant.calibration import CalibrationSpec
    from engine.shapes import SHAPES

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(SHAPES["qwen3-4b"].config())
    rtn = budget.estimate(model, 2, None, streaming=True)
    gptq = budget.estimate(model, 2, CalibrationSpec(), streaming=True, gptq=True)
    whole = budget.estimate(model, 2, None, streaming=False)
    block = sum(p.numel() for p in model.model.layers[0].parameters()) * 4
    assert rtn.block == block and 350e6 < block < 450e6  # ~100M parameters a block
    assert rtn.total - rtn.process < 2.0e9 and gptq.total - gptq.process < 3.5e9
    assert whole.block > 30 * block


@pytest.mark.parametrize("kind, noted", [("default", True), ("gguf", True), ("folder", False)])
def test_a_16_bit_baseline_of_a_gguf_source_says_it_is_de_quantized(tiny_model, tmp_path, kind, noted):
    from engine import runtime
    from engine.quant.formats import get_format

    model, tok = tiny_model("llama")
    store.save_variant(model, tok, tmp_path / "v", get_format("bf16"), "rtn", {"id": "x", "kind": kind})
    variant = load_variant(tmp_path / "v", "cpu")
    assert (runtime.GGUF_NOTE in variant.backend) is noted


def test_a_tied_head_is_found_from_the_config_even_in_an_untied_skeleton(tiny_model, tmp_path):
    """A skeleton built while another thread loads a model can come out untied; the head that the
    config ties and no shard stores must still be read from the embeddings."""
    from torch import nn

    from engine.lazy import WeightIndex, _tied_head

    loaded = _saved_source(tiny_model, tmp_path / "src", "qwen2")  # qwen2 helper: tied embeddings
    lazy = loaded.lazy()
    assert lazy is not None and lazy.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    model = lazy.model
    model.lm_head.weight = nn.Parameter(torch.empty_like(model.lm_head.weight, device="meta"))  # untied
    tied = _tied_head(model, model.config, WeightIndex(tmp_path / "src"))
    assert tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert model.lm_head.weight is model.model.embed_tokens.weight
