"""The engine must import no UI library: it is used headless (CLI, benchmarks, tests)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import engine

UI_MODULES = ("textual", "rich", "plotext", "textual_plotext")


def engine_modules() -> list[str]:
    root = Path(engine.__file__).parent
    names = ["engine"]
    for info in pkgutil.walk_packages([str(root)], prefix="engine."):
        names.append(info.name)
    return sorted(names)


def test_every_engine_module_is_listed():
    names = engine_modules()
    for expected in (
        "engine.errors",
        "engine.paths",
        "engine.sources",
        "engine.store",
        "engine.runtime",
        "engine.variants",
        "engine.telemetry",
        "engine.quant.primitives",
        "engine.quant.formats",
        "engine.quant.layers",
        "engine.quant.pipeline",
        "engine.quant.methods",
        "engine.quant.methods.rtn",
    ):
        assert expected in names


def test_engine_imports_no_ui_library():
    names = engine_modules()
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {UI_MODULES!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(engine.__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == []
