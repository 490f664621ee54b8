"""Evaluation tasks: one registered frozen :class:`Task` per dataset.

A task knows how to turn a record (in its Hugging Face schema) into an :class:`Item`, how to
pose it for log-likelihood multiple choice (lm-evaluation-harness prompts) and for generation
(chat prompt asking for ``\\boxed{}``), and how to score a generated answer. Adding a dataset is
one ``register(Task(...))``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.evals import extract as ex
from engine.evals.data import ASSETS, SHARED_SAMPLES, DataError, file_hash, hub_file, read_records

if TYPE_CHECKING:
    from engine.specs import EvalMode

PROMPT_VERSION = "1"  # bump when prompts or scoring change: cached results are then not reused
LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class Item:
    id: str
    question: str
    choices: tuple[str, ...] = ()
    gold: int = -1  # index of the correct choice (choice / yes-no tasks)
    answers: tuple[str, ...] = ()  # gold strings (numeric / extractive); () = unanswerable
    passage: str = ""


@dataclass(frozen=True)
class Score:
    correct: bool
    source: str  # extraction source: boxed | fallback | none
    answer: str | None
    correct_strict: bool  # correct and taken from \boxed{} (no fallback)
    em: float | None = None
    f1: float | None = None
    abs_diff: float | None = None


Scorer = Callable[[Item, str], Score]
Record = dict[str, Any]  # one dataset example, in its Hugging Face schema


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    parse: Callable[[Record, int], Item]
    scorer: Scorer
    gen_prompt: Callable[[Item], str]
    loglik: Callable[[Item], tuple[str, list[str]]] | None = None  # (context, continuations)
    local: str | None = None  # built-in asset ("assets:NAME") or shared sample file name
    hub: tuple[str, str] | None = None  # (dataset repo id, file in it)
    chance: float | None = None  # accuracy of a random guess (choice tasks)
    metrics: tuple[str, ...] = field(default=("accuracy",))

    @property
    def modes(self) -> tuple[EvalMode, ...]:
        loglik: tuple[EvalMode, ...] = ("loglik",) if self.loglik else ()
        return loglik + ("generate",)

    def data_path(self, path: Path | str | None = None) -> Path:
        if path is not None:
            return Path(path).expanduser()
        if self.local and self.local.startswith("assets:"):
            return ASSETS / self.local.removeprefix("assets:")
        if self.local:
            root = Path(os.environ.get("QTUI_DATASETS", SHARED_SAMPLES))
            if (root / self.local).exists():
                return root / self.local
        if self.hub:
            return hub_file(*self.hub)
        raise DataError(
            f"task {self.name}: no local copy of the dataset; pass --data PATH (JSONL/JSON/parquet)"
        )

    def load(self, path: Path | str | None = None, limit: int | None = None) -> tuple[list[Item], str]:
        """The first ``limit`` items and the task's content hash (data file + prompts + scorer)."""
        file = self.data_path(path)
        records = read_records(file, prefer=self.local)
        try:
            items = [self.parse(r, i) for i, r in enumerate(records)]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(
                f"{file}: records do not have the {self.title} schema ({type(exc).__name__}: {exc})"
            ) from exc
        if not items:
            raise DataError(f"{file}: no records")
        data_hash = file_hash(file if file.is_file() else _first_file(file, self.local))
        digest = hashlib.sha256(f"{self.name}|{PROMPT_VERSION}|{data_hash}".encode()).hexdigest()
        return items[:limit] if limit else items, digest


def _first_file(folder: Path, prefer: str | None) -> Path:
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".jsonl", ".json", ".parquet"))
    files = sorted(
        files, key=lambda p: (prefer is not None and prefer not in p.name, "test" not in p.name, p.name)
    )
    return files[0]


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    key = name.lower().replace("-", "_")
    if key not in TASKS:
        raise DataError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[key]


