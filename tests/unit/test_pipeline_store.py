"""Quantize -> save -> load round trips on tiny models, the manifest, and every way a save or a
load can go wrong (corruption, truncation, cancellation, a full disk)."""

from __future__ import annotations

import copy
import errno
import json
import struct
import threading

import pytest
import torch

from engine import store
from engine.errors import Cancelled, StoreError
from engine.quant.formats import get_format
from engine.quant.layers import QEmbedding, QLinear
from engine.quant.methods import get_method
from engine.quant.pipeline import QuantOptions, quantize_model, quantized_modules, targets
from engine.runtime import GenSettings, generate, load_variant, variant_from_model
from engine.specs import parse_model_spec
from engine.variants import describe_error
from tests.helpers import quantize_saved

ARCHS = ["llama", "qwen2", "qwen3"]
FORMATS = ["int8", "int4-g32", "int2-g64", "q1_0_g128", "bf16"]
PROMPT = "hello world what is the w1 ?"
SETTINGS = GenSettings(max_new_tokens=8)


def in_memory(loaded, fmt, options=QuantOptions()):
    """What quantize_and_save quantizes, done here in memory (RTN is deterministic)."""
    model = copy.deepcopy(loaded.model)
    if fmt.is_float:
        model.to(fmt.torch_dtype)
        return model, None
    report = quantize_model(model, fmt, get_method("rtn"), options=options)
    return model, report


def expected_tensors(model, fmt) -> dict[str, torch.Tensor]:
    """Every tensor a variant of ``model`` should store, from the in-memory quantized model."""
    out: dict[str, torch.Tensor] = {}
    for name, module in quantized_modules(model).items():
        out.update(module.qw.tensors(name))
    seen = set()
    for key, t in model.state_dict().items():
        if key in out or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[key] = t.to(fmt.torch_dtype) if t.is_floating_point() else t
    return out


def prompt_logits(variant) -> torch.Tensor:
    from engine.runtime import chat_ids

    with torch.inference_mode():
        return variant.model(input_ids=chat_ids(variant.tokenizer, PROMPT)).logits[0].float()


