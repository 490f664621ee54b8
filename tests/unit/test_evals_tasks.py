"""Dataset loaders (real samples in ../shared/datasets), built-in suites, scorers, data errors."""

from __future__ import annotations

import json

import pytest

from engine.evals import tasks as T
from engine.evals.data import SHARED_SAMPLES, DataError, read_records

needs_samples = pytest.mark.skipif(not SHARED_SAMPLES.exists(), reason="shared dataset samples not present")


@needs_samples
@pytest.mark.parametrize("name", ["arc_easy", "arc_challenge", "boolq", "piqa", "gsm8k", "squad_v2"])
def test_shared_samples_load_with_their_hf_schema(name):
    items, digest = T.get_task(name).load()
    assert len(items) == 200 and len(digest) == 64
    assert len({i.id for i in items}) > 1


@needs_samples
def test_specific_records():
    arc = T.get_task("arc_easy").load(limit=1)[0][0]
    assert arc.choices[0].startswith("Sunlight is the source") and arc.gold == 0  # answerKey "A"
    gsm = T.get_task("gsm8k").load(limit=1)[0][0]
    assert gsm.answers == ("18",)  # the text after '####'
    squad, _ = T.get_task("squad_v2").load()
    assert any(not i.answers for i in squad) and any(i.answers for i in squad)  # unanswerable included
    boolq = T.get_task("boolq").load(limit=1)[0][0]
    assert boolq.gold == 0 and boolq.passage.startswith("All biomass")


def test_arc_digit_labels_and_json_and_folder(tmp_path):
    rec = {"id": "x", "question": "q?", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]},
           "answerKey": "3"}  # fmt: skip
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "test.json").write_text(json.dumps([rec, rec]))
    items, _ = T.get_task("arc_challenge").load(tmp_path / "d")
    assert len(items) == 2 and items[0].gold == 2
    assert T.mc_prompt(items[0]).splitlines()[2:5] == ["A. a", "B. b", "C. c"]


def test_openmath_schema(tmp_path):
    f = tmp_path / "om.jsonl"
    f.write_text(json.dumps({"problem": "2+2?", "expected_answer": "4"}) + "\n")
    item = T.get_task("openmath").load(f)[0][0]
    assert T.score_numeric(item, "so \\boxed{4.0}").correct


@pytest.mark.parametrize(
    ("name", "lo"), [("arithmetic", 50), ("knowledge", 50), ("yesno", 50), ("passage_qa", 50)]
)
def test_builtin_suites_ship_in_assets(name, lo):
    items, _ = T.get_task(name).load()
    assert lo <= len(items) <= 100


def test_builtin_suites_are_consistent():
    qa, _ = T.get_task("passage_qa").load()
    for item in qa:  # every gold answer is a span of its passage (SQuAD style)
        assert all(a.lower() in item.passage.lower() for a in item.answers)
    assert sum(1 for i in qa if not i.answers) >= 10  # unanswerable questions included
    arith, _ = T.get_task("arithmetic").load()
    assert all(eval(i.question.removeprefix("What is ").rstrip("?")) == int(i.answers[0])  # noqa: S307
               for i in arith if i.question.startswith("What is"))  # fmt: skip
    know, _ = T.get_task("knowledge").load()
    assert len({i.gold for i in know}) == 4  # the right answer is not always in one place


def test_scorers_separate_boxed_from_fallback():
    mc = T.Item("1", "q", ("red", "blue", "green", "black"), 1)
    assert T.score_choice(mc, "\\boxed{B}") == T.Score(True, "boxed", "B", True)
    s = T.score_choice(mc, "The answer is B")
    assert s.correct and not s.correct_strict and s.source == "fallback"
    assert T.score_choice(mc, "\\boxed{blue}").correct  # the option text counts too
    assert not T.score_choice(mc, "\\boxed{A}").correct
    yn = T.Item("2", "is it?", ("no", "yes"), 1, passage="p")
    assert T.score_yesno(yn, "\\boxed{Yes}").correct_strict
    num = T.Item("3", "q", answers=("18",))
    s = T.score_numeric(num, "she makes $\\boxed{20}")
    assert not s.correct and s.abs_diff == 2
    ex = T.Item("4", "who?", answers=("Ada Morris",), passage="...")
    s = T.score_extractive(ex, "\\boxed{ada morris.}")
    assert s.em == 1.0 and s.f1 == 1.0
    un = T.Item("5", "cost?", answers=(), passage="...")
    assert T.score_extractive(un, "\\boxed{unanswerable}").correct


def test_data_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        T.get_task("boolq").load(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"foo": 1}) + "\n")
    with pytest.raises(DataError, match="BoolQ schema"):
        T.get_task("boolq").load(bad)
    with pytest.raises(DataError, match="unknown task"):
        T.get_task("nope")
    with pytest.raises(DataError, match="pyarrow|parquet"):
        (tmp_path / "x.parquet").write_bytes(b"PAR1")
        read_records(tmp_path / "x.parquet")


def test_hub_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("QTUI_DATASETS", str(tmp_path))  # no local sample
    with pytest.raises(DataError, match="not available offline"):
        T.get_task("gsm8k").load()
    with pytest.raises(DataError, match="pass --data"):
        T.get_task("openmath").load()
