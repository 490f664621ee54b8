"""Statistics for accuracies and comparisons: Wilson intervals, significance, retention, speed-up.

Every accuracy is shown with its n and a 95% Wilson score interval. Two accuracies whose
intervals overlap are reported as "not significant" (a conservative test: non-overlap implies
p < 0.05, overlap does not prove equality). Ratios keep both inputs and never divide by zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n trials; (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Proportion:
    """k out of n, with its 95% Wilson interval."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def text(self, pct: bool = True) -> str:
        if not self.n:
            return "n/a (n=0)"
        lo, hi = self.interval
        if pct:
            return f"{100 * self.value:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}] n={self.n}"
        return f"{self.value:.3f} [{lo:.3f}-{hi:.3f}] n={self.n}"

    def to_json(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {"k": self.k, "n": self.n, "value": self.value if self.n else None, "ci95": [lo, hi]}


def significant(a: Proportion, b: Proportion) -> bool:
    """True when the two 95% intervals do not overlap."""
    a_lo, a_hi = a.interval
    b_lo, b_hi = b.interval
    return a_hi < b_lo or b_hi < a_lo


def compare_text(variant: Proportion, baseline: Proportion) -> str:
    """'+3.0 pts (not significant)' / '-41.5 pts (significant)'."""
    if not variant.n or not baseline.n:
        return "n/a"
    diff = 100 * (variant.value - baseline.value)
    return f"{diff:+.1f} pts ({'significant' if significant(variant, baseline) else 'not significant'})"


@dataclass(frozen=True)
class Ratio:
    """numerator / denominator with both inputs kept; None when the denominator is 0."""

    numerator: float
    denominator: float

    @property
    def value(self) -> float | None:
        if not self.denominator or math.isnan(self.denominator) or math.isnan(self.numerator):
            return None
        return self.numerator / self.denominator


def retention(variant: float, baseline: float) -> str:
    """Accuracy retention = variant / f16, with both inputs; 'n/a' when f16 is 0."""
    r = Ratio(variant, baseline).value
    inputs = f"({100 * variant:.1f}% / {100 * baseline:.1f}%)"
    return f"n/a {inputs}" if r is None else f"{100 * r:.0f}% {inputs}"


def speedup(baseline_s: float, variant_s: float) -> str:
    """Speed-up = f16 time / variant time with both times; a slow-down says so."""
    r = Ratio(baseline_s, variant_s).value
    inputs = f"(f16 {baseline_s:.3g}s / variant {variant_s:.3g}s)"
    if r is None or baseline_s <= 0:
        return f"n/a {inputs}"
    if r >= 1:
        return f"{r:.2f}x faster {inputs}"
    return f"{1 / r:.2f}x slower {inputs}"
