"""engine.inspection on tiny random models: the per-Linear table, one Linear up close, the cache,
cancelling, a variant whose source is gone, and the heatmap SVG."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch

from engine import inspection, sources
from engine.errors import Cancelled, StoreError
from engine.heatmap import heatmap_svg
from engine.quant import calibration as C
from engine.quant.formats import get_format
from tests.helpers import build_model, build_tokenizer, quantize_saved

SMALL = C.CalibrationSpec(samples=4, seq_len=32)


@pytest.fixture
def source(tmp_path):
    """A tiny llama saved as a safetensors folder (a real source: inspect reads its weights)."""
    folder = tmp_path / "src"
    model = build_model("llama")
    with torch.no_grad():  # an outlier weight in one row of block 0's q_proj: its group clips under HQQ
        model.model.layers[0].self_attn.q_proj.weight[3, 5] = 2.0
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return sources.load(str(folder), eager=False)


def test_table_from_variant_and_source(source, tmp_path):
    folder, report = quantize_saved(source, get_format("int4-g32"), "gptq", tmp_path / "v", calibration=SMALL)
    calls = []
    table = inspection.inspect_variant(folder, progress=lambda d, t, s: calls.append((d, t, s)))
    assert table.has_source and table.blocks == 2
    assert table.kinds == inspection.KIND_ORDER
    assert len(table.linears) == 14 and calls[-1][:2] == (14, 14)
    recorded = {r.name: r for r in report.layers}
    for stat in table.linears:
        r = recorded[stat.name]
        assert stat.rel_error == pytest.approx(r.weight_rel_error, rel=1e-4)
        assert stat.out_rel_error == pytest.approx(r.out_rel_error, rel=1e-4)
        assert stat.clipped is not None and 0 <= stat.clipped <= 100
        assert 0 <= stat.collapsed <= 100
    cell = table.cell(1, "down")
    assert cell is not None and cell.name == "model.layers.1.mlp.down_proj"
    worst = table.worst("output", 3)
    assert [s.out_rel_error for s in worst] == sorted((s.out_rel_error for s in table.linears), reverse=True)[
        :3
    ]
    best_sqnr = table.worst("sqnr", 1)[0]  # lower SQNR is worse
    assert best_sqnr.sqnr_db == min(s.sqnr_db for s in table.linears)
    assert not table.notes


def test_linear_view_groups_levels_and_activations(source, tmp_path):
    folder, _ = quantize_saved(source, get_format("int4-g32"), "gptq", tmp_path / "v", calibration=SMALL)
    view = inspection.inspect_linear(folder, "model.layers.0.self_attn.q_proj")
    assert view.group_size == 32 and view.fmt == "int4-g32"
    assert len(view.bins) == len(view.counts_dequant) + 1 == inspection.HIST_BINS + 1
    assert sum(view.counts_source) == sum(view.counts_dequant) == 96 * 96
    assert sum(view.code_counts) == 96 * 96 and len(view.code_counts) == 16
    assert view.worst.rms_error >= view.typical.rms_error and view.worst.error is not None
    assert len(view.typical.levels) <= 16 and len(view.typical.weights) == 32
    # the worst group is the one with the planted outlier: row 3, group 0
    assert (view.worst.row, view.worst.group) == (3, 0) and 2.0 in view.worst.weights
    assert view.act_top is not None and len(view.act_top) == 10
    maxes = [mx for _, mx, _ in view.act_top]
    assert maxes == sorted(maxes, reverse=True)
    assert not view.notes


def test_rtn_without_calibration_says_what_is_missing(source, tmp_path):
    folder, _ = quantize_saved(source, get_format("int4-g32"), "rtn", tmp_path / "v")
    table = inspection.inspect_variant(folder)
    assert all(s.out_rel_error is None for s in table.linears)
    assert any("output error: not recorded" in n for n in table.notes)
    # RTN's min/max grid covers every weight of its group: nothing is clipped
    assert all(s.clipped == 0.0 for s in table.linears)
    view = inspection.inspect_linear(folder, "model.layers.1.mlp.up_proj")
    assert view.act_top is None and any("activation channels: not recorded" in n for n in view.notes)


def test_without_the_source(source, tmp_path):
    folder, _ = quantize_saved(source, get_format("int2-g32"), "rtn", tmp_path / "v")
    with_source = inspection.inspect_variant(folder)
    shutil.rmtree(source.folder)
    table = inspection.inspect_variant(folder)
    assert not table.has_source and table.key == with_source.key
    assert any("without the source" in n for n in table.notes)
    assert all(s.clipped is None for s in table.linears)
    assert [s.rel_error for s in table.linears] == [s.rel_error for s in with_source.linears]  # recorded
    view = inspection.inspect_linear(folder, "model.layers.0.mlp.gate_proj")
    assert view.counts_source is None and sum(view.counts_dequant) == 160 * 96
    assert view.worst.label.startswith("widest") and view.worst.error is None
    assert view.worst.scale >= view.typical.scale
    assert any("without the source" in n for n in view.notes)


def test_cache_is_used_and_keyed_by_variant(source, tmp_path, monkeypatch):
    folder, _ = quantize_saved(source, get_format("int4-g32"), "rtn", tmp_path / "v")
    first = inspection.inspect_variant(folder)
    monkeypatch.setattr(inspection, "_groups", lambda *a: pytest.fail("recomputed despite the cache"))
    assert inspection.inspect_variant(folder) == first
    monkeypatch.undo()
    other, _ = quantize_saved(source, get_format("int4-g32"), "rtn", tmp_path / "w", params={})
    assert inspection.variant_key(other) != first.key  # another folder (its tables name it): another entry
    again = inspection.inspect_linear(folder, "model.layers.0.self_attn.o_proj")
    monkeypatch.setattr(inspection, "_groups", lambda *a: pytest.fail("recomputed despite the cache"))
    assert inspection.inspect_linear(folder, "model.layers.0.self_attn.o_proj") == again


def test_cancel_and_bad_names(source, tmp_path):
    folder, _ = quantize_saved(source, get_format("int4-g32"), "rtn", tmp_path / "v")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        inspection.inspect_variant(folder, cancel=cancel)
    with pytest.raises(StoreError, match="no quantized Linear 'model.layers.9.x'"):
        inspection.inspect_linear(folder, "model.layers.9.x")
    with pytest.raises(StoreError, match="no such variant"):
        inspection.find_variant("nothing-like-this")
    assert inspection.find_variant(str(folder)) == folder


def test_block_and_kind():
    assert inspection.block_and_kind("model.layers.12.self_attn.q_proj") == (12, "q")
    assert inspection.block_and_kind("model.layers.0.mlp.gate_up_proj") == (0, "gate_up")
    assert inspection.block_and_kind("lm_head") == (-1, "lm_head")


def test_heatmap_svg(source, tmp_path):
    folder, _ = quantize_saved(source, get_format("int4-g32"), "gptq", tmp_path / "v", calibration=SMALL)
    table = inspection.inspect_variant(folder)
    svg = heatmap_svg(table, "output")
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert svg.count('class="cell"') == 14  # 2 blocks x 7 kinds
    assert "output error" in svg and "down" in svg


def test_report_draws_a_heatmap_per_saved_variant(source, tmp_path):
    from engine import report

    folder, _ = quantize_saved(source, get_format("int4-g32"), "rtn", tmp_path / "v")
    infos = [report.ReportedVariant("bf16", "k0"), report.ReportedVariant("v", "k1", folder=str(folder))]
    md, _ = report.write_report(tmp_path / "out", infos, {}, "bf16")
    svg = (tmp_path / "out" / "charts" / "heatmap-v.svg").read_text()
    assert "weight error" in svg and svg.count('class="cell"') == 14  # RTN recorded no output error
    assert "charts/heatmap-v.svg" in md.read_text()


def test_cli_inspect_tables_layer_vs_and_json(source, tmp_path, capsys):
    import json

    from qtui.cli import main

    gptq, _ = quantize_saved(source, get_format("int4-g32"), "gptq", tmp_path / "g", calibration=SMALL)
    rtn, _ = quantize_saved(source, get_format("int4-g32"), "rtn", tmp_path / "r", calibration=SMALL)
    assert main(["inspect", str(gptq)]) == 0
    out = capsys.readouterr().out
    assert "output error" in out and "block" in out and "worst 10 by" in out
    assert out.count("model.layers.") >= 10
    assert main(["inspect", str(rtn), "--layer", "0.q", "--vs", str(gptq)]) == 0
    out = capsys.readouterr().out
    assert "model.layers.0.self_attn.q_proj" in out and "typical (median error)" in out
    assert "largest input channels" in out and "| " in out  # two views side by side
    assert main(["inspect", str(gptq), "--layer", "1.down", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["variants"][0]["method"] == "gptq" and data["linears"][0]["name"].endswith("1.mlp.down_proj")
    assert main(["inspect", str(gptq), "--layer", "7.q"]) == 1
    assert "no quantized Linear '7.q'" in capsys.readouterr().err