def weights_file(folder):
    return folder / store.WEIGHTS


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("arch", ARCHS)
def test_quantize_save_load_round_trip(arch, fmt_name, loaded_source, tmp_path):
    loaded = loaded_source(arch)
    fmt = get_format(fmt_name)
    folder, report = quantize_saved(loaded, fmt, out=tmp_path / "variant")
    assert folder == tmp_path / "variant" and (folder / store.MANIFEST).is_file()
    assert (report is None) == fmt.is_float
    assert loaded.model.dtype == torch.float32  # the caller's model is left alone
    assert not quantized_modules(loaded.model)

    # 1. every stored tensor is bit-identical to the in-memory quantized model's
    model, _ = in_memory(loaded, fmt)
    manifest = store.read_manifest(folder)
    stored = store.load_tensors(folder, manifest)
    expected = expected_tensors(model, fmt)
    assert set(stored) == set(expected)
    for key, t in expected.items():
        assert stored[key].dtype == t.dtype and torch.equal(stored[key], t), key

    # 2. the reloaded variant computes exactly what the in-memory one does
    mem = variant_from_model("mem", model, loaded.tokenizer, fmt, device="cpu")
    disk = load_variant(folder, device="cpu")
    assert disk.name == store.variant_name(fmt, "rtn") and disk.folder == folder
    assert disk.backends == mem.backends
    assert torch.equal(prompt_logits(mem), prompt_logits(disk))
    a, b = generate(mem, PROMPT, SETTINGS), generate(disk, PROMPT, SETTINGS)
    assert a.new_tokens == 8 and a.finish == "length"
    assert a.token_ids == b.token_ids and a.text == b.text

    # 3. the manifest says what was done and what is where
    assert manifest.raw["source"] == {
        "id": f"tiny-{arch}",
        "kind": "folder",
        "label": f"tiny-{arch}",
        "hash": "sha256:test",
    }
    assert manifest.raw["model_type"] == arch
    assert manifest.raw["format"]["name"] == fmt.name and manifest.raw["format"]["bits"] == fmt.bits
    assert manifest.raw["method"]["name"] == "rtn"
    assert manifest.raw["options"] == {"quantize_embeddings": False, "quantize_head": False}
    tensors = manifest.raw["tensors"]
    n_params = sum(p.numel() for p in loaded.model.parameters())
    assert manifest.raw["params"]["total"] == n_params
    base = "bf16"
    for key in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert tensors[key]["format"] == base
    if loaded.model.config.tie_word_embeddings:
        assert manifest.raw["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
        assert "lm_head.weight" not in tensors
    else:
        assert tensors["lm_head.weight"]["format"] == base and manifest.raw["tied"] == {}
    linears = [name for name, _ in targets(loaded.model, QuantOptions())]
    assert len(linears) == 14
    for name in linears:
        desc = tensors[f"{name}.weight"]
        assert desc["format"] == fmt.name
        assert desc["shape"] == list(loaded.model.get_submodule(name).weight.shape)
    if fmt.is_float:
        assert manifest.raw["bits_per_weight"]["quantized_tensors"] == 16.0
        assert manifest.raw["params"]["quantized"] == 0 and manifest.raw["layers"] == []
    else:
        shapes = [tensors[f"{n}.weight"]["shape"] for n in linears]
        qparams = sum(o * i for o, i in shapes)
        bits = sum(o * i * fmt.bits_per_weight(i) for o, i in shapes)
        assert manifest.raw["params"]["quantized"] == qparams
        assert manifest.raw["bits_per_weight"]["quantized_tensors"] == pytest.approx(bits / qparams, abs=1e-4)
        assert [entry["name"] for entry in manifest.raw["layers"]] == linears
        assert all(0 < entry["rel_error"] < 0.7 for entry in manifest.raw["layers"])
    size = weights_file(folder).stat().st_size
    assert manifest.raw["bits_per_weight"]["whole_model"] == pytest.approx(size * 8 / n_params, abs=1e-4)
    on_disk = {p.name: p.stat().st_size for p in folder.iterdir() if p.name != store.MANIFEST}
    assert {name: info["bytes"] for name, info in manifest.raw["files"].items()} == on_disk
    assert manifest.raw["bytes_on_disk"] == sum(on_disk.values())
    assert set(manifest.raw["tensor_sha256"]) == set(stored)


@pytest.mark.parametrize("arch", ARCHS)
def test_embeddings_and_head_quantized_on_request(arch, loaded_source, tmp_path):
    loaded = loaded_source(arch)
    fmt = get_format("int4-g64")
    options = QuantOptions(quantize_embeddings=True, quantize_head=True)
    folder, report = quantize_saved(loaded, fmt, out=tmp_path / "v", options=options)
    manifest = store.read_manifest(folder)
    assert manifest.raw["options"] == {"quantize_embeddings": True, "quantize_head": True}
    assert manifest.raw["tensors"]["model.embed_tokens.weight"]["format"] == "int4-g64"
    assert manifest.raw["tensors"]["lm_head.weight"]["format"] == "int4-g64"
    assert manifest.raw["tensors"]["model.norm.weight"]["format"] == "bf16"  # norms always stay
    assert manifest.raw["tied"] == {}
    assert [r.name for r in report.layers][0] == "model.embed_tokens" and report.layers[-1].name == "lm_head"
    assert loaded.model.config.tie_word_embeddings == (arch == "qwen2")  # the source is untouched

    disk = load_variant(folder, device="cpu")
    assert isinstance(disk.model.get_input_embeddings(), QEmbedding)
    assert isinstance(disk.model.get_output_embeddings(), QLinear)
    assert disk.backends["row gather + dequantize"] == 1
    model, _ = in_memory(loaded, fmt, options)
    mem = variant_from_model("mem", model, loaded.tokenizer, fmt, device="cpu")
    assert torch.equal(prompt_logits(mem), prompt_logits(disk))
    result = generate(disk, PROMPT, SETTINGS)
    assert result.new_tokens == 8 and result.token_ids == generate(mem, PROMPT, SETTINGS).token_ids


@pytest.mark.parametrize(
    "options", [QuantOptions(quantize_head=True), QuantOptions(quantize_embeddings=True)]
)
def test_tied_model_with_only_one_side_quantized(options, loaded_source, tmp_path):
    loaded = loaded_source("qwen2")  # ties lm_head to the embeddings
    fmt = get_format("q1_0_g128")
    folder, _ = quantize_saved(loaded, fmt, out=tmp_path / "v", options=options)
    tensors = store.read_manifest(folder).tensors
    assert tensors["model.embed_tokens.weight"]["format"] == (
        "q1_0_g128" if options.quantize_embeddings else "bf16"
    )
    assert tensors["lm_head.weight"]["format"] == ("q1_0_g128" if options.quantize_head else "bf16")
    disk = load_variant(folder, device="cpu")
    model, _ = in_memory(loaded, fmt, options)
    mem = variant_from_model("mem", model, loaded.tokenizer, fmt, device="cpu")
    assert torch.equal(prompt_logits(mem), prompt_logits(disk))


def test_saving_twice_is_bit_identical(loaded_source, tmp_path):
    loaded = loaded_source("llama")
    fmt = get_format("int2-g64-asym")
    a, _ = quantize_saved(loaded, fmt, out=tmp_path / "a")
    b, _ = quantize_saved(loaded, fmt, out=tmp_path / "b")
    # the header's metadata order may differ (safetensors keeps it in a hash map): compare the
    # parsed headers and the raw tensor bytes
    raw_a, raw_b = weights_file(a).read_bytes(), weights_file(b).read_bytes()
    len_a, len_b = struct.unpack("<Q", raw_a[:8])[0], struct.unpack("<Q", raw_b[:8])[0]
    assert json.loads(raw_a[8 : 8 + len_a]) == json.loads(raw_b[8 : 8 + len_b])
    assert raw_a[8 + len_a :] == raw_b[8 + len_b :]
    ma, mb = store.read_manifest(a), store.read_manifest(b)
    assert ma.tensor_sha256 == mb.tensor_sha256


def test_default_destination_and_list_variants(loaded_source, _isolated_home):
    loaded = loaded_source("qwen3")
    folder, _ = quantize_saved(loaded, get_format("int4-g64"))
    assert folder == store.default_variant_dir(loaded.source.slug, get_format("int4-g64"), "rtn")
    assert folder.is_relative_to(_isolated_home / "data" / "variants")
    assert folder.name == "int4-g64-rtn"
    found = store.list_variants()
    assert [path for path, _ in found] == [folder]
    assert found[0][1].format_name == "int4-g64"
    # a saved variant folder is a SPEC of its own
    spec = parse_model_spec(str(folder))
    assert spec.folder == folder and spec.source is None and spec.display == "int4-g64-rtn"
    with pytest.raises(StoreError, match="already exists"):
        quantize_saved(loaded, get_format("int4-g64"))
    again, _ = quantize_saved(loaded, get_format("int4-g64"), overwrite=True)
    assert again == folder and len(store.list_variants()) == 1


def test_save_after_release_is_refused(loaded_source, tmp_path):
    loaded = loaded_source("llama")
    fmt = get_format("int8")
    model, report = in_memory(loaded, fmt)
    variant_from_model("mem", model, loaded.tokenizer, fmt, device="cpu")  # releases the stored form
    with pytest.raises(StoreError, match="released"):
        store.save_variant(model, loaded.tokenizer, tmp_path / "v", fmt, "rtn", {}, report)
    assert not (tmp_path / "v").exists()
    assert list(tmp_path.iterdir()) == []


def test_variant_loads_a_layer_at_a_time(loaded_source, tmp_path, monkeypatch):
    """Each quantized layer is read, laid out for its kernel and its stored codes dropped before
    the next layer's codes are read: the load never holds the stored variant whole."""
    folder, _ = quantize_saved(loaded_source("llama"), get_format("int4-g64"), out=tmp_path / "v")
    events: list[tuple[str, str]] = []
    real_get, real_prepare = store.TensorFiles.__getitem__, QLinear.prepare

    def get(self, key):
        events.append(("read", key))
        return real_get(self, key)

    def prepare(self, *args, **kwargs):
        out = real_prepare(self, *args, **kwargs)
        events.append(("prepared", f"{id(self)}:{'released' if self.qw is None else 'kept'}"))
        return out

    monkeypatch.setattr(store.TensorFiles, "__getitem__", get)
    monkeypatch.setattr(QLinear, "prepare", prepare)
    variant = load_variant(folder, device="cpu")
    layers = {str(id(m)) for m in variant.model.modules() if isinstance(m, QLinear)}
    n_linear = len(layers)
    # (a kernel probe prepares a small layer of its own the first time: not one of the model's)
    events = [(kind, key) for kind, key in events if kind == "read" or key.split(":")[0] in layers]
    assert n_linear > 2
    # between two prepares exactly one layer's codes (qweight, scales, qzeros) were read
    code_reads = [i for i, (kind, key) in enumerate(events) if kind == "read" and key.endswith(".qweight")]
    prepares = [i for i, (kind, _) in enumerate(events) if kind == "prepared"]
    assert len(code_reads) == len(prepares) == n_linear
    assert all(
        r < p < nxt for r, p, nxt in zip(code_reads, prepares, code_reads[1:] + [len(events)], strict=True)
    )
    assert {key.split(":")[1] for kind, key in events if kind == "prepared"} == {"released"}
    # every tensor was read once, and the result equals a load from the whole dict
    reads = [key for kind, key in events if kind == "read"]
    assert len(reads) == len(set(reads)) == len(store.read_manifest(folder).tensor_sha256)


# ------------------------------------------------------------------------------ bad input
@pytest.fixture
def saved(loaded_source, tmp_path):
    out = tmp_path / "variants" / "src" / "v"  # list_variants' layout: ROOT/source/variant
    folder, _ = quantize_saved(loaded_source("llama"), get_format("int4-g64"), out=out)
    return folder


def _tensor_at(path, offset: int) -> str:
    raw = path.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + header_len])
    rel = offset - 8 - header_len
    for key, info in header.items():
        if key != "__metadata__" and info["data_offsets"][0] <= rel < info["data_offsets"][1]:
            return key
    raise AssertionError("offset not in any tensor")


