"""The app on the scripted fake engine, as ``qtui serve --command`` runs it for the browser test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from qtui.app import QtuiApp  # noqa: E402
from qtui.config import Settings  # noqa: E402
from tests.ui.fake_engine import FakeService  # noqa: E402

if __name__ == "__main__":
    root = Path(os.environ.get("QTUI_HOME", "/tmp")) / "fake"
    service = FakeService(root, token_delay=0.05)
    QtuiApp(service=service, settings=Settings(formats=["int4-g64"]), sample_resources=False).run()
