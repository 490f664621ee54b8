"""engine.demo: playlists are checked before anything plays (one line naming the step), the
sample playlist loads, transcripts and the comparison table are written."""

from __future__ import annotations

import pytest

from engine import demo
from engine.demo import DemoError, StepRecord


def write(tmp_path, text: str):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


GOOD = """
title: T
variants: [bf16, int4-g64]
steps:
  - title: One
    prompt: Hello?
    pause: 2
  - prompt: Two?
"""


def test_sample_and_a_good_playlist(tmp_path):
    sample = demo.load_playlist(demo.SAMPLE)
    assert sample.specs == ("default", "default:int4-g64", "default:int2-g64")
    assert len(sample.steps) == 4 and sample.steps[0].pause == 4.0 and sample.steps[2].pause is None
    p = demo.load_playlist(write(tmp_path, GOOD))
    assert p.labels == ("bf16", "int4-g64") and p.steps[1].title == "Step 2" and p.steps[1].max_tokens == 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("variants: [bf16\nsteps: [", "not valid YAML"),
        ("variants: [bf16, int5-g64]\nsteps: [{prompt: hi}]", "variants[1]: unknown format 'int5-g64'"),
        ("variants: [bf16, ./nowhere/int4]\nsteps: [{prompt: hi}]", "variants[1]: ./nowhere/int4 is not a saved"),
        ("variants: [bf16]\nsteps: [{prompt: hi}, {title: Late, prompt: x, pause: -1}]",
         "step 2 ('Late'): pause must be >= 0"),
        ("variants: [bf16]\nsteps: [{title: Empty}]", "step 1 ('Empty'): 'prompt' is missing"),
        ("variants: []\nsteps: [{prompt: hi}]", "'variants' must list"),
        ("variants: [bf16]", "'steps' must list"),
        ("- just a list", "a playlist is a mapping"),
    ],
)  # fmt: skip
def test_bad_playlists_are_one_line_naming_the_step(tmp_path, text, message):
    with pytest.raises(DemoError) as err:
        demo.load_playlist(write(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_transcript_and_table(tmp_path):
    p = demo.load_playlist(write(tmp_path, GOOD))
    records = [
        StepRecord(0, "One", "Hello?", "bf16", "Hi.", 2, 0.05, 40.0),
        StepRecord(0, "One", "Hello?", "int4-g64", "Hi.", 2, 0.04, 80.0, same_as_baseline=True),
        StepRecord(1, "Step 2", "Two?", "bf16", "2", 1, 0.05, 0.0),
        StepRecord(1, "Step 2", "Two?", "int4-g64", "comm comm", 48, 0.04, 70.0, ["loop"]),
    ]
    rows = demo.summary(records, list(p.labels))
    assert rows[1] == {"variant": "int4-g64", "answers": 2, "decode_tok_s": 75.0, "ttft_ms": 40, "tokens": 50,
                       "flagged": 1, "same_as_baseline": 1}  # fmt: skip
    path = demo.write_transcript(p, records, tmp_path / "out")
    md = path.read_text()
    assert "## 1. One" in md and "**int4-g64** (48 tok, 70.0 tok/s) [loop]: comm comm" in md
    assert (
        "| int4-g64 | 2 | 75.0 | 40 | 50 | 1 | 1/2 |" in md
        and "| bf16 | 2 | 40.0 | 50 | 3 | 0 | (baseline) |" in md
    )
    assert (tmp_path / "out" / "transcript.json").exists()