def test_flipped_byte_is_caught_by_sha256(saved):
    path = weights_file(saved)
    raw = bytearray(path.read_bytes())
    header_len = struct.unpack("<Q", raw[:8])[0]
    offset = 8 + header_len + (len(raw) - 8 - header_len) // 2
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    key = _tensor_at(path, offset)
    with pytest.raises(StoreError) as info:
        load_variant(saved, device="cpu")
    msg = str(info.value)
    assert "model.safetensors" in msg and f"tensor {key} fails its sha256 check" in msg
    # verify=False skips the hashes (and loads the corrupted weights)
    assert load_variant(saved, device="cpu", verify=False).fmt.name == "int4-g64"


def test_truncated_weights_named(saved):
    path = weights_file(saved)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(StoreError) as info:
        load_variant(saved, device="cpu")
    msg = str(info.value)
    assert str(path) in msg and "truncated" in msg and str(size) in msg


def test_missing_file_named(saved):
    (saved / "tokenizer.json").unlink()
    with pytest.raises(StoreError, match=r"tokenizer\.json is missing; the variant is incomplete"):
        load_variant(saved, device="cpu")


def test_missing_manifest(saved):
    root = saved.parent.parent
    assert [path for path, _ in store.list_variants(root)] == [saved]
    (saved / store.MANIFEST).unlink()
    with pytest.raises(StoreError, match="is not a qtui variant"):
        load_variant(saved, device="cpu")
    assert store.list_variants(root) == []


