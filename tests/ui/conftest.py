from __future__ import annotations

import pytest

from qtui.config import Settings
from tests.ui.fake_engine import FakeService


@pytest.fixture
def fake(tmp_path):
    return FakeService(tmp_path)


@pytest.fixture
def settings():
    return Settings(formats=["int4-g64"])
