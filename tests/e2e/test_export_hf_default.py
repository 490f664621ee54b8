"""Issue 11 on the real default model: a GPTQ int4 variant exported to compressed-tensors and loaded by
transformers' own from_pretrained picks the same greedy tokens as qtui's torch column of the same
variant on 5 fixed prompts, except where qtui's own two best logits tie within bf16's resolution.

Why "except at ties": both engines compute in bf16, where a logit near 20 moves in steps of 0.125.
Along one answer, transformers' logits differ from qtui's by up to ~1.1 (different kernels, different
summation order: tinygemm's int4 kernel vs a de-quantized bf16 matmul) and qtui disagrees with itself
the same way (a whole-sequence forward vs its token-by-token decode picks another token at some
positions). Measured on 2026-12-07: every position where the engines' top-1 differed had qtui's top
two within 0.25 (most 0.0-0.125); a wrong mapping of codes, zeros or scales moves logits by whole
units and breaks the agreement everywhere. So the test teacher-forces both models along qtui's greedy
answer and requires the same top-1 wherever qtui's top-2 gap exceeds TIE, and >= 90% agreement.
"""

from __future__ import annotations

import json

import pytest
import torch

from engine import columns, hf_export, runtime

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # GPTQ on the CPU (the session's shared int4-g64 variant)
]

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the ocean.",
    "What is 12 plus 7?",
    "Give a synonym for happy.",
]
TOKENS = 48
TIE = 0.5  # logits: 4 bf16 steps at magnitude 16-32 (the largest gap seen at a disagreement: 0.25)


def test_gptq_int4_export_answers_like_the_torch_column(int4_g64_saved, real_cache, tmp_path):
    pytest.importorskip("compressed_tensors", reason="compressed-tensors is in the dev extras")
    from transformers import AutoModelForCausalLM

    folder = int4_g64_saved["gptq"]
    out = tmp_path / "ct"
    result = hf_export.export_compressed_tensors(folder, out)
    assert len(result.checks) == 210 and result.max_abs_dw == 0.0
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["quantization_config"]["ignore"] == ["lm_head"]

    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.dtype == torch.bfloat16
    column = runtime.load_variant(folder, device="cpu")  # what qtui's torch column runs
    settings = runtime.GenSettings(max_new_tokens=TOKENS)
    positions = agree = 0
    report = []
    for prompt in PROMPTS:
        ours = columns.generate(column, prompt, settings).token_ids
        ids = runtime.chat_ids(column.tokenizer, prompt)
        full = torch.cat([ids, torch.tensor([ours])], dim=1)
        with torch.no_grad():  # the logits that chose each token of qtui's answer, in both engines
            mine = column.model(full).logits[0, ids.shape[1] - 1 : -1].float()
            theirs = hf(full).logits[0, ids.shape[1] - 1 : -1].float()
        top2 = mine.topk(2).values
        gap = top2[:, 0] - top2[:, 1]
        same = theirs.argmax(-1) == torch.tensor(ours)
        positions, agree = positions + len(ours), agree + int(same.sum())
        for i in (~same).nonzero().flatten().tolist():
            report.append((prompt, i, float(gap[i]), column.tokenizer.decode(ours[: i + 1])))
    decided = [r for r in report if r[2] > TIE]
    assert not decided, "\n".join(
        f"{p!r}: token {i} differs where qtui's top two were {g:.3f} apart: {text!r}"
        for p, i, g, text in decided
    )
    assert agree / positions >= 0.9, (agree, positions, report)
