"""The UI tests' FakeService has exactly the real EngineService's public methods and signatures.

Parameter names, kinds and defaults must match (annotations are ignored), so a change to the real
service's seam fails here until the fake follows, instead of UI tests passing against a stale fake.
"""

from __future__ import annotations

import inspect

import pytest

from qtui.services import EngineService
from tests.ui.fake_engine import FakeService


def public_methods(cls) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(fn)
        for name, fn in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def shape(sig: inspect.Signature) -> list[tuple[str, str, object]]:
    return [(p.name, p.kind.name, p.default) for p in sig.parameters.values()]


def test_same_public_methods():
    assert sorted(public_methods(FakeService)) == sorted(public_methods(EngineService))


@pytest.mark.parametrize("name", sorted(public_methods(EngineService)))
def test_same_signature(name):
    fake = public_methods(FakeService).get(name)
    assert fake is not None, f"FakeService lacks {name}"
    assert shape(fake) == shape(public_methods(EngineService)[name]), name
