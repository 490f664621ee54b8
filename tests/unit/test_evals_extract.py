"""Answer extraction, numeric matching and the official SQuAD EM / F1."""

from __future__ import annotations

import pytest

from engine.evals import extract as ex


@pytest.mark.parametrize(
    ("text", "answer", "source"),
    [
        ("so the answer is \\boxed{42}.", "42", "boxed"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "boxed"),  # nested braces
        ("first \\boxed{3} then corrected: \\boxed{5}", "5", "boxed"),  # the last box wins
        ("\\boxed{\\text{yes}}", "yes", "boxed"),  # \text{} unwrapped
        ("\\boxed{ $18$ }.", "18", "boxed"),
        ("\\boxed{} and \\boxed{7}", "7", "boxed"),  # empty boxes ignored
        ("unclosed \\boxed{12", "12", "fallback"),  # broken box: fallback (last number)
        ("no numbers here", None, "none"),
    ],
)
def test_extract_boxed_and_fallback(text, answer, source):
    got = ex.extract(text, ex.last_number)
    assert (got.answer, got.source) == (answer, source)
    assert got.boxed == (source == "boxed")


def test_boxed_contents_handles_deep_nesting_and_fbox():
    assert ex.boxed_contents("\\boxed{a{b{c}}d} x \\fbox{z}") == ["a{b{c}}d", "z"]


def test_choice_letter_fallback_prefers_a_stated_answer():
    g = ex.choice_letter("ABCD")
    assert g("A. first option\nB") == "A"  # a leading letter beats a truncated trailing one
    assert g("I think A, but the answer is (C).") == "C"
    assert g("Answer: b") == "B"
    assert g("nothing useful") is None
    assert ex.extract("The correct answer is D. lead apron", g) == ex.Extraction("D", "fallback")


@pytest.mark.parametrize(
    ("text", "value"),
    [("1,234", 1234.0), ("$18", 18.0), ("-3.5", -3.5), ("\\frac{3}{4}", 0.75), ("50%", 50.0), ("x = 7", 7.0),
     ("3/4", 0.75), ("two", None), ("1 and 2", None)],
)  # fmt: skip
def test_parse_number(text, value):
    assert ex.parse_number(text) == value


def test_yes_no_and_bool():
    assert ex.yes_no("Yes, it was built in 1872.") == "yes"
    assert ex.as_bool("True") is True and ex.as_bool("no.") is False and ex.as_bool("maybe") is None


def test_squad_normalisation_em_f1_known_pairs():
    assert ex.normalize_answer("The  Normans!") == "normans"
    assert ex.squad_em("the Normans", "Normans") == 1.0
    # official example arithmetic: pred "Denmark Iceland Norway", gold "Denmark, Iceland and Norway"
    # common = 3, precision 3/3, recall 3/4 -> F1 = 6/7
    assert ex.squad_f1("Denmark Iceland Norway", "Denmark, Iceland and Norway") == pytest.approx(6 / 7)
    assert ex.squad_f1("in the 10th century", "10th and 11th centuries") == pytest.approx(
        2 / 7
    )  # P 1/3, R 1/4
    assert ex.squad_f1("Rollo", "King Charles") == 0.0
    assert ex.squad_scores("1872", ["1872", "in 1872"]) == (1.0, 1.0)


def test_squad_unanswerable():
    assert ex.squad_prediction("Unanswerable.") == ""
    assert ex.squad_prediction("No answer") == ""
    assert ex.squad_prediction(None) == ""
    assert ex.squad_scores("", []) == (1.0, 1.0)  # abstaining on an unanswerable question is right
    assert ex.squad_scores("Paris", []) == (0.0, 0.0)
    assert ex.squad_scores("", ["Paris"]) == (0.0, 0.0)
