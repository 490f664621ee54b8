"""Decode speed of every format vs bf16 (see engine/benchmark.py; same as ``qtui bench``).

python bench/decode.py [--model default|shape:qwen3-0.6b] [--tokens 128] [--threads 2]
                       [--repeats 3] [--formats ...] [--json OUT] [--llama-cpp]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from engine.benchmark import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