def test_invalid_json_manifest(saved):
    (saved / store.MANIFEST).write_text('{"qtui_variant": 1, "format": ')
    with pytest.raises(StoreError) as info:
        load_variant(saved, device="cpu")
    assert "qtui-manifest.json is corrupt (not valid JSON" in str(info.value)


def test_manifest_missing_key_or_newer_version(saved):
    path = saved / store.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["qtui_variant"] = store.MANIFEST_VERSION + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="newer qtui"):
        store.read_manifest(saved)
    del manifest["tensor_sha256"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="missing 'tensor_sha256'"):
        store.read_manifest(saved)


def test_no_such_folder(tmp_path):
    with pytest.raises(StoreError, match="no such variant folder"):
        load_variant(tmp_path / "nothing", device="cpu")


# ------------------------------------------------------------------------------ failed saves
def _nothing_saved(dest):
    assert not dest.exists()
    leftovers = list(dest.parent.iterdir()) if dest.parent.exists() else []
    assert leftovers == []
    assert store.list_variants() == []


@pytest.mark.parametrize("phase", ["model.layers.1.self_attn.q_proj", "hashing", "writing"])
def test_cancel_from_progress_callback(phase, loaded_source):
    loaded = loaded_source("llama")
    fmt = get_format("int4-g64")
    dest = store.default_variant_dir(loaded.source.slug, fmt, "rtn")
    cancel = threading.Event()
    seen = []

    def progress(done, total, text):
        seen.append(text)
        if text.startswith(phase):
            cancel.set()

    with pytest.raises(Cancelled):
        quantize_saved(loaded, fmt, progress=progress, cancel=cancel)
    assert cancel.is_set()
    assert not any(text == "saved" for text in seen)
    if phase.startswith("model."):
        # stopped before the next layer: nothing after the cancelling one was reported
        assert seen[-1] == phase
    _nothing_saved(dest)


