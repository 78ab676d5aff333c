#!/usr/bin/env python
"""Bad input through the real command line: every case must end as one ``error:`` line, exit status 2,
no traceback, and leave every study database byte-for-byte as it was (no new one either).

The cases (``CASES``) are what a user types wrong: ports out of range, output paths that are files or
folders of the wrong kind or in read-only places, data files without a header, binary or not UTF-8,
validation data that is the training data, lengths above the model's position limit, a fine-tuned
model whose classifier does not match the data. ``tests/test_bad_input.py`` runs the same table in
process; this script runs each case as ``python -m autoprune ...`` in a fresh process on a tiny
workspace (tiny BERT, tiny data, a study with two trials) and writes what it saw to
``docs/results/bad_input.json`` (each case's command, exit status, error line, whether a traceback
appeared and whether storage changed), plus a markdown table on stdout.

    .venv/bin/python benchmarks/bad_input.py                 # all cases (about 2 minutes on 2 cores)
    .venv/bin/python benchmarks/bad_input.py --only dashboard_port_out_of_range

Exit status 0 when every case passes.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's autoprune; the tiny-model helpers of the tests

from conftest import make_tiny_model, readonly_place, tiny_config_dict  # noqa: E402

RESULTS = ROOT / "docs" / "results" / "bad_input.json"


# ----------------------------------------------------------------------------- workspace
def write(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    else:
        path.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return path


def make_workspace(root: Path) -> dict[str, Any]:
    """Tiny model and data, ``config.yaml``, ``space.yaml``, ``policy.yaml`` and a study 'space' with two
    complete trials in ``runs/space.db`` (plain Optuna trials: the cases fail before reading them)."""
    import optuna

    raw = tiny_config_dict(root)
    raw["run_dir"] = str(root / "runs")
    policy = {"criterion": "l1", "head_sparsity": [0.25, 0.5], "ffn_sparsity": [0.25, 0.5], "retrain": {"steps": 4}}
    ws = {"root": root, "raw": raw, "config": write(root / "config.yaml", raw),
          "space": write(root / "space.yaml", {"config": "config.yaml", "criteria": ["l1"], "n_trials": 2}),
          "policy": write(root / "policy.yaml", policy), "ro": readonly_place(root)}
    (root / "runs").mkdir(exist_ok=True)
    ws["url"] = f"sqlite:///{root / 'runs' / 'space.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="space", storage=ws["url"], directions=["maximize", "maximize"])
    for k in range(2):
        study.add_trial(optuna.trial.create_trial(
            params={"x": float(k)}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            values=[0.88 - 0.05 * k, 1.3 + 0.4 * k]))
    return ws


def fingerprint(root: Path) -> dict[str, str]:
    """sha256 of every database file under ``root`` (a new or changed one shows up)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".db", ".sqlite", ".sqlite3")}


# ----------------------------------------------------------------------------- what a case writes
def config_with(ws: dict[str, Any], name: str, data: dict | None = None, **over: Any) -> str:
    """A run config like the workspace's with ``data`` fields and top-level fields replaced."""
    raw = json.loads(json.dumps(ws["raw"]))
    if data:
        raw["data"].update(data)
    for k, v in over.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    return str(write(ws["root"] / "cases" / f"{name}.yaml", raw))


def space_with(ws: dict[str, Any], name: str, data: dict | None = None, **over: Any) -> str:
    """A search space with the inline run config of :func:`config_with` and a run_dir of its own."""
    cfg = yaml.safe_load(Path(config_with(ws, name, data, **over)).read_text())
    cfg["run_dir"] = str(ws["root"] / "cases" / f"runs_{name}")
    return str(write(ws["root"] / "cases" / f"space_{name}.yaml", {"config": cfg, "criteria": ["l1"], "n_trials": 2}))


def files_with(ws: dict[str, Any], **files: str) -> dict[str, Any]:
    return {"files": {**ws["raw"]["data"]["files"], **files}}


def data_file(ws: dict[str, Any], name: str, content: str | bytes) -> str:
    return str(write(ws["root"] / "cases" / "data" / name, content))


