"""Generate the built-in arithmetic suite (assets/evals/arithmetic.jsonl) from a fixed seed.

python -m engine.evals.make_arithmetic   # rewrites the file; the same seed gives the same items
"""

from __future__ import annotations

import json
import random

from engine.evals.data import ASSETS

SEED = 20240611
COUNT = 80


def _item(rng: random.Random, i: int) -> dict[str, str]:
    kind = i % 8
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 12)
    if kind == 0:
        q, ans = f"What is {a} + {b}?", a + b
    elif kind == 1:
        a, b = max(a, b), min(a, b)
        q, ans = f"What is {a} - {b}?", a - b
    elif kind == 2:
        q, ans = f"What is {a} * {c}?", a * c
    elif kind == 3:
        q, ans = f"What is {a * c} / {c}?", a
    elif kind == 4:
        q, ans = f"What is ({a} + {b}) * {c}?", (a + b) * c
    elif kind == 5:
        q, ans = f"What is {a} * {c} - {b}?", a * c - b
    elif kind == 6:
        q, ans = f"A box holds {c} apples. How many apples are in {a} boxes?", a * c
    else:
        q, ans = f"Tom has {a + b} marbles and gives away {b}. How many marbles does he have left?", a
    return {"id": f"arith-{i:03d}", "question": q, "answer": str(ans)}


def build(seed: int = SEED, count: int = COUNT) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [_item(rng, i) for i in range(count)]


def main() -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in build()]
    (ASSETS / "arithmetic.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
