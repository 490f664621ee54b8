"""`qtui eval` and `qtui report` on a saved tiny variant (no real model, no network)."""

from __future__ import annotations

import json

from engine.quant.formats import get_format
from qtui import cli
from tests.helpers import quantize_saved


def test_eval_and_report_on_a_saved_variant(loaded_source, tmp_path, capsys):
    folder, _ = quantize_saved(loaded_source("llama"), get_format("int8"), out=tmp_path / "v8")
    out = tmp_path / "r.json"
    code = cli.main(["eval", str(folder), "--task", "knowledge,yesno", "--limit", "4", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "int8-rtn" in table and "knowledge" in table and "yesno" in table and "n=4" in table
    rows = json.loads(out.read_text())
    assert [r["task"] for r in rows] == ["knowledge", "yesno"] and all(r["n"] == 4 for r in rows)

    assert cli.main(["eval", str(folder), "--task", "knowledge", "--limit", "4"]) == 0
    assert "(cached)" in capsys.readouterr().out

    code = cli.main(["report", str(folder), "--out", str(tmp_path / "rep")])
    assert code == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "int8-rtn" in md and "knowledge" in md and "n=4" in md and "What is the capital of France?" in md
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["variants"][0]["format"] == "int8" and data["variants"][0]["worst_layers"]


def test_eval_mode_without_support_is_a_clear_error(loaded_source, tmp_path, capsys):
    folder, _ = quantize_saved(loaded_source("llama"), get_format("int8"), out=tmp_path / "v8")
    assert cli.main(["eval", str(folder), "--task", "gsm8k", "--mode", "loglik"]) == 1
    assert "has no loglik mode" in capsys.readouterr().err
