"""Wilson intervals against known values; significance, retention and speed-up semantics."""

from __future__ import annotations

import pytest

from engine.evals.stats import Proportion, compare_text, retention, significant, speedup, wilson


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        (5, 10, 0.2366, 0.7634),  # textbook values (Newcombe 1998 / statsmodels proportion_confint wilson)
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),  # Newcombe's example 81/263
        (1, 2, 0.0945, 0.9055),
    ],
)
def test_wilson_known_values(k, n, lo, hi):
    got_lo, got_hi = wilson(k, n)
    assert got_lo == pytest.approx(lo, abs=1e-4) and got_hi == pytest.approx(hi, abs=1e-4)


def test_wilson_empty_sample_is_uninformative():
    assert wilson(0, 0) == (0.0, 1.0)
    assert Proportion(0, 0).text() == "n/a (n=0)"


def test_proportion_text_shows_n_and_interval():
    assert Proportion(5, 10).text() == "50.0% [23.7-76.3] n=10"


def test_significance_is_interval_overlap():
    assert not significant(Proportion(1, 2), Proportion(0, 2))  # the '0% from 2 samples' trap
    assert significant(Proportion(90, 100), Proportion(30, 100))
    assert compare_text(Proportion(52, 100), Proportion(50, 100)) == "+2.0 pts (not significant)"
    assert compare_text(Proportion(30, 100), Proportion(90, 100)) == "-60.0 pts (significant)"


def test_retention_shows_inputs_and_is_na_over_zero():
    assert retention(0.5, 0.0) == "n/a (50.0% / 0.0%)"  # never '249.9%'
    assert retention(0.45, 0.5) == "90% (45.0% / 50.0%)"


def test_speedup_shows_both_times_and_slowdowns():
    assert speedup(2.0, 1.0) == "2.00x faster (f16 2s / variant 1s)"
    assert speedup(1.0, 4.0) == "4.00x slower (f16 1s / variant 4s)"
    assert speedup(1.0, 0.0).startswith("n/a")  # never '0.00x'
