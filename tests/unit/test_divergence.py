"""engine.divergence on tiny random models: a variant identical to the baseline diverges nowhere;
int2 departs, and the first token past the threshold is where KLD first exceeds it."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from engine import divergence as D
from engine.errors import Cancelled
from engine.quant.formats import get_format
from engine.quant.methods import get_method
from engine.quant.pipeline import quantize_model
from engine.runtime import GenSettings, generate, variant_from_model
from tests.helpers import build_model, build_tokenizer

MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def pair():
    model, tok = build_model("llama"), build_tokenizer()
    base = variant_from_model("bf16", copy.deepcopy(model), tok, get_format("bf16"), device="cpu")
    q = copy.deepcopy(model)
    quantize_model(q, get_format("int2-g32"), get_method("rtn"))
    low = variant_from_model("int2-g32", q, tok, get_format("int2-g32"), device="cpu")
    same = variant_from_model("copy", copy.deepcopy(model), tok, get_format("bf16"), device="cpu")
    answer = generate(base, MESSAGES, GenSettings(max_new_tokens=12)).token_ids
    return base, low, same, answer


def test_identical_variant_does_not_diverge(pair):
    base, _, same, answer = pair
    d = D.divergence(base, same, MESSAGES, answer)
    assert len(d.tokens) == len(answer) == 12
    assert d.max_kld < 1e-3 and d.first_over is None and d.top1_agreement == 1.0
    assert all(t.p_variant == pytest.approx(t.p_baseline, abs=1e-3) for t in d.tokens)
    assert "".join(t.text for t in d.tokens) == base.tokenizer.decode(answer, skip_special_tokens=True)


def test_int2_departs_and_first_over_is_the_first_past_the_threshold(pair):
    base, low, _, answer = pair
    everywhere = D.divergence(base, low, MESSAGES, answer)
    assert everywhere.mean_kld > 1e-3  # a random model's distributions are flat: small but not 0
    klds = [t.kld for t in everywhere.tokens]
    threshold = sorted(klds)[len(klds) // 2]  # half the tokens pass it
    d = D.divergence(base, low, MESSAGES, answer, threshold=threshold)
    assert d.first_over == next(i for i, k in enumerate(klds) if k > threshold)
    # the baseline is greedy: its own token is its argmax, so p_baseline is its largest probability
    assert all(0 < t.p_baseline <= 1 and 0 <= t.p_variant <= 1 for t in d.tokens)
    none = D.divergence(base, low, MESSAGES, answer, threshold=1e9)
    assert none.first_over is None and none.tokens == d.tokens


def test_cancel_and_empty_answer(pair):
    base, low, _, answer = pair
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        D.divergence(base, low, MESSAGES, answer, cancel=cancel)
    assert D.divergence(base, low, MESSAGES, []).tokens == ()


def test_kld_matches_a_direct_computation(pair):
    base, low, _, answer = pair
    d = D.divergence(base, low, MESSAGES, answer[:3])
    from engine.runtime import chat_ids

    ids = torch.cat([chat_ids(base.tokenizer, MESSAGES)[0], torch.tensor(answer[:3])])
    with torch.no_grad():
        p = torch.log_softmax(base.model(input_ids=ids[None]).logits[0].float(), -1)
        q = torch.log_softmax(low.model(input_ids=ids[None]).logits[0].float(), -1)
    n = len(ids) - 3
    direct = (p.exp() * (p - q)).sum(-1)[n - 1 : n + 2]
    assert [t.kld for t in d.tokens] == pytest.approx(direct.tolist(), rel=1e-3, abs=1e-4)


def test_cli_chat_divergence(tmp_path, capsys):
    import json

    from engine import sources
    from qtui.cli import main
    from tests.helpers import quantize_saved

    src = tmp_path / "src"
    build_model("llama").save_pretrained(src)
    build_tokenizer().save_pretrained(src)
    folder, _ = quantize_saved(
        sources.load(str(src), eager=False), get_format("int2-g32"), "rtn", tmp_path / "v"
    )
    argv = [
        "chat",
        str(src),
        str(folder),
        "--divergence",
        "-p",
        "hello",
        "--max-tokens",
        "6",
        "--device",
        "cpu",
    ]
    assert main([*argv, "--kld-threshold", "0"]) == 0
    out = capsys.readouterr().out
    assert "per-token KLD on bf16's answer (first over 0 at token 1)" in out
    assert out.count("<- first over 0") == 1 and "top-1 agreement" in out
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "divergence" not in data[0] and len(data[1]["divergence"]["tokens"]) == 6
    with pytest.raises(SystemExit, match="two variants or more"):
        main(["chat", str(src), "--divergence", "-p", "hi"])
