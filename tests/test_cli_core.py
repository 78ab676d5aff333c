"""The core CLI commands: baseline and prune, with JSON output and clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from autoprune.cli import app
from conftest import REPO, tiny_config_dict

runner = CliRunner()


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    f = tmp / "config.yaml"
    f.write_text(yaml.safe_dump(tiny_config_dict(tmp)))
    return f


def test_baseline_then_prune_json(cfg_file, tmp_path):
    r = runner.invoke(app, ["baseline", "-c", str(cfg_file), "--json"])
    assert r.exit_code == 0, r.output
    base = json.loads(r.stdout)
    assert 0 <= base["validation_accuracy"] <= 1 and base["steps"] == 30
    pol = tmp_path / "p.yaml"
    pol.write_text("criterion: l2\nhead_sparsity: [0.5, 0.25]\nffn_sparsity: [0.5, 0.5]\nretrain: {steps: 4}\n")
    r = runner.invoke(app, ["prune", "-c", str(cfg_file), "--policy", str(pol), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    for key in ("accuracy", "dense_accuracy", "accuracy_drop", "speedup", "flops_reduction", "params",
                "dense_params", "latency_ms", "dense_latency_ms"):
        assert key in res, key
    assert res["heads_per_layer"] == [2, 3] and res["params"] < res["dense_params"]
    assert res["accuracy_drop"] == pytest.approx(res["dense_accuracy"] - res["accuracy"])
    assert 0 <= res["accuracy_pruned"] <= 1 and res["eval_split"] == "validation"
    r = runner.invoke(app, ["prune", "-c", str(cfg_file), "--policy", str(pol)])
    assert r.exit_code == 0 and "speedup" in r.stdout and "FLOPs reduction" in r.stdout
    assert "accuracy right after pruning (validation)" in r.stdout


def test_prune_reports_the_split_asked_for_and_saves(cfg_file, tmp_path):
    from autoprune.models import get_adapter
    from autoprune.serialization import load_pruned

    pol = tmp_path / "p.yaml"
    pol.write_text("criterion: l1\nhead_sparsity: [0.5, 1.0]\nffn_sparsity: [0.5, 0.5]\nretrain: {steps: 0}\n")
    r = runner.invoke(app, ["prune", "-c", str(cfg_file), "--policy", str(pol), "--split", "test", "--json",
                            "--save", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    # no retraining: the final accuracy is the accuracy right after pruning, on the test split
    assert res["eval_split"] == "test" and res["accuracy_pruned"] == res["accuracy"] and res["retrain_steps"] == 0
    assert res["prune_record"]["dropped_layers"] == [1] and res["heads_per_layer"] == [2]
    model = load_pruned(tmp_path / "m")
    assert get_adapter(model).shape(model) == ([2], [32])
    r = runner.invoke(app, ["prune", "-c", str(cfg_file), "--policy", str(pol), "--split", "train"])
    assert r.exit_code == 2 and "--split train: choose one of validation, test" in r.output


@pytest.mark.parametrize("policy_text, fragment", [
    ("criterion: magnitude\nhead_sparsity: [0.5, 0.5]\n", "criterion"),
    ("criterion: l1\nhead_sparsity: [0.5, 1.5]\n", "outside [0, 1]"),
    ("criterion: l1\nhead_sparsity: [0.5, 0.5, 0.5]\n", "has 3 entries but the model has 2"),
    ("criterion: l1\nhead_sparsity: [0.5\n", "malformed YAML"),
])
def test_bad_policy_exits_2_with_one_line(cfg_file, tmp_path, policy_text, fragment):
    pol = tmp_path / "bad.yaml"
    pol.write_text(policy_text)
    r = runner.invoke(app, ["prune", "-c", str(cfg_file), "--policy", str(pol)])
    assert r.exit_code == 2
    assert fragment in r.output and "Traceback" not in r.output


def test_console_script_error_has_no_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name_or_path: /nonexistent/model}\ndata: {files: {train: a.tsv, validation: b.tsv}}\n")
    proc = subprocess.run([sys.executable, "-m", "autoprune", "baseline", "-c", str(cfg)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
    assert "/nonexistent/model" in proc.stderr


def test_status_table_marks_the_trials_that_do_not_count():
    from rich.console import Console

    from autoprune.cli import _status_table

    base = {"policy_summary": "l1", "accuracy": None, "speedup": None, "on_front": False, "reason": None}
    rows = [{**base, "number": 0, "state": "FAIL", "counted": False, "reason": "driver stopped while the trial ran"},
            {**base, "number": 1, "state": "FAIL", "counted": True, "reason": "boom"},
            {**base, "number": 2, "state": "RUNNING", "counted": False},
            {**base, "number": 3, "state": "COMPLETE", "counted": True, "accuracy": 0.9, "speedup": 1.5}]
    console = Console(width=200, record=True)
    console.print(_status_table(rows))
    lines = {ln.split("│")[1].strip(): ln for ln in console.export_text().splitlines() if ln.count("│") > 2}
    assert "FAIL (not counted)" in lines["0"]
    assert "FAIL" in lines["1"] and "not counted" not in lines["1"]
    assert "RUNNING" in lines["2"] and "not counted" not in lines["2"]  # still in flight: not a verdict yet
    assert "COMPLETE" in lines["3"] and "1.50x" in lines["3"]


def test_baseline_of_a_finetuned_model_is_not_trained(tmp_path):
    from conftest import make_tiny_model

    raw = tiny_config_dict(tmp_path)
    raw["model"] = {"name_or_path": str(make_tiny_model(tmp_path / "byo", "bert", seed=5)), "finetuned": True}
    f = tmp_path / "byo.yaml"
    f.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["baseline", "-c", str(f), "--json"])
    assert r.exit_code == 0, r.output
    base = json.loads(r.stdout)
    assert base["steps"] == 0 and base["finetuned"] is True and base["final_loss"] is None


def test_error_guard_turns_path_errors_into_one_line_and_keeps_bugs():
    """An OSError about a named path is the user's (one line, exit 2); anything else is a bug and keeps
    its traceback."""
    import typer

    from autoprune.cli import handle_errors

    sub = typer.Typer()

    @sub.command()
    @handle_errors
    def touch(path: str, bug: bool = False) -> None:
        if bug:
            raise OSError("no filename: a bug")
        open(path, "w").close()

    res = runner.invoke(sub, ["/proc/autoprune-no-such/x"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert [ln for ln in res.output.splitlines() if ln.startswith("error:")] == [
        "error: /proc/autoprune-no-such/x: No such file or directory; check the path and that you may write there"]
    res = runner.invoke(sub, ["x", "--bug"])
    assert isinstance(res.exception, OSError) and res.exit_code == 1