def model(ws: dict[str, Any], name: str, num_labels: int = 2, id2label: dict[int, str] | None = None) -> str:
    d = ws["root"] / "cases" / "models" / name
    if not (d / "config.json").is_file():
        make_tiny_model(d, "bert", num_labels=num_labels)
        if id2label:
            cfg = json.loads((d / "config.json").read_text())
            cfg.update(id2label={str(k): v for k, v in id2label.items()}, label2id={v: k for k, v in id2label.items()})
            (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def readonly(ws: dict[str, Any], leaf: str) -> str:
    if ws["ro"] is None:
        raise Skip("no folder this process cannot write in")
    return str(ws["ro"] / leaf)


class Skip(Exception):
    """A case that cannot be set up on this machine."""


# ----------------------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    """``build(workspace) -> (arguments after 'autoprune', strings the error line must contain)``."""

    name: str
    build: Callable[[dict[str, Any]], tuple[list[str], list[str]]]


def _headerless(ws: dict[str, Any]) -> dict[str, Any]:
    rows = {s: Path(f).read_text().split("\n", 1)[1] for s, f in ws["raw"]["data"]["files"].items()}
    return files_with(ws, **{s: data_file(ws, f"nohead_{s}.tsv", r) for s, r in rows.items()})


def _shares_rows(ws: dict[str, Any]) -> dict[str, Any]:
    train = Path(ws["raw"]["data"]["files"]["train"]).read_text().splitlines()
    return files_with(ws, validation=data_file(ws, "val_from_train.tsv", "\n".join(train[:21]) + "\n"))


def _string_labels(ws: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for s, f in ws["raw"]["data"]["files"].items():
        head, *rows = Path(f).read_text().splitlines()
        out[s] = data_file(ws, f"named_{s}.tsv", "\n".join([head] + [r[:-1] + ("good" if r.endswith("1") else "bad")
                                                                    for r in rows]) + "\n")
    return files_with(ws, **out)


LATIN1 = "sentence\tlabel\nun film r\u00e9ussi\t1\n".encode("latin-1")


def train_file(ws: dict[str, Any]) -> str:
    return ws["raw"]["data"]["files"]["train"]


CASES: list[Case] = [
    Case("dashboard_port_out_of_range", lambda ws: (
        ["dashboard", "-c", str(ws["space"]), "--serve", "--port", "99999"], ["--port 99999", "1-65535"])),
    Case("dashboard_port_negative", lambda ws: (
        ["dashboard", "-c", str(ws["space"]), "--serve", "--port", "-5"], ["--port -5", "1-65535"])),
    Case("dashboard_refresh_zero", lambda ws: (
        ["dashboard", "-c", str(ws["space"]), "--serve", "--refresh", "0"], ["--refresh 0"])),
    Case("dashboard_output_is_a_folder", lambda ws: (
        ["dashboard", "-c", str(ws["space"]), "-o", str(ws["root"])], ["-o", "is a folder; give a file path"])),
    Case("dashboard_output_below_a_file", lambda ws: (
        ["dashboard", "-c", str(ws["space"]), "-o", f"{ws['policy']}/d.html"], ["is a file, not a folder"])),
    Case("dashboard_output_read_only", lambda ws: (
        ["dashboard", "-c", str(ws["space"]), "-o", readonly(ws, "d.html")], ["-o", "cannot write in"])),
    Case("export_output_is_a_file", lambda ws: (
        ["export", "-c", str(ws["space"]), "--trial", "0", "-o", str(ws["policy"])], ["-o", "exists and is a file"])),
    Case("export_output_read_only", lambda ws: (
        ["export", "-c", str(ws["space"]), "--trial", "0", "-o", readonly(ws, "exp")], ["-o", "cannot write in"])),
    Case("prune_save_is_a_file", lambda ws: (
        ["prune", "-c", str(ws["config"]), "--policy", str(ws["policy"]), "--save", str(ws["policy"])],
        ["--save", "exists and is a file"])),
    Case("apply_output_is_a_file", lambda ws: (
        ["apply", str(ws["policy"]), "-c", str(ws["config"]), "-o", str(ws["policy"])],
        ["-o", "exists and is a file"])),
    Case("baseline_config_is_a_folder", lambda ws: (
        ["baseline", "-c", str(ws["root"])], ["is a folder; give the YAML file"])),
    Case("baseline_run_dir_read_only", lambda ws: (
        ["baseline", "-c", config_with(ws, "ro_run_dir", run_dir=readonly(ws, "runs"))],
        ["run_dir", "cannot write", "set run_dir"])),
    Case("baseline_max_length_above_positions", lambda ws: (
        ["baseline", "-c", config_with(ws, "max_length", {"max_length": 256})],
        ["data.max_length is 256", "limit of 128 tokens"])),
    Case("prune_seq_len_above_positions", lambda ws: (
        ["prune", "-c", config_with(ws, "seq_len", measure={"seq_len": 200}), "--policy", str(ws["policy"])],
        ["measure.seq_len is 200", "limit of 128 tokens"])),
    Case("baseline_file_without_header", lambda ws: (
        ["baseline", "-c", config_with(ws, "no_header", _headerless(ws))],
        ["this file seems to have no header row", "data.header: false"])),
    Case("baseline_binary_data_file", lambda ws: (
        ["baseline", "-c", config_with(ws, "binary", files_with(
            ws, train=data_file(ws, "train_bin.tsv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x01")))],
        ["not a UTF-8 text file", "NUL bytes"])),
    Case("baseline_latin1_data_file", lambda ws: (
        ["baseline", "-c", config_with(ws, "latin1", files_with(
            ws, train=data_file(ws, "train_latin1.tsv", LATIN1)))],
        ["not a UTF-8 text file", "byte 0xe9"])),
    Case("baseline_validation_is_the_train_file", lambda ws: (
        ["baseline", "-c", config_with(ws, "same_file", files_with(ws, validation=train_file(ws)))],
        ["is the same file as data.files.train", "allow_split_overlap"])),
    Case("baseline_validation_shares_training_rows", lambda ws: (
        ["baseline", "-c", config_with(ws, "shared_rows", _shares_rows(ws))],
        ["are also rows of the training split", "allow_split_overlap"])),
    Case("baseline_header_false_on_jsonl", lambda ws: (
        ["baseline", "-c", config_with(ws, "header_jsonl", {"files": {"train": "t.jsonl", "validation": "v.jsonl"},
                                                            "header": False})],
        ["'header: false' applies to local .tsv/.csv files only"])),
    Case("baseline_finetuned_label_count", lambda ws: (
        ["baseline", "-c", config_with(ws, "byo_count", model={"name_or_path": model(ws, "three", 3),
                                                               "finetuned": True})],
        ["has 3 labels", "the data has 2 ['0', '1']"])),
    Case("baseline_finetuned_label_names", lambda ws: (
        ["baseline", "-c", config_with(ws, "byo_names", _string_labels(ws), model={
            "name_or_path": model(ws, "named", 2, {0: "neg", 1: "pos"}), "finetuned": True})],
        ["has labels ['neg', 'pos']", "the data's labels are ['bad', 'good']"])),
    Case("search_max_length_above_positions", lambda ws: (
        ["search", "-c", space_with(ws, "s_max_length", {"max_length": 512})], ["data.max_length is 512"])),
    Case("search_validation_is_the_train_file", lambda ws: (
        ["search", "-c", space_with(ws, "s_same_file", files_with(ws, validation=train_file(ws)))],
        ["is the same file as data.files.train"])),
]


def case(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


# ----------------------------------------------------------------------------- running them
def verdict(ws: dict[str, Any], args: list[str], needles: list[str], code: int, output: str,
            before: dict[str, str]) -> dict[str, Any]:
    """What a run showed, and the problems with it (empty: the case passes)."""
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    problems = []
    if code != 2:
        problems.append(f"exit status {code}, not 2")
    if "Traceback" in output:
        problems.append("a traceback")
    if len(errors) != 1:
        problems.append(f"{len(errors)} 'error:' lines, not 1")
    problems += [f"'{n}' not in the output" for n in needles if n not in output]
    changed = fingerprint(ws["root"]) != before
    if changed:
        problems.append("a study database was created or changed")
    return {"exit_code": code, "error": errors[0] if errors else None, "traceback": "Traceback" in output,
            "storage_changed": changed, "problems": problems}


def run_subprocess(ws: dict[str, Any], c: Case) -> dict[str, Any]:
    try:
        args, needles = c.build(ws)
    except Skip as exc:
        return {"case": c.name, "skipped": str(exc)}
    before = fingerprint(ws["root"])
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "autoprune", *args], capture_output=True, text=True, timeout=300,
                       cwd=ws["root"], env=env, stdin=subprocess.DEVNULL)
    out = verdict(ws, args, needles, p.returncode, p.stdout + p.stderr, before)
    shown = [a.replace(str(ws["root"]), "$WS") for a in args]
    return {"case": c.name, "command": "autoprune " + shlex.join(shown), **out,
            "error": out["error"] and out["error"].replace(str(ws["root"]), "$WS"),
            "seconds": round(time.perf_counter() - t0, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="run only these cases (names from CASES)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="JSON results file (default: %(default)s)")
    args = ap.parse_args()
    chosen = [case(n) for n in args.only] if args.only else CASES
    with tempfile.TemporaryDirectory(prefix="ap_bad_input_") as tmp:
        ws = make_workspace(Path(tmp))
        rows = []
        for c in chosen:
            r = run_subprocess(ws, c)
            rows.append(r)
            status = "SKIP" if "skipped" in r else ("PASS" if not r["problems"] else "FAIL " + "; ".join(r["problems"]))
            print(f"{c.name:42s} {status}", file=sys.stderr, flush=True)
        if ws["ro"] is not None and ws["ro"].is_relative_to(tmp):
            ws["ro"].chmod(0o755)
    ran = [r for r in rows if "skipped" not in r]
    summary = {"cases": len(rows), "ran": len(ran), "passed": sum(not r["problems"] for r in ran),
               "exit_codes": sorted({r["exit_code"] for r in ran}), "tracebacks": sum(r["traceback"] for r in ran),
               "storage_changed": sum(r["storage_changed"] for r in ran)}
    print("| case | exit | traceback | error line |\n|---|---:|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['case']} | - | - | skipped: {r['skipped']} |")
        else:
            print(f"| {r['case']} | {r['exit_code']} | {'yes' if r['traceback'] else 'no'} | "
                  f"{(r['error'] or '').replace('|', '/')} |")
    print(f"\n{summary['passed']}/{summary['ran']} passed, tracebacks: {summary['tracebacks']}, "
          f"storage changed: {summary['storage_changed']}")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip() or None
    shown = Path(sys.argv[0]).resolve()
    command = shlex.join([".venv/bin/python", str(shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown),
                          *sys.argv[1:]])
    doc = {"benchmark": "bad_input", "sections": {"cli": {
        "command": command, "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "commit": commit,
        "results": {"summary": summary, "cases": rows}}}}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {args.results}", file=sys.stderr)
    return 0 if summary["passed"] == summary["ran"] else 1


if __name__ == "__main__":
    sys.exit(main())
