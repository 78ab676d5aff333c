"""Export a chosen trial of a study, load an exported model, re-apply an exported policy.

Selectors (exactly one; all but ``trial`` choose among the study's Pareto front):

* ``Selector(trial=N)``: trial ``N`` (any COMPLETE trial; a warning if it is not on the front).
* ``Selector(max_accuracy_drop=X)``: the **fastest** front trial whose validation accuracy is at
  most ``X`` **percentage points** below the dense baseline (``1.0`` = one point, i.e. 0.90 -> 0.89).
* ``Selector(min_speedup=Y)``: the **most accurate** front trial with measured speedup ``>= Y``.

An export directory holds the pruned, fine-tuned model (``model.safetensors`` + ``config.json`` +
tokenizer files, ``prune_record.json``), ``policy.yaml`` (the policy under ``policy:``, the
units its pruning kept under ``record:`` (a :class:`~autoprune.pruner.PruneRecord`), then
``metrics``, ``base_model`` with the sha256 of its weights, ``dataset``, ``versions``, ``source``),
a ``README.md`` and, with ``onnx=True``, ``model.onnx``. Exported models load with
:func:`autoprune.serialization.load_pruned`.

Example (see tests/test_export.py for a full run on a tiny model):
    >>> Selector.parse(max_accuracy_drop=1.0)
    Selector(trial=None, max_accuracy_drop=1.0, min_speedup=None)
    >>> Selector.parse(trial=3).describe()
    'trial 3'
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune.errors import AutopruneError, PolicyError, StudyError
from autoprune.study import TrialRecord, front, study_info, top_rung, trial_records

logger = logging.getLogger(__name__)

EXPORT_FORMAT = 1
_TOL = 1e-9


class ExportError(AutopruneError):
    """No trial qualifies for a selector, or the chosen trial cannot be exported."""


# ----------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class Selector:
    """Which trial to export; exactly one field is set (see the module docstring)."""

    trial: int | None = None
    max_accuracy_drop: float | None = None  # percentage points below the dense accuracy
    min_speedup: float | None = None

    @classmethod
    def parse(cls, trial: int | None = None, max_accuracy_drop: float | None = None,
              min_speedup: float | None = None) -> "Selector":
        """Validate a selector given as keyword arguments (the CLI's three options)."""
        given = [n for n, v in (("--trial", trial), ("--max-accuracy-drop", max_accuracy_drop),
                                ("--min-speedup", min_speedup)) if v is not None]
        if len(given) != 1:
            raise ExportError("choose exactly one of --trial N, --max-accuracy-drop POINTS, --min-speedup X"
                              + (f" (got {', '.join(given)})" if given else ""))
        if trial is not None and trial < 0:
            raise ExportError(f"--trial {trial}: trial numbers start at 0")
        if max_accuracy_drop is not None and not (0 <= max_accuracy_drop <= 100):
            raise ExportError(f"--max-accuracy-drop {max_accuracy_drop}: give percentage points in [0, 100] "
                              f"(1.0 means one point below the dense accuracy)")
        if min_speedup is not None and not (min_speedup > 0):
            raise ExportError(f"--min-speedup {min_speedup}: give a positive factor, e.g. 2.0")
        return cls(trial, max_accuracy_drop, min_speedup)

    def describe(self) -> str:
        if self.trial is not None:
            return f"trial {self.trial}"
        if self.max_accuracy_drop is not None:
            return f"fastest front trial within {self.max_accuracy_drop:g} accuracy points of dense"
        return f"most accurate front trial at >= {self.min_speedup:g}x speedup"


def _as_selector(selector: Any) -> Selector:
    if isinstance(selector, Selector):
        return Selector.parse(selector.trial, selector.max_accuracy_drop, selector.min_speedup)
    if isinstance(selector, int) and not isinstance(selector, bool):
        return Selector.parse(trial=selector)
    if isinstance(selector, dict):
        return Selector.parse(**selector)
    raise ExportError(f"unsupported selector {selector!r}; use Selector(trial=...), an int or a dict")


def _drop_points(rec: TrialRecord) -> float:
    res = rec.result or {}
    if res.get("accuracy_drop") is not None:
        return 100.0 * float(res["accuracy_drop"])
    if res.get("dense_accuracy") is not None and rec.accuracy is not None:
        return 100.0 * (float(res["dense_accuracy"]) - rec.accuracy)
    raise ExportError(f"trial {rec.number} has no recorded accuracy drop (no 'result' attribute)")


def _describe_front(fr: list[TrialRecord]) -> str:
    if not fr:
        return "the study has no completed trials yet"
    parts = []
    for r in fr:
        try:
            drop = f"drop {_drop_points(r):.2f} pts, "
        except ExportError:
            drop = ""
        parts.append(f"trial {r.number}: accuracy {r.accuracy:.4f} ({drop}speedup {r.speedup:.2f}x)")
    return "the front offers " + "; ".join(parts)


def select_trial(study: Any, selector: Any) -> TrialRecord:
    """The trial the selector picks, as a :class:`~autoprune.study.TrialRecord`; :class:`ExportError`
    when none qualifies.

    Example:
        >>> import optuna
        >>> s = optuna.create_study(directions=["maximize", "maximize"])
        >>> for acc, sp in [(0.90, 1.2), (0.89, 1.8), (0.85, 2.5)]:
        ...     s.add_trial(optuna.trial.create_trial(values=[acc, sp],
        ...                 user_attrs={"result": {"accuracy_drop": 0.91 - acc}}))
        >>> select_trial(s, Selector(max_accuracy_drop=2.0)).number
        1
        >>> select_trial(s, Selector(min_speedup=2.0)).number
        2
    """
    sel = _as_selector(selector)
    _final_results_only(study)
    records = trial_records(study)
    fr = front(records)
    if sel.trial is not None:
        by_number = {r.number: r for r in records}
        rec = by_number.get(sel.trial)
        if rec is None:
            raise ExportError(f"study '{study.study_name}' has no trial {sel.trial} "
                              f"(trials 0..{max(by_number) if by_number else -1}); {_describe_front(fr)}")
        if not rec.complete:
            raise ExportError(f"trial {sel.trial} is {rec.state}, not COMPLETE; only completed trials can be "
                              f"exported; {_describe_front(fr)}")
        if sel.trial not in {r.number for r in top_rung(r for r in records if r.complete)}:
            raise ExportError(f"trial {sel.trial} ran at rung {rec.rung}, below the study's top rung: a reduced budget, "
                              f"not a final result; {_describe_front(fr)}")
        if sel.trial not in {r.number for r in fr}:
            logger.warning("trial %d is not on the Pareto front (it is dominated); exporting it anyway", sel.trial)
        return rec
    if sel.max_accuracy_drop is not None:
        ok = [r for r in fr if _drop_points(r) <= sel.max_accuracy_drop + _TOL]
        if not ok:
            raise ExportError(f"no Pareto-front trial is within {sel.max_accuracy_drop:g} accuracy points of the "
                              f"dense baseline; {_describe_front(fr)}")
        return max(ok, key=lambda r: (r.speedup, r.accuracy, -r.number))
    ok = [r for r in fr if r.speedup >= sel.min_speedup - _TOL]  # type: ignore[operator]
    if not ok:
        raise ExportError(f"no Pareto-front trial reaches {sel.min_speedup:g}x speedup; {_describe_front(fr)}")
    return max(ok, key=lambda r: (r.accuracy, r.speedup, -r.number))


def _final_results_only(study: Any) -> None:
    """Refuse the study of a lower rung of a multi-fidelity search: its results are not final."""
    from autoprune.search._rungs import check_not_lower_rung

    try:
        check_not_lower_rung(study, "export from")
    except StudyError as exc:
        raise ExportError(str(exc)) from None


# ----------------------------------------------------------------------------- provenance
def weights_sha256(model_path: str | Path) -> tuple[str | None, list[str]]:
    """sha256 of a model directory's weight files (``*.safetensors``, else ``*.bin``), concatenated in name order.

    Returns ``(hexdigest, file names)``; ``(None, [])`` when the path is not a local directory.
    """
    p = Path(model_path)
    if not p.is_dir():
        return None, []
    files = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
    if not files:
        return None, []
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest(), [f.name for f in files]


def _versions() -> dict[str, str]:
    import platform

    import torch
    import transformers

    import autoprune

    return {"autoprune": autoprune.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _dataset_section(cfg: Any) -> dict[str, Any]:
    d = cfg.data
    out: dict[str, Any] = {}
    if d.files:
        out["files"] = dict(d.files)
    else:
        out["dataset"] = d.dataset
        if d.subset:
            out["subset"] = d.subset
    out["splits"] = {"train": d.train_split, "validation": d.validation_split, "test": d.test_split}
    out["columns"] = {"text": d.text_column, "text_pair": d.text_pair_column, "label": d.label_column}
    out["max_length"] = d.max_length
    for k in ("max_train_samples", "max_validation_samples", "max_test_samples"):
        if getattr(d, k) is not None:
            out[k] = getattr(d, k)
    return out


_METRIC_KEYS = ("accuracy", "accuracy_pruned", "macro_f1", "dense_accuracy", "dense_macro_f1", "accuracy_drop", "eval_split", "eval_n",
                "speedup", "speed_label", "speed_flags", "speedup_quartiles", "latency_ms", "dense_latency_ms", "speedup_b1", "flops_reduction", "flops",
                "dense_flops", "params", "dense_params", "size_bytes", "dense_size_bytes", "heads_per_layer",
                "ffn_per_layer", "weight_sparsity", "retrain_steps", "measure", "targets")


# ----------------------------------------------------------------------------- model files
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt", ".lock")  # never copy pickles


def _has_model(path: str | Path | None) -> bool:
    if not path:
        return False
    p = Path(path)
    return (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def _copy_model(src: Path, dst: Path) -> None:
    """Copy a saved model directory's files (weights, config, tokenizer) but no pickled checkpoints."""
    for f in src.iterdir():
        if f.is_file() and f.suffix not in _SKIP_SUFFIXES and f.name not in ("policy.yaml", "README.md"):
            shutil.copy2(f, dst / f.name)


# ----------------------------------------------------------------------------- export
def _study_config(study: Any) -> Any:
    from autoprune.config import config_from_dict

    raw = study_info(study).config
    if not raw:
        raise StudyError(f"study '{study.study_name}' has no stored run configuration ('config' attribute); "
                         f"it was not written by 'autoprune search'")
    return config_from_dict(raw, source=f"study '{study.study_name}' config")


def _readme(info: dict[str, Any]) -> str:
    m = info["metrics"]
    src = info["source"]
    lines = [
        f"# Pruned model: study `{info['study']}`, trial {info['trial']}",
        "",
        f"Policy: `{info['policy_summary']}`",
        "",
        "| metric | dense | pruned |",
        "|---|---:|---:|",
        f"| validation accuracy ({m.get('eval_split')}, n={m.get('eval_n')}) | {m.get('dense_accuracy', 0):.4f} "
        f"| {m.get('accuracy', 0):.4f} |",
        f"| macro-F1 | {m.get('dense_macro_f1', 0) or 0:.4f} | {m.get('macro_f1', 0) or 0:.4f} |",
        f"| speedup ({m.get('speed_label', 'measured')}) | 1.00x | {m.get('speedup', 0):.2f}x |",
        f"| FLOPs reduction | 1.00x | {m.get('flops_reduction', 0):.2f}x |",
        f"| parameters | {m.get('dense_params', 0):,} | {m.get('params', 0):,} |",
        "",
        f"Heads per layer: {m.get('heads_per_layer')}; FFN neurons per layer: {m.get('ffn_per_layer')}.",
        "",
    ]
    if m.get("speed_flags"):
        lines += [f"The measured speedup is flagged: {'; '.join(m['speed_flags'])} (see docs/RELIABILITY.md).", ""]
    lines += [
        "Labels (`id2label` in `config.json`): "
        + ", ".join(f"{i} = `{n}`" for i, n in sorted((int(k), v) for k, v in info["id2label"].items())) + ".",
        "",
    ]
    lines += _targets_table(m.get("targets"))
    lines += [
        f"Model files: {src['description']}.",
    ]
    if src.get("rebuilt_metrics"):
        r = src["rebuilt_metrics"]
        lines.append(f"The rebuilt model measured accuracy {r['accuracy']:.4f} and speedup {r['speedup']:.2f}x "
                     f"(the table shows the numbers recorded in the study).")
    if (info.get("base_model") or {}).get("pooling") == "mean":
        lines.append("The classifier reads the attention-masked mean of the last hidden states (`model.pooling: "
                     "mean`, recorded in `config.json`): load it with `autoprune.load_pruned` or use the ONNX file; "
                     "plain `AutoModelForSequenceClassification` would build the [CLS]-pooler head instead.")
    if info["quantized"]:
        lines.append("The policy quantizes to ONNX Runtime dynamic int8: the float weights are stored and "
                     "`load_pruned` quantizes them again on load (an ONNX Runtime model called like the torch one; "
                     "`as_float=True` gives the float weights).")
    lines += [
        "",
        "## Load",
        "",
        "```python",
        "import autoprune",
        "from transformers import AutoTokenizer",
        f"model = autoprune.load_pruned(\"{info['dir_name']}\")  # eval mode; safetensors, no pickles",
        f"tok = AutoTokenizer.from_pretrained(\"{info['dir_name']}\")",
        "logits = model(**tok([\"a great film\"], return_tensors=\"pt\")).logits",
        "```",
        "",
    ]
    if info.get("onnx"):
        if info["quantized"]:
            lines += ["`model.onnx` is ONNX Runtime dynamic int8 (`MatMulInteger`); score it one sentence at a time "
                      "(`autoprune.runtimes.onnx_accuracy`), as its activation scales span the batch.", ""]
        chk = (info.get("onnx_meta") or {}).get("accuracy_check")
        if chk:
            rec = chk["trial_accuracy"]
            lines += [f"Checked on export: `model.onnx` scores {chk['accuracy']:.4f} on {chk['split']} (n={chk['n']}), "
                      f"the trial recorded {'nothing' if rec is None else f'{rec:.4f}'}"
                      + ("" if chk["difference"] is None else f" ({chk['difference'] * 100:+.2f} points"
                         f"{'' if chk['within_tolerance'] else ', beyond the tolerance'})") + ".", ""]
        lines += ["`model.onnx` (opset 17, dynamic batch and sequence; inputs "
                  f"{', '.join(info['onnx_inputs'])}; output `logits`) runs in onnxruntime:", "",
                  "```python", "import onnxruntime as ort",
                  "sess = ort.InferenceSession(\"model.onnx\")",
                  "logits = sess.run([\"logits\"], dict(tok([\"a great film\"], return_tensors=\"np\")))[0]",
                  "```", ""]
    lines += ["Re-apply the policy to a fresh base model and retrain with the stored budget:", "",
              "```", "autoprune apply policy.yaml -c CONFIG.yaml", "```", "",
              "`policy.yaml` also records the metrics, the base model and the sha256 of its weights, the dataset "
              "and splits, and the versions used.", ""]
    return "\n".join(lines)


def _targets_table(targets: dict[str, Any] | None) -> list[str]:
    """README lines: the speedup in every measurement target the trial recorded (none: no lines)."""
    if not targets or not targets.get("targets"):
        return []
    lines = ["| measurement target | dense ms | pruned ms | speedup (per-round quartiles) |", "|---|---:|---:|---:|"]
    for name, t in targets["targets"].items():
        star = " (search objective)" if name == targets.get("objective") else ""
        what = f"{t['runtime']} {t['device']}, {t['threads']} thr, {t['batch_size']}x{t['seq_len']}"
        if t.get("skipped"):
            lines.append(f"| {name}{star}: {what} | - | - | not measured: {t['skipped']} |")
            continue
        lines.append(f"| {name}{star}: {what}{', int8' if t.get('int8') else ''} | {t['dense_ms']:.2f} | "
                     f"{t['pruned_ms']:.2f} | {t['speedup']:.2f}x ({t['speedup_q1']:.2f}-{t['speedup_q3']:.2f}) |")
    return lines + [""]


#: points of accuracy an exported ONNX model may differ from what its trial recorded before export warns
ONNX_ACCURACY_TOLERANCE = 0.005


def check_onnx_accuracy(cfg: Any, onnx_path: Path, res: dict[str, Any]) -> dict[str, Any]:
    """Score the exported ONNX file on the split its trial was scored on and hold it against the trial's
    recorded accuracy (warning beyond :data:`ONNX_ACCURACY_TOLERANCE`); returns what the export records."""
    from autoprune.runtimes import onnx_accuracy
    from autoprune.train import load_task_data, load_tokenizer

    task = load_task_data(cfg, load_tokenizer(cfg))
    on_test = res.get("eval_split") not in (None, cfg.data.validation_split)
    split = task.test if on_test and task.test is not None else task.validation
    got = onnx_accuracy(onnx_path, split, pad_id=task.pad_token_id, num_labels=task.num_labels,
                        batch_size=cfg.eval_batch_size)
    recorded = res.get("accuracy")
    diff = None if recorded is None else got.accuracy - float(recorded)
    ok = diff is not None and abs(diff) <= ONNX_ACCURACY_TOLERANCE
    (logger.info if ok else logger.warning)(
        "ONNX model %s: accuracy %.4f on %s (n=%d), the trial recorded %s%s", onnx_path, got.accuracy,
        res.get("eval_split"), got.n, "nothing" if recorded is None else f"{float(recorded):.4f}",
        "" if ok or diff is None else f": {abs(diff) * 100:.2f} points apart (more than "
                                      f"{ONNX_ACCURACY_TOLERANCE * 100:.1f})")
    return {"split": res.get("eval_split"), "n": got.n, "accuracy": got.accuracy, "trial_accuracy": recorded,
            "difference": diff, "within_tolerance": ok, "tolerance": ONNX_ACCURACY_TOLERANCE}


def export_trial(study: Any, selector: Any, out_dir: str | Path, onnx: bool = False) -> Path:
    """Export the trial ``selector`` picks to ``out_dir`` and return the directory.

    If the trial saved its model (``result['model_dir']`` exists) the files are copied; otherwise
    the model is rebuilt by re-applying the trial's prune record (``run_trial`` on the study's stored
    config). ``policy.yaml`` and ``README.md`` say which happened.

    Example:
        >>> # export_trial(study, Selector(min_speedup=2.0), "exports/fast", onnx=True)
    """
    import yaml

    from autoprune.policy import PruningPolicy, split_legacy_kept

    sel = _as_selector(selector)
    trial = select_trial(study, sel)
    res = trial.result
    pol_raw = trial.policy or (res or {}).get("policy")
    if not isinstance(res, dict) or not isinstance(pol_raw, dict):
        raise ExportError(f"trial {trial.number} has no recorded result/policy; it was not written by "
                          f"'autoprune search'")
    cfg = _study_config(study)
    policy = PruningPolicy.from_dict(split_legacy_kept(pol_raw)[0], source=f"trial {trial.number} policy")
    record = _trial_record(res, policy, f"trial {trial.number} result")
    logger.info("selected trial %d (%s): accuracy %.4f, speedup %.2fx", trial.number, sel.describe(),
                trial.accuracy, trial.speedup)

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not (out / "policy.yaml").is_file():
            raise ExportError(f"{out} exists and is not empty (and not an earlier export); choose a new -o DIR")
        for f in out.iterdir():  # overwrite an earlier export
            if f.is_file():
                f.unlink()
    out.mkdir(parents=True, exist_ok=True)

    source: dict[str, Any]
    if _has_model(res.get("model_dir")):
        _copy_model(Path(res["model_dir"]), out)
        source = {"kind": "copied", "from": str(res["model_dir"]),
                  "description": f"copied from the trial's saved model ({res['model_dir']})"}
        logger.info("copied the trial's saved model from %s", res["model_dir"])
    else:
        from autoprune.trial import run_trial

        replay = record if record is not None and record.granularity == "structured" else None
        how = ("re-applying its prune record (the units the trial kept)" if replay is not None
               else f"re-scoring with the '{policy.criterion}' criterion and the same seed (no kept units recorded)")
        logger.warning("trial %d did not keep its model; rebuilding it by %s and retraining (%d steps)",
                       trial.number, how, policy.retrain.steps)
        with tempfile.TemporaryDirectory(dir=str(out)) as tmp:
            rebuilt = run_trial(cfg, policy, save_dir=tmp, record=replay)
            _copy_model(Path(tmp), out)
        source = {"kind": "rebuilt",
                  "description": f"rebuilt by {how} on the dense baseline and retraining with the stored budget "
                                 f"(the trial did not keep its model)",
                  "rebuilt_metrics": {"accuracy": rebuilt.accuracy, "macro_f1": rebuilt.macro_f1,
                                      "speedup": rebuilt.speedup}}
    base_path = cfg.model.resolve()
    sha, files = weights_sha256(base_path)
    metrics = {k: res[k] for k in _METRIC_KEYS if k in res}
    doc = {
        "autoprune_export": EXPORT_FORMAT,
        "study": study.study_name,
        "trial": trial.number,
        "selector": sel.describe(),
        "policy": policy.to_dict(),
        **({"record": record.to_dict()} if record is not None else {}),
        "policy_summary": policy.summary(),
        "metrics": metrics,
        "base_model": {"name_or_path": cfg.model.name_or_path, "pooling": cfg.model.pooling,
                       "resolved": str(base_path), "weights_files": files, "sha256": sha},
        "dataset": _dataset_section(cfg),
        "baseline_training": cfg.baseline.model_dump(),
        "versions": _versions(),
        "source": source,
    }
    onnx_input_names: list[str] = []
    if onnx:  # an int8 policy's ONNX file is ONNX Runtime dynamic int8 of its float model
        from autoprune.serialization import load_pruned

        model = load_pruned(out, as_float=True)
        from autoprune.onnx_export import export_onnx, onnx_inputs

        export_onnx(model, out / "model.onnx", int8=policy.quantize)
        onnx_input_names = onnx_inputs(model)[1]
        doc["onnx"] = {"file": "model.onnx", "opset": 17, "inputs": onnx_input_names, "output": "logits",
                       "int8": "onnxruntime dynamic" if policy.quantize else None,
                       "accuracy_check": check_onnx_accuracy(cfg, out / "model.onnx", res)}
    (out / "policy.yaml").write_text(
        "# autoprune export: the policy under 'policy:', the units its pruning kept under 'record:', then "
        "provenance.\n"
        "# Re-apply with: autoprune apply policy.yaml -c CONFIG.yaml\n"
        + yaml.safe_dump(json.loads(json.dumps(doc, default=str)), sort_keys=False), encoding="utf-8")
    id2label = json.loads((out / "config.json").read_text(encoding="utf-8")).get("id2label", {})
    (out / "README.md").write_text(_readme({**doc, "dir_name": out.name, "quantized": policy.quantize, "onnx": onnx,
                                            "onnx_meta": doc.get("onnx"),
                                            "onnx_inputs": onnx_input_names, "id2label": id2label}), encoding="utf-8")
    logger.info("exported trial %d to %s (%s)", trial.number, out, source["kind"])
    return out


# ----------------------------------------------------------------------------- apply
def _trial_record(res: dict[str, Any], policy: Any, source: str) -> Any:
    """The prune record a trial's result holds; results written before records existed give their
    kept indices instead (converted); ``None`` when there is neither (unstructured, old results)."""
    from autoprune.pruner import PruneRecord

    if res.get("prune_record") is not None:
        return PruneRecord.from_dict(res["prune_record"], source=source)
    rp = res.get("policy") or {}
    kept = {k: res.get(k) if res.get(k) is not None else rp.get(k) for k in ("kept_heads", "kept_neurons")}
    if all(v is None for v in kept.values()):
        return None
    return PruneRecord.from_kept(kept["kept_heads"], kept["kept_neurons"], criterion=policy.criterion, source=source)


def read_export(policy_path: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """Read an exported ``policy.yaml`` (or a plain policy file): ``(PruningPolicy, PruneRecord or None,
    whole document)``.

    The record is the ``record:`` section; a file written before records existed keeps the kept
    indices under ``policy:`` (``kept_heads`` / ``kept_neurons``), which become a record (logged).
    A corrupt file, a missing/invalid ``policy`` section or malformed sections raise :class:`PolicyError`.
    """
    from autoprune._yaml import read_yaml_mapping
    from autoprune.policy import PruningPolicy, split_legacy_kept
    from autoprune.pruner import PruneRecord

    p = Path(policy_path)
    if p.suffix == ".json":
        return PruningPolicy.load(p), None, {}
    doc = read_yaml_mapping(p, PolicyError)
    if "policy" in doc:
        if not isinstance(doc["policy"], dict):
            raise PolicyError(f"{p}: 'policy' must be a mapping (the policy fields), got "
                              f"{type(doc['policy']).__name__}")
        raw, source = doc["policy"], f"{p}: policy"
    elif "criterion" in doc:
        raw, source, doc = doc, str(p), {}
    else:
        raise PolicyError(f"{p}: no 'policy' section; expected a policy.yaml written by 'autoprune export' "
                          f"or a policy file with 'criterion'")
    raw, legacy = split_legacy_kept(raw)
    pol = PruningPolicy.from_dict(raw, source=source)
    for section in ("metrics", "base_model", "dataset", "versions", "record"):
        if section in doc and not isinstance(doc[section], dict):
            raise PolicyError(f"{p}: section '{section}' must be a mapping")
    record = None
    if "record" in doc:
        record = PruneRecord.from_dict(doc["record"], source=f"{p}: record")
    elif legacy:
        record = PruneRecord.from_kept(legacy.get("kept_heads"), legacy.get("kept_neurons"), criterion=pol.criterion,
                                       source=source)
        logger.info("%s: kept indices stored under 'policy:' (an export written before prune records) read as the "
                    "prune record", p)
    return pol, record, doc


def _base_shape(cfg: Any) -> tuple[list[int], list[int]]:
    """Heads and FFN neurons per layer of the configured base model, from its config alone."""
    import torch
    from transformers import AutoConfig

    from autoprune.models import get_adapter
    from autoprune.models._pooling import build_from_config

    with torch.device("meta"):  # the architecture without allocating its weights
        model = build_from_config(AutoConfig.from_pretrained(cfg.model.resolve()))
    return get_adapter(model).shape(model)


def apply_policy(policy_path: str | Path, config: Any, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Re-apply an exported policy to a fresh base model, retrain with its stored budget, measure.

    ``config`` is a :class:`~autoprune.config.RunConfig` or a path to one. The exported prune record
    is re-applied exactly (the same units cut, no scoring) when the base model's weights hash matches
    the one in ``policy.yaml``; otherwise a warning is logged and the units are re-scored with the
    policy's criterion. Returns a dict with ``result`` (the new TrialResult as dict), ``stored``
    (metrics from the file), ``kept_indices`` (bool: whether the record was re-applied) and ``model_dir``.

    Example:
        >>> # out = apply_policy("exports/fast/policy.yaml", "run.yaml", out_dir="reapplied")
        >>> # out["result"]["accuracy"], out["stored"]["accuracy"]
    """
    from autoprune.config import RunConfig, load_config
    from autoprune.models import model_depth
    from autoprune.trial import run_trial

    cfg = config if isinstance(config, RunConfig) else load_config(config)
    pol, record, doc = read_export(policy_path)
    pol.check_layers(model_depth(cfg), source=str(policy_path))
    if record is not None and record.granularity != "structured":
        record = None  # unstructured records keep no masks: the policy is re-scored as the trial was
    sha, _ = weights_sha256(cfg.model.resolve())
    stored_sha = (doc.get("base_model") or {}).get("sha256")
    if record is not None and (stored_sha is None or sha is None or sha != stored_sha):
        why = ("the policy file records no base-model hash" if stored_sha is None else
               "the base model is not a local directory, so its weights cannot be hashed" if sha is None else
               f"the base model's weights differ (sha256 {sha[:12]}... vs {stored_sha[:12]}... in the policy)")
        logger.warning("%s: re-scoring units with the '%s' criterion instead of reusing the kept indices",
                       why, pol.criterion)
        record = None
    elif record is not None:
        logger.info("base model matches the policy (sha256 %s...): re-applying its prune record", sha[:12])
        record.check_model(*_base_shape(cfg), source=str(policy_path))
    res = run_trial(cfg, pol, save_dir=str(out_dir) if out_dir else None, record=record)
    return {"result": res.to_dict(), "stored": dict(doc.get("metrics") or {}), "kept_indices": record is not None,
            "model_dir": str(out_dir) if out_dir else None, "policy_summary": pol.summary()}
