"""Fixtures of the reliability catalogue: the inputs built once per session, an offline hub, the
CLI run in-process (and in a real process where signals are involved), read-only and full folders."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability import builders


@dataclass(frozen=True)
class World:
    """Inputs shared by every case (never modified: a case that damages one works on a copy)."""

    folder: Path  # a tiny llama HF folder (context 256)
    gguf: Path  # the same kind of model as a real GGUF file
    nan_folder: Path  # a model with NaN embeddings
    escape_folder: Path  # a model whose greedy answer is ESC characters
    variant: Path  # a saved int4-g64 RTN variant of ``folder``


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    from qtui import cli

    root = tmp_path_factory.mktemp("world")
    folder = builders.save_folder(root / "tiny")
    with pytest.MonkeyPatch.context() as mp:  # quantizing writes hash caches: keep them here
        mp.setenv("QTUI_HOME", str(root / "home"))
        assert cli.main(["quantize", str(folder), "--format", "int4", "--out", str(root / "variant")]) == 0
    return World(
        folder=folder,
        gguf=builders.write_gguf(root / "tiny.gguf"),
        nan_folder=builders.nan_model_folder(root / "nan"),
        escape_folder=builders.escape_model_folder(root / "escape"),
        variant=root / "variant",
    )


@pytest.fixture(autouse=True)
def _offline(_isolated_home, monkeypatch):
    """No network: a hub id is answered from an empty cache at once."""
    cache = _isolated_home / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("QTUI_CACHE_DIR", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def run_in_process(argv: list[str], capsys) -> Outcome:
    """``qtui ARGV`` in this process (no interpreter start-up: the catalogue stays fast)."""
    from qtui import cli

    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return Outcome(code, out, err)


def qtui_process(argv: list[str], **kwargs) -> subprocess.Popen:
    """``qtui ARGV`` as a real process (signals, two processes at once) with this test's env."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "qtui", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs,
    )  # fmt: skip


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file (sha256) and folder under ``roots``: what 'unchanged' is checked against."""
    state: dict[str, str] = {}
    for root in roots:
        if not root.exists():
            state[str(root)] = "absent"
            continue
        paths = [root] if root.is_file() else [root, *sorted(root.rglob("*"))]
        for p in paths:
            state[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return state


def _mount(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                          capture_output=True)  # fmt: skip
    return done.returncode == 0


@contextlib.contextmanager
def mounted(target: Path, options: str):
    if os.geteuid() != 0 or not _mount(target, options):
        pytest.skip(f"cannot mount a tmpfs ({options}) here: needs root and mount permission")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@contextlib.contextmanager
def read_only(target: Path):
    """A read-only folder: a read-only tmpfs as root (root ignores permission bits), else mode 0555."""
    if os.geteuid() != 0:
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o555)
        try:
            yield target
        finally:
            target.chmod(0o755)
        return
    with mounted(target, "ro,size=1m") as path:
        yield path


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"
