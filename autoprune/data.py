"""Loading a labelled text task with ``datasets``, tokenising it once, and batching it.

Local files (``.tsv``, ``.csv``, ``.jsonl``/``.json``, ``.parquet``) or a Hub dataset (``dataset:``, a
Hub id or a local folder of data files) are read with ``datasets.load_dataset``; text and label
columns and split names are configurable, and tsv/csv files may have no header row (``header: false``).
Before anything is loaded, :func:`check_files` refuses what would fail later or mislead: missing or
non-UTF-8 files, absent columns (naming a header row that looks like data), a validation or test split
that is the training file.
Tokenised splits are cached per process (a Ray worker reuses them across trials) and by
``datasets`` on disk.

Batches use *dynamic padding*: each batch is padded to its own longest sequence. With
``padding="bucketed"`` (the default) training batches are also drawn from length-sorted
buckets, so a batch holds sentences of similar length (SST-2 averages ~13 tokens: padding every
batch to 64 wastes most of the compute; docs/experiments.md records the gain).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from autoprune.config import DataConfig
from autoprune.errors import DataError

logger = logging.getLogger(__name__)

_BUILDERS = {".tsv": "csv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


#: a validation or test split of which more than this fraction of rows are also training rows is refused
#: (unless ``data.allow_split_overlap``): its accuracy would mostly be measured on rows the model trained on.
#: SST-2's validation split shares 75 of its 6,735 rows (1.1%) with the training split.
MAX_SPLIT_OVERLAP = 0.05


@dataclass
class Split:
    """A tokenised split: token id lists and integer labels."""

    input_ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TaskData:
    """Tokenised train/validation/test splits and the label names (index = label id).

    ``names_from_data``: the names are the data's own (string labels, or a ``datasets.ClassLabel``
    column); False for integer labels, whose names are the integers as strings.
    """

    train: Split
    validation: Split
    test: Split | None
    label_names: list[str]
    pad_token_id: int
    names_from_data: bool = False

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def with_label_order(self, names: list[str]) -> "TaskData":
        """The same data with label ids following ``names`` (a permutation of :attr:`label_names`).

        Example:
            >>> t = TaskData(Split([[1]], [0]), Split([[1], [2]], [0, 1]), None, ["neg", "pos"], 0, True)
            >>> r = t.with_label_order(["pos", "neg"])
            >>> r.label_names, r.train.labels, r.validation.labels
            (['pos', 'neg'], [1], [1, 0])
        """
        if sorted(names) != sorted(self.label_names):
            raise ValueError(f"{names} is not a permutation of {self.label_names}")
        new_id = [names.index(n) for n in self.label_names]

        def remap(s: Split | None) -> Split | None:
            return None if s is None else Split(s.input_ids, [new_id[i] for i in s.labels])

        return TaskData(remap(self.train), remap(self.validation), remap(self.test),  # type: ignore[arg-type]
                        list(names), self.pad_token_id, self.names_from_data)


def _roles(cfg: DataConfig) -> list[tuple[str, str]]:
    """``(role, split name)`` of the configured splits, train first."""
    return [(r, s) for r, s in (("train", cfg.train_split), ("validation", cfg.validation_split),
                                ("test", cfg.test_split)) if s]


def _overlap_hint() -> str:
    return "give a held-out split, or set data.allow_split_overlap: true to accept it"


def check_files(cfg: DataConfig) -> tuple[dict[str, str], str] | None:
    """Cheap checks of local data files before anything is loaded (or a study is created): every split
    has a file that exists, has a supported type, is UTF-8 text (tsv/csv/jsonl) with at least one data row,
    one format for all, the configured text and label columns (tsv/csv/jsonl; a header row that looks
    like data is named as such), and no validation or test split is the training file. Returns
    ``(split -> file, suffix)``, or None for a Hub dataset."""
    roles = _roles(cfg)
    splits = [s for _, s in roles]
    if not cfg.files:
        if not cfg.allow_split_overlap:
            for role, s in roles[1:]:
                if s == cfg.train_split:
                    raise DataError(f"data.{role}_split is '{s}', the training split: its accuracy would be "
                                    f"measured on training rows; {_overlap_hint()}")
        return None
    missing = [s for s in splits if s not in cfg.files]
    if cfg.test_split and cfg.test_split in missing:
        missing.remove(cfg.test_split)  # the test split is optional
    if missing:
        raise DataError(f"data.files has no entry for split(s) {missing}; add them or change data.*_split")
    files = {s: cfg.files[s] for s in splits if s in cfg.files}
    suffixes = set()
    for split, f in files.items():
        p = Path(f)
        if not p.is_file():
            raise DataError(f"data.files.{split}: file not found: {p}")
        if p.suffix.lower() not in _BUILDERS:
            raise DataError(f"data.files.{split}: unsupported file type '{p.suffix}'; "
                            f"use one of {', '.join(sorted(_BUILDERS))}")
        suffixes.add(p.suffix.lower())
        if p.suffix.lower() != ".parquet":
            header = 1 if p.suffix.lower() in (".tsv", ".csv") and cfg.header else 0
            rows = _text_rows(p, split) - header
            if rows <= 0:
                raise DataError(f"split '{split}' is empty: {p} has no data rows; it needs at least one labelled row")
    if len({_BUILDERS[s] for s in suffixes}) > 1:
        raise DataError(f"data.files mixes file types {sorted(suffixes)}; use one format for all splits")
    suffix = suffixes.pop()
    train_file = Path(files[cfg.train_split]).resolve()
    for role, split in roles[1:]:
        if split in files and Path(files[split]).resolve() == train_file and not cfg.allow_split_overlap:
            raise DataError(f"data.files.{split} is the same file as data.files.{cfg.train_split} ({train_file}): "
                            f"its accuracy would be measured on training rows; {_overlap_hint()}")
    want = [c for c in (cfg.text_column, cfg.text_pair_column, cfg.label_column) if c]
    for split, f in files.items():
        first = _first_row(Path(f), suffix)
        if first is None:
            continue
        cols = [str(i) for i in range(len(first))] if not cfg.header and suffix in (".tsv", ".csv") else first
        absent = [c for c in want if c not in cols]
        if not absent:
            continue
        if not cfg.header:
            raise DataError(f"split '{split}' has no column '{absent[0]}': with data.header: false the columns are "
                            f"named by position and {f} has {len(cols)} (0 to {len(cols) - 1}); set "
                            f"data.text_column / data.label_column to positions")
        if suffix in (".tsv", ".csv") and _looks_like_data(first):
            raise DataError(f"split '{split}': this file seems to have no header row ({f}: no column "
                            f"'{absent[0]}', and its first row {_short(first)} looks like data); set "
                            f"data.header: false and name the columns by position (e.g. text_column: 0, "
                            f"label_column: 1)")
        raise DataError(f"split '{split}' has no column '{absent[0]}' (it has {cols}); "
                        f"set data.text_column / data.label_column")
    return files, suffix


def _text_rows(p: Path, split: str) -> int:
    """Non-blank lines of a text data file; :class:`DataError` when it is not UTF-8 text."""
    rows, offset = 0, 0
    with open(p, "rb") as fh:
        head = fh.read(8192)
        if b"\x00" in head:  # text never holds NUL bytes; binary formats (images, archives, pickles) do
            raise DataError(f"data.files.{split}: {p} is not a UTF-8 text file (it holds NUL bytes, from offset "
                            f"{head.index(0)}: a binary file?); give a {p.suffix} text file")
        fh.seek(0)
        for line in fh:  # UTF-8 never puts a newline byte inside a character: lines decode on their own
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"data.files.{split}: {p} is not a UTF-8 text file (byte 0x{line[exc.start]:02x} at "
                                f"offset {offset + exc.start} is not UTF-8); save it as UTF-8") from None
            rows += bool(text.strip())
            offset += len(line)
    return rows


def _first_row(p: Path, suffix: str) -> list[str] | None:
    """First row of a tsv/csv file (its header, when it has one) or the keys of a jsonl file's first
    object; None when not cheap to tell."""
    import csv
    import json

    try:
        with open(p, encoding="utf-8-sig", newline="") as fh:
            if suffix in (".tsv", ".csv"):
                row = next(csv.reader(fh, delimiter="\t" if suffix == ".tsv" else ",", quoting=csv.QUOTE_NONE
                                      if suffix == ".tsv" else csv.QUOTE_MINIMAL), None)
                return [c.strip() for c in row] if row else None
            if suffix == ".jsonl":
                for line in fh:
                    if line.strip():
                        obj = json.loads(line)
                        return list(obj) if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None
    return None


def _looks_like_data(row: list[str]) -> bool:
    """A first row is data, not a header, when a cell is a number or reads like text (3+ words, or long).

    Example:
        >>> _looks_like_data(["sentence", "label"]), _looks_like_data(["a gripping , funny film", "1"])
        (False, True)
    """
    def number(c: str) -> bool:
        try:
            float(c)
        except ValueError:
            return False
        return True

    return any(number(c) or len(c.split()) >= 3 or len(c) > 40 for c in row)


def _short(row: list[str], width: int = 60) -> str:
    text = repr(row)
    return text if len(text) <= width else text[:width - 4] + "...]"


def _load_raw(cfg: DataConfig, cache_dir: str | None) -> Any:
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    checked = check_files(cfg)
    if checked is not None:
        files, suffix = checked
        kw: dict[str, Any] = {}
        if suffix == ".tsv":
            kw = {"delimiter": "\t", "quoting": 3}  # csv.QUOTE_NONE: SST-2 sentences contain quotes
        if suffix in (".tsv", ".csv") and not cfg.header:
            first = _first_row(Path(files[cfg.train_split]), suffix) or []
            kw.update(header=None, column_names=[str(i) for i in range(len(first))])
        try:
            return datasets.load_dataset(_BUILDERS[suffix], data_files=files, cache_dir=cache_dir, **kw)
        except Exception as exc:  # datasets raises many types for unreadable files
            raise DataError(f"cannot read data files {list(files.values())}: {str(exc).splitlines()[0]}") from None
    try:
        ds = datasets.load_dataset(cfg.dataset, cfg.subset, cache_dir=cache_dir)
    except Exception as exc:
        raise DataError(f"cannot load Hub dataset '{cfg.dataset}'"
                        f"{'/' + cfg.subset if cfg.subset else ''}: {str(exc).splitlines()[0]} "
                        "(no network here: use local files under data.files)") from None
    for _, s in _roles(cfg):
        if s not in ds and s != cfg.test_split:
            raise DataError(f"dataset '{cfg.dataset}' has no split '{s}'; it has {list(ds)}")
    return ds


def _label_ids(column: list[Any], split: str, label_col: str, names: list[str] | None) -> tuple[list[int], list[str]]:
    if any(v is None for v in column):
        raise DataError(f"split '{split}': column '{label_col}' has empty labels; every row needs a label")
    if all(isinstance(v, bool) for v in column) or not all(isinstance(v, (int, str)) for v in column):
        bad = next(v for v in column if not isinstance(v, (int, str)) or isinstance(v, bool))
        raise DataError(f"split '{split}': labels in column '{label_col}' must be integers or strings, "
                        f"found {bad!r} ({type(bad).__name__})")
    if all(isinstance(v, int) for v in column):
        if min(column) < 0:
            raise DataError(f"split '{split}': integer labels must be >= 0 in column '{label_col}'")
        if names is None:
            names = [str(i) for i in range(max(column) + 1)]
        ids = list(column)
        if max(ids) >= len(names):
            raise DataError(f"split '{split}': label {max(ids)} not seen in the training split")
        return ids, names
    strs = [str(v) for v in column]
    if names is None:
        names = sorted(set(strs))
    lookup = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(strs) - set(lookup))
    if unknown:
        raise DataError(f"split '{split}': labels {unknown[:5]} do not occur in the training split")
    return [lookup[s] for s in strs], names


def _keep_rows(ds: Any, keep: Callable[[dict[str, Any]], bool], kept: str,
               empty_error: Callable[[int], str]) -> Any:
    """``ds`` narrowed to the rows ``keep`` accepts; :class:`DataError` ``empty_error(rows before)`` when
    none is left."""
    n_all = len(ds)
    ds = ds.filter(keep)
    if len(ds) == 0:
        raise DataError(empty_error(n_all))
    logger.info("validation: %d of %d rows %s", len(ds), n_all, kept)
    return ds


def _check_overlap(cfg: DataConfig, split: str, rows: list[tuple[str, str | None]],
                   train_rows: set[tuple[str, str | None]]) -> None:
    """Refuse a split of which more than :data:`MAX_SPLIT_OVERLAP` of the rows are training rows."""
    shared = sum(r in train_rows for r in rows)
    if not shared:
        return
    frac = shared / len(rows)
    if frac > MAX_SPLIT_OVERLAP and not cfg.allow_split_overlap:
        raise DataError(f"{shared:,} of the {len(rows):,} rows of split '{split}' ({100 * frac:.1f}%) are also rows of "
                        f"the training split '{cfg.train_split}' (more than {100 * MAX_SPLIT_OVERLAP:.0f}%): its "
                        f"accuracy would be measured on training rows; {_overlap_hint()}")
    logger.info("split '%s': %d of %d rows (%.1f%%) are also training rows", split, shared, len(rows), 100 * frac)


_CACHE: dict[tuple, TaskData] = {}


def load_task(cfg: DataConfig, tokenizer: Any, *, cache_dir: str | None = None) -> TaskData:
    """Load, validate and tokenise the configured splits (cached per process).

    Label names come from the data: a ``datasets.ClassLabel`` column's names, the sorted string
    labels, or for integer labels the integers themselves (``"0"``, ``"1"``, ...). A validation or
    test split that shares more than :data:`MAX_SPLIT_OVERLAP` of its rows (text, and text pair)
    with the training rows is refused unless ``cfg.allow_split_overlap``.
    """
    import datasets

    key = (cfg.model_dump_json(), getattr(tokenizer, "name_or_path", id(tokenizer)))
    if key in _CACHE:
        return _CACHE[key]
    raw = _load_raw(cfg, cache_dir)
    out: dict[str, Split | None] = {}
    feature = raw[cfg.train_split].features.get(cfg.label_column) if cfg.train_split in raw else None
    names: list[str] | None = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    named = names is not None
    limits = {cfg.train_split: cfg.max_train_samples, cfg.validation_split: cfg.max_validation_samples,
              cfg.test_split: cfg.max_test_samples}
    train_rows: set[tuple[str, str | None]] = set()
    for role, split in _roles(cfg):
        if split not in raw:
            out[role] = None
            continue
        ds = raw[split]
        cols = [c for c in (cfg.text_column, cfg.text_pair_column, cfg.label_column) if c]
        for c in cols:
            if c not in ds.column_names:
                raise DataError(f"split '{split}' has no column '{c}' (it has {ds.column_names}); "
                                f"set data.text_column / data.label_column")
        if len(ds) == 0:
            raise DataError(f"split '{split}' is empty; it needs at least one labelled row")
        if role == "validation" and cfg.min_validation_words:
            ds = _keep_rows(ds, lambda row: len(str(row[cfg.text_column] or "").split()) >= cfg.min_validation_words,
                            f"have at least {cfg.min_validation_words} words",
                            lambda n: f"data.min_validation_words: {cfg.min_validation_words} leaves none of the "
                                      f"{n} rows of split '{split}'; lower it or remove it")
        if role == "validation" and cfg.exclude_train_overlap:
            seen = "\n".join(str(t or "").strip() for t in raw[cfg.train_split][cfg.text_column])
            ds = _keep_rows(ds, lambda row: str(row[cfg.text_column] or "").strip() not in seen,
                            "do not occur inside a training row",
                            lambda n: f"data.exclude_train_overlap: every one of the {n} remaining rows of split "
                                      f"'{split}' occurs inside a training row; set it to false")
        limit = limits.get(split)
        if limit is not None and limit < len(ds):
            # a fixed, seeded subset: the same rows in every trial
            ds = ds.shuffle(seed=1234).select(range(limit))
        texts = [("" if t is None else str(t)) for t in ds[cfg.text_column]]
        pairs = [("" if t is None else str(t)) for t in ds[cfg.text_pair_column]] if cfg.text_pair_column else None
        column = list(ds[cfg.label_column])
        if role == "train" and not named:
            named = any(isinstance(v, str) for v in column)
        labels, names = _label_ids(column, split, cfg.label_column, names)
        rows = [(t.strip(), None if pairs is None else pairs[i].strip()) for i, t in enumerate(texts)]
        if role == "train":
            train_rows = set(rows)
        else:
            _check_overlap(cfg, split, rows, train_rows)
        enc = tokenizer(texts, pairs, truncation=True, max_length=cfg.max_length)
        out[role] = Split(input_ids=list(enc["input_ids"]), labels=labels)
    if out.get("train") is None or out.get("validation") is None:
        raise DataError("data needs a train and a validation split")
    assert names is not None
    if len(names) < 2:
        raise DataError(f"column '{cfg.label_column}' has a single class {names}; classification needs two or more")
    task = TaskData(train=out["train"], validation=out["validation"], test=out.get("test"),  # type: ignore[arg-type]
                    label_names=names, pad_token_id=int(tokenizer.pad_token_id or 0), names_from_data=named)
    _CACHE[key] = task
    logger.info("data: %d train, %d validation, %s test rows, %d labels", len(task.train), len(task.validation),
                len(task.test) if task.test else "no", task.num_labels)
    return task


def collate(ids: list[list[int]], labels: list[int] | None, pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a list of token id lists to the longest (or to ``pad_to``) and build the attention mask."""
    length = pad_to or max(len(x) for x in ids)
    input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for i, x in enumerate(ids):
        x = x[:length]
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if labels is not None:
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
    return batch


