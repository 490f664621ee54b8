"""The pieces behind the catalogue, one at a time: locks and the stale-folder clean-up, --debug,
the GGUF conversion cache, terminal-safe text, the text-file check."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from engine import limits, locks, paths, sources
from engine.errors import StoreError
from qtui import cli
from qtui.textsafe import visible


def _tmp_of(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}{locks.TMP_MARK}"))


def test_clean_stale_removes_only_what_no_live_process_holds(tmp_path):
    live, dead = tmp_path / "src" / "int4-g64-rtn", tmp_path / "src" / "int8-rtn"
    live_tmp, dead_tmp = _tmp_of(live), _tmp_of(dead)
    (dead_tmp / "model-00001.safetensors").write_bytes(b"half")
    with locks.exclusive(live):
        removed = locks.clean_stale(tmp_path, depth=2)
        assert removed == [dead_tmp] and live_tmp.exists() and not dead_tmp.exists()
    assert locks.clean_stale(tmp_path, depth=2) == [live_tmp]  # its writer is gone now
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == []  # no lock files left


def test_a_lock_held_by_another_process_names_its_pid(tmp_path):
    dest = tmp_path / "v"
    code = (
        "import sys, time; from pathlib import Path; from engine import locks\n"
        "with locks.exclusive(Path(sys.argv[1])):\n"
        "    print('held', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(dest)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(locks.Busy, match=rf"being written by another qtui process \(pid {holder.pid}\)"):
            with locks.exclusive(dest):
                pass
        tmp = _tmp_of(dest)
        assert locks.clean_stale(tmp_path) == [] and tmp.exists()  # a live writer's folder stays
    finally:
        holder.kill()
        holder.wait()
    assert locks.clean_stale(tmp_path) == [tmp]  # killed: its flock went with it


def test_a_failed_lock_leaves_no_folders(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="nothing was saved"):
        with locks.exclusive(blocker / "a" / "b" / "v"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_debug_shows_the_traceback_and_only_then(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("an internal bug\nsecond line")

    monkeypatch.setattr(cli, "cmd_variants", boom)
    assert cli.main(["variants"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "qtui: error: RuntimeError: an internal bug (unexpected; run again with --debug for the traceback)"
    )
    for argv in (["--debug", "variants"], ["variants", "--debug"]):
        with pytest.raises(RuntimeError, match="an internal bug"):
            cli.main(argv)


def test_error_line_for_os_errors():
    assert cli.error_line(PermissionError(13, "Permission denied", "/x/y")) == "Permission denied: /x/y"
    assert cli.error_line(OSError(28, "No space left on device", "/d")) == "disk full: /d"
    assert "out of memory" in cli.error_line(MemoryError())


def test_write_error_reads_a_full_disk_from_a_library_message():
    from safetensors import SafetensorError

    err = locks.write_error(
        SafetensorError("Error while serializing: I/O error: (os error 28)"), Path("/v/x")
    )
    assert str(err) == "disk full while saving x; nothing was saved"


def test_gguf_conversion_is_cached_by_content(world, tmp_path, monkeypatch):
    first = sources.local_folder(sources.resolve(str(world.gguf)))
    assert first.parent == paths.cache_dir() / "models" and (first / "qtui-source.json").exists()
    copy = tmp_path / "renamed.gguf"
    shutil.copy(world.gguf, copy)

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(sources, "_convert_gguf", no_second_conversion)
    assert sources.local_folder(sources.resolve(str(copy))) == first  # same content, same folder
    loaded = sources.load(str(copy), eager=False)
    assert loaded.content_hash == sources.content_hash(world.gguf) and loaded.source.from_gguf


def test_content_hash_of_a_file_and_of_a_folder(world):
    digest = sources.content_hash(world.gguf)  # a file is hashed as the one weight file it is
    assert digest == "sha256:" + hashlib.sha256(sources.file_sha256(world.gguf).encode()).hexdigest()
    assert sources.content_hash(world.folder).startswith("sha256:")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, ünïcödé, 日本語\n\ttab", "plain text, ünïcödé, 日本語\n\ttab"),
        ("\x1b[2J\x1b]0;t\x07", "\\x1b[2J\\x1b]0;t\\x07"),
        ("a\rb\x08c\x7f\x9b", "a\\x0db\\x08c\\x7f\\x9b"),
        ("left\u202eright", "left\\u202eright"),
    ],
)
def test_visible(text, shown):
    assert visible(text) == shown


def test_text_file_check_accepts_utf8_split_across_reads(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"a" * ((1 << 20) - 1) + "é and more".encode())  # é straddles the 1 MiB read
    limits.check_text_file(path, "calibration file")
    path.write_bytes(b"ok" + "é".encode()[:1])  # ends inside a character
    with pytest.raises(limits.LimitError, match="ends in the middle of a UTF-8 character"):
        limits.check_text_file(path, "calibration file")


def test_the_tree_never_unpickles_or_runs_remote_code():
    """No ``torch.load`` without ``weights_only=True`` and no ``trust_remote_code=True`` in qtui's
    own code (the README shows the same grep)."""
    root = Path(__file__).resolve().parents[2]
    found = []
    for folder in ("engine", "qtui", "bench", "tests"):
        for path in (root / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                loads = "torch.load(" in line and "weights_only=True" not in line
                remote = "trust_remote_code=True" in line
                if (loads or remote) and path.name != os.path.basename(__file__):
                    found.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert found == []


def test_the_app_refuses_a_conversation_past_the_context(world):
    """The chat columns' service checks a conversation against the context before streaming."""
    import threading

    from engine import variants
    from engine.runtime import GenSettings
    from qtui.services import EngineService, Loaded

    variant = variants.open_spec(str(world.folder), "cpu")
    loaded = Loaded("bf16", variant.backend, 0, 0, 16.0, variant)
    service, cancel = EngineService(), threading.Event()
    long_talk = [{"role": "user", "content": "word " * 30}]
    with pytest.raises(limits.LimitError, match=r"max tokens 200 plus the prompt's \d+ tokens is more"):
        service.stream(loaded, long_talk, GenSettings(max_new_tokens=200), cancel)
    answer = service.stream(
        loaded, [{"role": "user", "content": "hi"}], GenSettings(max_new_tokens=2), cancel
    )
    assert len(list(answer)) == 2