def test_disk_full(loaded_source, monkeypatch):
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    # save_variant imports save_file from safetensors.torch when it runs
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    loaded = loaded_source("qwen2")
    fmt = get_format("int8")
    dest = store.default_variant_dir(loaded.source.slug, fmt, "rtn")
    with pytest.raises(StoreError) as info:
        quantize_saved(loaded, fmt)
    msg = str(info.value)
    assert "disk full" in msg and "nothing was saved" in msg
    _nothing_saved(dest)


def test_other_write_error(loaded_source, monkeypatch, tmp_path):
    import safetensors.torch

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(safetensors.torch, "save_file", denied)
    with pytest.raises(StoreError) as info:
        quantize_saved(loaded_source("llama"), get_format("int8"), out=tmp_path / "out" / "v")
    assert "could not save" in str(info.value) and "Permission denied" in str(info.value)
    assert describe_error(info.value) == str(info.value)
    _nothing_saved(tmp_path / "out" / "v")


def test_describe_error():
    assert describe_error(StoreError("x is corrupt")) == "x is corrupt"
    assert describe_error(KeyError("k")) == "KeyError: 'k'"


def test_safetensors_header_with_a_wrong_span_is_refused(saved):
    path = weights_file(saved)
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    key = next(k for k in header if k.endswith(".scales"))
    start, end = header[key]["data_offsets"]
    header[key]["data_offsets"] = [start, end - 2]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))
    assert len(text) == n
    path.write_bytes(raw[:8] + text + raw[8 + n :])
    with pytest.raises(StoreError, match=rf"{key} spans {end - start - 2} bytes"):
        load_variant(saved, device="cpu")