def train_batches(split: Split, batch_size: int, *, seed: int, pad_id: int, padding: str = "bucketed",
                  max_length: int | None = None, bucket_factor: int = 50) -> Iterator[dict[str, torch.Tensor]]:
    """An endless stream of shuffled training batches.

    ``padding``: ``bucketed`` (length-sorted buckets, dynamic padding), ``dynamic`` (random
    batches padded to their longest) or ``max_length`` (every batch padded to ``max_length``).
    """
    rng = random.Random(seed)
    n = len(split)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        if padding == "bucketed":
            chunk = batch_size * bucket_factor
            batches = []
            for start in range(0, n, chunk):
                part = sorted(order[start:start + chunk], key=lambda i: len(split.input_ids[i]))
                batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
            rng.shuffle(batches)
        else:
            batches = [order[j:j + batch_size] for j in range(0, n, batch_size)]
        for b in batches:
            yield collate([split.input_ids[i] for i in b], [split.labels[i] for i in b], pad_id,
                          pad_to=max_length if padding == "max_length" else None)


def eval_batches(split: Split, batch_size: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches over the whole split in length order (labels included), for evaluation."""
    order = sorted(range(len(split)), key=lambda i: len(split.input_ids[i]))
    for j in range(0, len(order), batch_size):
        b = order[j:j + batch_size]
        yield collate([split.input_ids[i] for i in b], [split.labels[i] for i in b], pad_id)