# ------------------------------------------------------------------------------ scorers
def score_choice(item: Item, text: str) -> Score:
    letters = LETTERS[: len(item.choices)]
    got = ex.extract(text, ex.choice_letter(letters))
    correct = False
    if got.answer is not None:
        a = got.answer.strip()
        letter = a[:1].upper() if len(a) == 1 or (len(a) > 1 and a[1] in ".):") else None
        gold_text = ex.normalize_answer(item.choices[item.gold])
        correct = letter == letters[item.gold] or (bool(gold_text) and ex.normalize_answer(a) == gold_text)
    return Score(correct, got.source, got.answer, correct and got.boxed)


def score_yesno(item: Item, text: str) -> Score:
    got = ex.extract(text, ex.yes_no)
    value = ex.as_bool(got.answer)
    correct = value is not None and value == bool(item.gold)
    return Score(correct, got.source, got.answer, correct and got.boxed)


def score_numeric(item: Item, text: str) -> Score:
    got = ex.extract(text, ex.last_number)
    gold = item.answers[0]
    pred, ref = ex.parse_number(got.answer), ex.parse_number(gold)
    if ref is None:  # a symbolic answer (OpenMath): normalised string match
        correct = got.answer is not None and ex.normalize_answer(got.answer) == ex.normalize_answer(gold)
        diff = None
    else:
        correct = ex.numbers_equal(pred, ref)
        diff = abs(pred - ref) if pred is not None else None
    return Score(correct, got.source, got.answer, correct and got.boxed, abs_diff=diff)


def score_extractive(item: Item, text: str) -> Score:
    got = ex.extract(text, ex.first_line)
    pred = ex.squad_prediction(got.answer)
    em, f1 = ex.squad_scores(pred, list(item.answers))
    return Score(em == 1.0, got.source, got.answer, em == 1.0 and got.boxed, em=em, f1=f1)


# ------------------------------------------------------------------------------ prompts
BOX = "Put the final answer in \\boxed{}"


def mc_prompt(item: Item) -> str:
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
    return (
        f"{item.question}\n\n{options}\n\nAnswer with the letter of the correct option. "
        f"{BOX}, for example \\boxed{{A}}."
    )


def yesno_prompt(item: Item) -> str:
    return (
        f"{item.passage}\n\nQuestion: {item.question.rstrip('?')}?\n\n"
        f"Answer yes or no. {BOX}, for example \\boxed{{yes}}."
    )


def numeric_prompt(item: Item) -> str:
    return f"{item.question}\n\nSolve the problem step by step. {BOX} as a number."


def extractive_prompt(item: Item) -> str:
    return (
        f"Passage: {item.passage}\n\nQuestion: {item.question}\n\n"
        "Answer with a short span copied from the passage; if the passage does not answer the "
        f"question, answer unanswerable. {BOX}."
    )


def arc_loglik(item: Item) -> tuple[str, list[str]]:
    return f"Question: {item.question}\nAnswer:", [f" {c}" for c in item.choices]


def boolq_loglik(item: Item) -> tuple[str, list[str]]:
    return f"{item.passage}\nQuestion: {item.question.rstrip('?')}?\nAnswer:", [" no", " yes"]


# ------------------------------------------------------------------------------ parsers
def parse_arc(r: Record, i: int) -> Item:
    labels = [str(x) for x in r["choices"]["label"]]
    return Item(
        str(r.get("id", i)), r["question"], tuple(r["choices"]["text"]), labels.index(str(r["answerKey"]))
    )


def parse_boolq(r: Record, i: int) -> Item:
    return Item(
        str(r.get("id", i)), r["question"], ("no", "yes"), int(bool(r["answer"])), passage=r["passage"]
    )


def parse_piqa(r: Record, i: int) -> Item:
    return Item(str(r.get("id", i)), r["goal"], (r["sol1"], r["sol2"]), int(r["label"]))


