"""Data loading: formats, columns, label types, bucketing, and one clear error per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoprune.config import DataConfig
from autoprune.data import eval_batches, load_task, train_batches
from autoprune.errors import DataError
from conftest import make_tiny_data, make_tiny_model


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tiny_model(tmp_path_factory.mktemp("m"), "bert"))


def _write(path, rows, header="sentence\tlabel"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


def test_tsv_loads_and_tokenises(tmp_path, tok):
    files = make_tiny_data(tmp_path, n_train=40, n_val=10, n_test=10)
    task = load_task(DataConfig(files=files, max_length=16), tok)
    assert (len(task.train), len(task.validation), len(task.test)) == (40, 10, 10)
    assert task.label_names == ["0", "1"] and task.num_labels == 2
    assert all(ids[0] == tok.cls_token_id for ids in task.train.input_ids)


def test_jsonl_with_string_labels_and_custom_columns(tmp_path, tok):
    rows = [{"txt": "good movie", "y": "pos"}, {"txt": "bad movie", "y": "neg"}, {"txt": "fine", "y": "pos"}]
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DataConfig(files={s: str(tmp_path / f"{s}.jsonl") for s in ("train", "validation")},
                     text_column="txt", label_column="y", test_split=None)
    task = load_task(cfg, tok)
    assert task.label_names == ["neg", "pos"] and task.train.labels == [1, 0, 1]


def test_quotes_in_tsv_are_kept_verbatim(tmp_path, tok):
    f = _write(tmp_path / "t.tsv", ['he said " great " and left\t1', 'bad\t0'])
    task = load_task(DataConfig(files={"train": f, "validation": f}, test_split=None), tok)
    assert len(task.train) == 2


def test_fixed_validation_subset_is_the_same_every_time(tmp_path, tok):
    files = make_tiny_data(tmp_path, n_train=40, n_val=30, n_test=5)
    a = load_task(DataConfig(files=files, max_validation_samples=10), tok)
    from autoprune import data as data_mod

    data_mod._CACHE.clear()
    b = load_task(DataConfig(files=files, max_validation_samples=10), tok)
    assert len(a.validation) == 10 and a.validation.input_ids == b.validation.input_ids


def test_min_validation_words_keeps_full_sentences_only(tmp_path, tok):
    files = make_tiny_data(tmp_path, n_train=40, n_val=5, n_test=5)
    rows = ["sentence\tlabel", "good\t1", "a bad film\t0", "a good film with a plot\t1", "bad bad bad bad\t0",
            "one two three four five six\t1"]
    files["validation"] = str(tmp_path / "val_mixed.tsv")
    Path(files["validation"]).write_text("\n".join(rows) + "\n")
    task = load_task(DataConfig(files=files, min_validation_words=4), tok)
    assert task.validation.labels == [1, 0, 1]  # the rows of 6, 4 and 6 words, in file order
    capped = load_task(DataConfig(files=files, min_validation_words=4, max_validation_samples=2), tok)
    assert len(capped.validation) == 2
    with pytest.raises(DataError, match="min_validation_words: 7 leaves none of the 5 rows"):
        load_task(DataConfig(files=files, min_validation_words=7), tok)


def test_exclude_train_overlap_drops_validation_rows_seen_inside_training_rows(tmp_path, tok):
    train = _write(tmp_path / "tr.tsv", ["a thoroughly good film with a plot\t1", "bad acting\t0", "dull\t0"])
    val = _write(tmp_path / "va.tsv", ["good film with a plot\t1",      # inside training row 1
                                       "bad acting\t0",                # a training row itself
                                       "a plot twist nobody saw\t1",    # new text
                                       "dull and long\t0"])             # contains a training row, is not inside one
    files = {"train": train, "validation": val}
    task = load_task(DataConfig(files=files, exclude_train_overlap=True), tok)
    assert task.validation.labels == [1, 0] and len(task.validation) == 2
    assert len(load_task(DataConfig(files=files), tok).validation) == 4
    only_seen = _write(tmp_path / "seen.tsv", ["bad acting\t0", "dull\t0"])
    with pytest.raises(DataError, match="exclude_train_overlap: every one of the 2 remaining rows"):
        load_task(DataConfig(files={"train": train, "validation": only_seen}, exclude_train_overlap=True), tok)


@pytest.mark.parametrize("case, fragment", [
    ("missing_file", "file not found"),
    ("missing_column", "has no column 'sentence'"),
    ("empty_split", "is empty"),
    ("float_labels", "must be integers or strings"),
    ("bad_suffix", "unsupported file type"),
    ("no_validation", "no entry for split(s) ['validation']"),
])
def test_bad_data_gets_one_clear_error(tmp_path, tok, case, fragment):
    good = _write(tmp_path / "good.tsv", ["good\t1", "bad\t0"])
    files = {"train": good, "validation": good}
    if case == "missing_file":
        files["train"] = str(tmp_path / "nope.tsv")
    elif case == "missing_column":
        files["train"] = _write(tmp_path / "cols.tsv", ["good\t1"], header="text\tlabel")
        files["validation"] = files["train"]
    elif case == "empty_split":
        files["validation"] = _write(tmp_path / "empty.tsv", [])
    elif case == "float_labels":
        files["train"] = _write(tmp_path / "f.tsv", ["good\t0.5", "bad\t1.5"])
    elif case == "bad_suffix":
        (tmp_path / "x.xlsx").write_text("x")
        files["train"] = str(tmp_path / "x.xlsx")
    elif case == "no_validation":
        del files["validation"]
    with pytest.raises(DataError, match=None) as exc:
        load_task(DataConfig(files=files, test_split=None), tok)
    assert fragment in str(exc.value)


def test_bucketed_batches_pad_less_and_cover_the_data(tmp_path, tok):
    import random

    rng = random.Random(0)
    rows = [" ".join(["good"] * rng.randint(1, 40)) + f"\t{i % 2}" for i in range(400)]
    f = _write(tmp_path / "long.tsv", rows)
    task = load_task(DataConfig(files={"train": f, "validation": f}, test_split=None, max_length=64), tok)
    n_batches = 400 // 16
    def padded_tokens(padding):
        it = train_batches(task.train, 16, seed=0, pad_id=0, padding=padding, max_length=64)
        return sum(next(it)["input_ids"].numel() for _ in range(n_batches))
    bucketed, dynamic, fixed = padded_tokens("bucketed"), padded_tokens("dynamic"), padded_tokens("max_length")
    assert fixed == 400 * 64
    assert bucketed < dynamic < fixed
    seen = sum(b["labels"].numel() for b in eval_batches(task.validation, 64, 0))
    assert seen == 400


def test_real_sst2_loads(sst2_dir, tok):
    cfg = DataConfig(files={s: str(sst2_dir / f"{s}.tsv") for s in ("train", "validation", "test")},
                     max_train_samples=500, max_validation_samples=200)
    task = load_task(cfg, tok)
    assert len(task.test) == 872 and len(task.train) == 500 and task.label_names == ["0", "1"]
