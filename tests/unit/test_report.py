"""The comparison report: intervals, significance, n/a retention, compliance, fidelity, answers."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from engine import report
from engine.evals.results import TaskResult


def _r(variant, task, mode, n, k, **metrics):
    return TaskResult(variant, f"h-{variant}", task, "t", mode, {"limit": n}, n, k, metrics)


def test_report_tables(tmp_path):
    gen = dict(correct_strict=0, boxed=1, fallback=20, no_answer=79, looped=60, hit_limit=30, empty=5,
               degenerate=90, tokens_mean=250.0, tokens_per_s=31.5)  # fmt: skip
    fid = dict(kld_mean=1.234, kld_p99=9.5, top1_agreement=0.41, ppl=80.0, ppl_ref=20.0, ppl_ratio=4.0)
    results = {
        "bf16": [_r("bf16", "arc_easy", "loglik", 200, 110, correct_norm=100, chance=0.25),
                 _r("bf16", "gsm8k", "generate", 100, 0, **gen | {"degenerate": 10})],
        "int2-g64-rtn": [_r("int2-g64-rtn", "arc_easy", "loglik", 200, 52, correct_norm=50, chance=0.25),
                         _r("int2-g64-rtn", "gsm8k", "generate", 100, 2, **gen),
                         _r("int2-g64-rtn", "wikitext", "fidelity", 4096, 1679, **fid)],
    }  # fmt: skip
    infos = [
        report.ReportedVariant("bf16", "a", "bf16", "-", weight_bytes=269_000_000, bits_per_weight=16.0,
                           decode_tps=40.0, ttft_s=0.05, answers=["Paris.", "42", "Waves."], flags=[[], [], []]),
        report.ReportedVariant("int2-g64-rtn", "b", "int2-g64", "rtn", params={"clip": 1.0}, bytes_on_disk=60_000_000,
                           weight_bytes=58_000_000, bits_per_weight=2.5, decode_tps=10.0, ttft_s=0.5,
                           answers=["the the the", "", "x|y"], flags=[["loop"], ["empty"], []],
                           worst_layers=[{"name": "model.layers.0.mlp.down_proj", "rel_error": 0.61, "sqnr_db": 4.2}]),
    ]  # fmt: skip
    md_path, json_path = report.write_report(tmp_path, infos, results, baseline="bf16")
    md = md_path.read_text()
    assert "55.0% [48.1-61.7] n=200" in md  # bf16 ARC with its Wilson interval
    assert "-29.0 pts (significant)" in md  # 26% vs 55%, intervals apart
    assert "+2.0 pts (not significant)" in md  # 2/100 vs 0/100
    assert "n/a (2.0% / 0.0%)" in md  # retention over a zero baseline
    assert "47% (26.0% / 55.0%)" in md
    assert "1.0% [0.2-5.4] n=100" in md  # format compliance, boxed 1/100
    assert "90/100 (loop 60, limit 30, empty 5)" in md
    assert "| 1.2340 | 9.500 | 41.0% | 80.00 | 20.00 | 4.000 |" in md
    assert "4.00x slower (f16 0.025s / variant 0.1s)" in md  # decode time per token, both shown
    assert "model.layers.0.mlp.down_proj" in md and "clip=1.0" in md
    assert "the the the [loop]" in md and "(empty) [empty]" in md and "x\\|y" in md
    assert "Machine:" in md and "arc_easy/loglik: n=200" in md
    data = json.loads(json_path.read_text())
    assert data["baseline"] == "bf16" and data["results"]["int2-g64-rtn"][0]["accuracy"]["k"] == 52
    # chart images: one per (task, mode) with whiskers, KLD, speed, weights; valid SVG, linked from the Markdown
    assert sorted(data["charts"]) == sorted(["charts/accuracy-arc_easy-loglik.svg", "charts/accuracy-gsm8k-generate.svg",
                                             "charts/kld.svg", "charts/decode-speed.svg", "charts/weights.svg"])  # fmt: skip
    for rel in data["charts"]:
        assert f"]({rel})" in md
        ET.fromstring((tmp_path / rel).read_text())  # well-formed XML
    arc = (tmp_path / "charts/accuracy-arc_easy-loglik.svg").read_text()
    assert "55.0%" in arc and "26.0%" in arc and "chance" in arc and arc.count('stroke="black"/>') >= 2 * 3


def test_bar_chart_scales_and_escapes():
    from engine.charts import Bar, bar_chart

    svg = bar_chart(
        "a < b", [Bar("x&y", 0.0), Bar("z", 7.5, 5.0, 9.0)], unit="%", reference=2.0, reference_label="ref"
    )
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and "a &lt; b" in svg and "x&amp;y" in svg
    heights = [float(r.get("height")) for r in root.iter("{http://www.w3.org/2000/svg}rect")][1:]
    assert heights[0] == 0.0 and heights[1] > 0  # a zero bar has no height; the axis tops out at 10


def test_report_without_results_says_so(tmp_path):
    md_path, _ = report.write_report(tmp_path, [report.ReportedVariant("bf16", "a")], {}, "bf16")
    assert "no evaluation results yet" in md_path.read_text()