def parse_gsm8k(r: Record, i: int) -> Item:
    answer = str(r["answer"]).split("####")[-1].strip().replace(",", "")
    return Item(str(r.get("id", i)), r["question"], answers=(answer,))


def parse_openmath(r: Record, i: int) -> Item:
    return Item(str(r.get("id", i)), r["problem"], answers=(str(r["expected_answer"]),))


def parse_squad(r: Record, i: int) -> Item:
    answers = r["answers"]["text"] if isinstance(r["answers"], dict) else r["answers"]
    return Item(str(r.get("id", i)), r["question"], answers=tuple(answers), passage=r["context"])


def parse_choice_list(r: Record, i: int) -> Item:  # built-in knowledge suite
    return Item(str(r.get("id", i)), r["question"], tuple(r["choices"]), int(r["answer"]))


def parse_plain_numeric(r: Record, i: int) -> Item:  # built-in arithmetic suite
    return Item(str(r.get("id", i)), r["question"], answers=(str(r["answer"]),))


for _name, _title, _file, _hub in (
    (
        "arc_easy",
        "ARC-Easy",
        "arc_easy_test_200.jsonl",
        ("allenai/ai2_arc", "ARC-Easy/test-00000-of-00001.parquet"),
    ),
    (
        "arc_challenge",
        "ARC-Challenge",
        "arc_challenge_test_200.jsonl",
        ("allenai/ai2_arc", "ARC-Challenge/test-00000-of-00001.parquet"),
    ),
):
    register(Task(_name, _title, parse_arc, score_choice, mc_prompt, arc_loglik, _file, _hub, 0.25))

register(
    Task(
        "boolq", "BoolQ", parse_boolq, score_yesno, yesno_prompt, boolq_loglik, "boolq_dev_200.jsonl",
        ("google/boolq", "data/validation-00000-of-00001.parquet"), 0.5,
    )
)  # fmt: skip
register(
    Task("piqa", "PIQA", parse_piqa, score_choice, mc_prompt, arc_loglik, "piqa_dev_200.jsonl", None, 0.5)
)
register(
    Task(
        "gsm8k", "GSM8K", parse_gsm8k, score_numeric, numeric_prompt, None, "gsm8k_test_200.jsonl",
        ("openai/gsm8k", "main/test-00000-of-00001.parquet"), metrics=("accuracy", "abs_diff"),
    )
)  # fmt: skip
register(
    Task(
        "openmath", "OpenMathInstruct-2", parse_openmath, score_numeric, numeric_prompt, None, None,
        None, metrics=("accuracy", "abs_diff"),
    )
)  # fmt: skip
register(
    Task(
        "squad_v2", "SQuAD v2", parse_squad, score_extractive, extractive_prompt, None,
        "squad_v2_dev_200.jsonl", ("rajpurkar/squad_v2", "squad_v2/validation-00000-of-00001.parquet"),
        metrics=("em", "f1"),
    )
)  # fmt: skip
# built-in suites written for qtui (assets/evals), available offline on a fresh machine
register(
    Task(
        "arithmetic", "built-in arithmetic", parse_plain_numeric, score_numeric, numeric_prompt, None,
        "assets:arithmetic.jsonl", metrics=("accuracy", "abs_diff"),
    )
)  # fmt: skip
register(
    Task(
        "knowledge", "built-in general knowledge", parse_choice_list, score_choice, mc_prompt, arc_loglik,
        "assets:knowledge.jsonl", chance=0.25,
    )
)  # fmt: skip
register(
    Task("yesno", "built-in yes/no over a passage", parse_boolq, score_yesno, yesno_prompt, boolq_loglik,
         "assets:yesno.jsonl", chance=0.5)
)  # fmt: skip
register(
    Task(
        "passage_qa", "built-in extractive QA", parse_squad, score_extractive, extractive_prompt, None,
        "assets:passage_qa.jsonl", metrics=("em", "f1"),
    )
)  # fmt: skip
