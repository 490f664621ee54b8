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


async def until(pilot, condition, timeout: float = 10.0) -> None:
    """Let the app run until ``condition()`` holds (workers finish, messages drain)."""
    import time

    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.02)


def formats_ready(app) -> bool:
    """The Models screen's format picker shows the expected sizes."""
    picker = app.screen.query("#formats")
    if not picker:
        return False
    options = [str(picker.first().get_option_at_index(i).prompt) for i in range(picker.first().option_count)]
    return any("114.8 MB" in text for text in options)
