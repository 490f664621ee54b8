"""Answer extraction and answer matching: \\boxed{}, fallbacks, numbers, SQuAD EM / F1.

:func:`extract` returns where the answer came from: ``"boxed"`` (the last ``\\boxed{...}``,
nested braces handled), ``"fallback"`` (a task-specific guess from unboxed text, reported
separately) or ``"none"``. Format compliance is the fraction of answers with source "boxed".
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    source: str  # "boxed" | "fallback" | "none"

    @property
    def boxed(self) -> bool:
        return self.source == "boxed"


def boxed_contents(text: str) -> list[str]:
    """Contents of every complete ``\\boxed{...}`` in order, with balanced nested braces."""
    out = []
    for m in BOX_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1].strip())
    return out


def _unwrap(answer: str) -> str:
    """Strip LaTeX wrappers a model likes to add: \\text{...}, $...$, a trailing period."""
    a = answer.strip()
    for _ in range(3):
        m = re.fullmatch(r"\\(?:text|textbf|mathrm|mbox)\s*\{(.*)\}", a, flags=re.S)
        if m:
            a = m.group(1).strip()
        a = a.strip("$ ").rstrip(".").strip()
    return a


def extract(text: str, fallback: Callable[[str], str | None] | None = None) -> Extraction:
    boxes = [b for b in boxed_contents(text) if b.strip()]
    if boxes:
        return Extraction(_unwrap(boxes[-1]), "boxed")
    if fallback is not None:
        guess = fallback(text)
        if guess is not None and guess.strip():
            return Extraction(guess.strip(), "fallback")
    return Extraction(None, "none")


# ------------------------------------------------------------------------------ fallbacks
NUMBER_RE = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> str | None:
    found = NUMBER_RE.findall(text)
    return found[-1] if found else None


def choice_letter(letters: str) -> Callable[[str], str | None]:
    """'the answer is (B)' / 'Answer: B' (last mention), else a leading 'B.' / '(B)', else a lone letter."""
    stated = re.compile(rf"answer(?: is)?\s*[:\-]?\s*\(?([{letters}])\)?(?![A-Za-z])", re.I)
    leading = re.compile(rf"^\(?([{letters}])[\).:](?:\s|$)")

    def guess(text: str) -> str | None:
        found: list[str] = stated.findall(text)
        if found:
            return found[-1].upper()
        first = leading.match(text.strip())
        if first:
            return first.group(1)
        lone = re.findall(rf"(?:^|\s)\(?([{letters}])[\).:]?(?=\s|$)", text.strip())
        return lone[0] if lone else None

    return guess


def yes_no(text: str) -> str | None:
    found = re.findall(r"\b(yes|no|true|false)\b", text.lower())
    return found[0] if found else None


def first_line(text: str) -> str | None:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return None


# ------------------------------------------------------------------------------ matching
def parse_number(text: str | None) -> float | None:
    if text is None:
        return None
    t = _unwrap(text).replace(",", "").replace("$", "").replace("\\%", "").replace("%", "").strip()
    frac = re.fullmatch(r"\\d?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", t)
    if frac:
        try:
            return float(frac.group(1)) / float(frac.group(2))
        except (ValueError, ZeroDivisionError):
            return None
    m = re.fullmatch(r"-?\d+(?:\.\d+)?|-?\.\d+|-?\d+/\d+", t)
    if not m:
        nums = re.findall(r"-?\d+(?:\.\d+)?", t)
        if len(nums) != 1:
            return None
        t = nums[0]
    try:
        if "/" in t:
            a, b = t.split("/")
            return float(a) / float(b)
        return float(t)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(a: float | None, b: float | None, tol: float = 1e-6) -> bool:
    return a is not None and b is not None and abs(a - b) <= tol * max(1.0, abs(b))


YES = {"yes", "true", "y"}
NO = {"no", "false", "n"}


def as_bool(text: str | None) -> bool | None:
    if text is None:
        return None
    t = normalize_answer(text)
    if t in YES:
        return True
    if t in NO:
        return False
    return None


# Official SQuAD v2 evaluation normalisation (lower, drop punctuation, articles, extra spaces).
def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_em(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    pred_toks, gold_toks = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_toks or not gold_toks:  # unanswerable: F1 is 1 when both are empty, else 0
        return float(pred_toks == gold_toks)
    common = collections.Counter(pred_toks) & collections.Counter(gold_toks)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


NO_ANSWER = re.compile(
    r"^(unanswerable|no answer|not answerable|cannot be answered|none|n/?a|not (stated|mentioned|given))$"
)


def squad_prediction(answer: str | None) -> str:
    """A prediction as SQuAD v2 scores it: '' for empty / 'unanswerable'-like phrases."""
    if answer is None:
        return ""
    norm = normalize_answer(answer)
    return "" if not norm or NO_ANSWER.match(norm) else answer


def squad_scores(prediction: str, golds: list[str]) -> tuple[float, float]:
    """(EM, F1), the max over the gold answers; no gold answers means unanswerable ('')."""
    golds = [g for g in golds if normalize_answer(g)] or [""]
    return max(squad_em(prediction, g) for g in golds), max(squad_f1(prediction, g) for g in golds)
