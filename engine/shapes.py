"""Real models' shapes, for benchmarks on random weights (speed and memory only; output is noise).

Sizes from each model's ``config.json`` (Qwen/Qwen3-0.6B, -1.7B, -4B, -8B); ``tiny`` is a small
shape that runs the same code paths in seconds (tests, CPU dry runs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import Qwen3Config


@dataclass(frozen=True)
class Qwen3Shape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool

    def config(self, **overrides: object) -> Qwen3Config:
        """A ``transformers.Qwen3Config`` of this shape; ``overrides`` win (e.g. fewer layers)."""
        from transformers import Qwen3Config

        return Qwen3Config(**{**asdict(self), **overrides})


SHAPES: dict[str, Qwen3Shape] = {
    # name                  hidden  inter  layers heads kv  head  vocab   tied
    "qwen3-0.6b": Qwen3Shape(1024, 3072, 28, 16, 8, 128, 151936, True),
    "qwen3-1.7b": Qwen3Shape(2048, 6144, 28, 16, 8, 128, 151936, True),
    "qwen3-4b": Qwen3Shape(2560, 9728, 36, 32, 8, 128, 151936, True),
    "qwen3-8b": Qwen3Shape(4096, 12288, 36, 32, 8, 128, 151936, False),
    "tiny": Qwen3Shape(256, 512, 2, 4, 2, 64, 49152, True),
}
