"""Data loading: formats (local files, a ``dataset:`` folder read by ``datasets.load_dataset``),
header-less files, columns, label types and names, split overlap, bucketing, and one clear error per
bad input."""

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
    rows = {"train": [{"txt": "good movie", "y": "pos"}, {"txt": "bad movie", "y": "neg"}, {"txt": "fine", "y": "pos"}],
            "validation": [{"txt": "a good film", "y": "pos"}, {"txt": "dull", "y": "neg"}]}
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows[split]))
    cfg = DataConfig(files={s: str(tmp_path / f"{s}.jsonl") for s in ("train", "validation")},
                     text_column="txt", label_column="y", test_split=None)
    task = load_task(cfg, tok)
    assert task.label_names == ["neg", "pos"] and task.train.labels == [1, 0, 1] and task.validation.labels == [1, 0]
    assert task.names_from_data


def test_quotes_in_tsv_are_kept_verbatim(tmp_path, tok):
    f = _write(tmp_path / "t.tsv", ['he said " great " and left\t1', 'bad\t0'])
    task = load_task(DataConfig(files={"train": f, "validation": f}, test_split=None, allow_split_overlap=True), tok)
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
    assert len(load_task(DataConfig(files=files, allow_split_overlap=True), tok).validation) == 4
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
    files = {"train": good, "validation": _write(tmp_path / "held_out.tsv", ["fine\t1", "dull\t0"])}
    if case == "missing_file":
        files["train"] = str(tmp_path / "nope.tsv")
    elif case == "missing_column":
        files["train"] = _write(tmp_path / "cols.tsv", ["good\t1"], header="text\tlabel")
        files["validation"] = _write(tmp_path / "cols_v.tsv", ["bad\t0"], header="text\tlabel")
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
    task = load_task(DataConfig(files={"train": f, "validation": f}, test_split=None, max_length=64,
                                allow_split_overlap=True), tok)
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


# ----------------------------------------------------------------------------- a `dataset:` folder (the Hub code path)
def _hub_folder(root: Path, fmt: str) -> Path:
    """A folder ``datasets.load_dataset(folder)`` reads like a Hub dataset: one file per split, named by split."""
    import datasets

    root.mkdir(parents=True, exist_ok=True)
    rows = {"train": [("a great film", 1), ("a dull film", 0), ("lovely", 1), ("awful plot", 0)],
            "validation": [("superb story", 1), ("boring movie", 0)], "test": [("fun", 1), ("sad", 0), ("weak", 0)]}
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    for split, pairs in rows.items():
        ds = datasets.Dataset.from_dict({"sentence": [t for t, _ in pairs], "label": [y for _, y in pairs]},
                                        features=features)
        if fmt == "parquet":
            ds.to_parquet(str(root / f"{split}.parquet"))
        else:  # csv keeps no ClassLabel: string labels
            ds.map(lambda r: {"label": ["negative", "positive"][r["label"]]},
                   features=datasets.Features({"sentence": datasets.Value("string"),
                                               "label": datasets.Value("string")})).to_csv(str(root / f"{split}.csv"),
                                                                                           index=False)
    return root


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_dataset_folder_goes_through_the_hub_path(tmp_path, tok, fmt):
    """``data.dataset`` pointing at a local folder runs exactly the ``load_dataset(id, subset)`` code a Hub
    user runs (it failed with NameError before); label names come from the ClassLabel feature (parquet)
    or the string labels (csv), integer ids keep the ClassLabel's ids."""
    folder = _hub_folder(tmp_path / f"hub_{fmt}", fmt)
    task = load_task(DataConfig(dataset=str(folder)), tok, cache_dir=str(tmp_path / "cache"))
    assert (len(task.train), len(task.validation), len(task.test)) == (4, 2, 3)
    assert task.label_names == ["negative", "positive"] and task.names_from_data
    assert task.train.labels == [1, 0, 1, 0] and task.test.labels == [1, 0, 0]


def test_dataset_folder_errors(tmp_path, tok):
    folder = _hub_folder(tmp_path / "hub_err", "parquet")
    with pytest.raises(DataError, match=r"has no split 'dev'; it has \['train', 'validation', 'test'\]"):
        load_task(DataConfig(dataset=str(folder), validation_split="dev"), tok, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match="data.validation_split is 'train', the training split"):
        load_task(DataConfig(dataset=str(folder), validation_split="train"), tok, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match="cannot load Hub dataset"):
        load_task(DataConfig(dataset=str(tmp_path / "no-such-folder")), tok, cache_dir=str(tmp_path / "c"))


# ----------------------------------------------------------------------------- files without a header row
def test_headerless_files_with_columns_by_position(tmp_path, tok):
    tr = tmp_path / "tr.csv"
    tr.write_text("World,a summit of leaders in the capital\nSports,the team won the final\n"
                  "Business,shares fell sharply\nWorld,floods hit the coast\n")
    va = tmp_path / "va.csv"
    va.write_text("Sports,a record run in the race\nBusiness,the bank raised rates\n")
    cfg = DataConfig(files={"train": str(tr), "validation": str(va)}, test_split=None, header=False,
                     label_column=0, text_column=1)
    task = load_task(cfg, tok)
    assert task.label_names == ["Business", "Sports", "World"]
    assert task.train.labels == [2, 1, 0, 2] and task.validation.labels == [1, 0] and len(task.train) == 4


def test_headerless_tsv_defaults_to_text_then_label(tmp_path, tok):
    tr = _write(tmp_path / "tr.tsv", ["good\t1", "bad\t0", "fine\t1"], header="a great film\t1")
    va = _write(tmp_path / "va.tsv", ["dull\t0"], header="lovely\t1")
    task = load_task(DataConfig(files={"train": tr, "validation": va}, test_split=None, header=False), tok)
    assert len(task.train) == 4 and task.train.labels == [1, 1, 0, 1] and task.label_names == ["0", "1"]


def test_a_first_row_that_looks_like_data_is_named(tmp_path, tok):
    tr = _write(tmp_path / "tr.tsv", ["bad film\t0"], header="a gripping , funny film\t1")
    va = _write(tmp_path / "va.tsv", ["dull\t0"], header="lovely\t1")
    with pytest.raises(DataError) as exc:
        load_task(DataConfig(files={"train": tr, "validation": va}, test_split=None), tok)
    msg = str(exc.value)
    assert "this file seems to have no header row" in msg and "data.header: false" in msg and "tr.tsv" in msg
    # a real header with other names keeps the plain message
    other = _write(tmp_path / "other.tsv", ["good\t1"], header="review\tstars")
    with pytest.raises(DataError, match=r"has no column 'sentence' \(it has \['review', 'stars'\]\)"):
        load_task(DataConfig(files={"train": other, "validation": va}, test_split=None), tok)


def test_headerless_position_out_of_range(tmp_path, tok):
    tr = _write(tmp_path / "tr.tsv", ["bad\t0"], header="good\t1")
    va = _write(tmp_path / "va.tsv", ["dull\t0"], header="fine\t1")
    with pytest.raises(DataError, match="no column '3': with data.header: false .* has 2 \\(0 to 1\\)"):
        load_task(DataConfig(files={"train": tr, "validation": va}, test_split=None, header=False,
                             label_column=3), tok)


# ----------------------------------------------------------------------------- files that are not text
def test_not_utf8_and_binary_files(tmp_path, tok):
    va = _write(tmp_path / "va.tsv", ["dull\t0"])
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("sentence\tlabel\nun film tr\u00e8s r\u00e9ussi\t1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.tsv is not a UTF-8 text file \(byte 0xe8 at offset 25"):
        load_task(DataConfig(files={"train": str(latin), "validation": va}, test_split=None), tok)
    binary = tmp_path / "model.csv"
    binary.write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(range(256)))
    with pytest.raises(DataError, match="model.csv is not a UTF-8 text file .*NUL bytes"):
        load_task(DataConfig(files={"train": str(binary), "validation": str(binary).replace("model", "m2")},
                             test_split=None), tok)


# ----------------------------------------------------------------------------- train rows in validation or test
def test_validation_that_is_the_training_file_is_refused(tmp_path, tok):
    files = make_tiny_data(tmp_path, n_train=40, n_val=10, n_test=10)
    with pytest.raises(DataError, match="data.files.validation is the same file as data.files.train"):
        load_task(DataConfig(files=dict(files, validation=files["train"])), tok)
    with pytest.raises(DataError, match="data.files.test is the same file as data.files.train"):
        load_task(DataConfig(files=dict(files, test=str(Path(files["train"]).parent / "." / "train.tsv"))), tok)
    task = load_task(DataConfig(files=dict(files, validation=files["train"]), allow_split_overlap=True), tok)
    assert len(task.validation) == 40


def test_validation_sharing_many_training_rows_is_refused(tmp_path, tok):
    train_rows = [f"{w} film number {i}\t{i % 2}" for i, w in enumerate(["good", "bad"] * 20)]
    train = _write(tmp_path / "tr.tsv", train_rows)
    new = [f"a new sentence {i}\t{i % 2}" for i in range(19)]
    one = _write(tmp_path / "one.tsv", train_rows[:1] + new)      # 1 of 20 = 5%: accepted
    two = _write(tmp_path / "two.tsv", train_rows[:2] + new[:18])  # 2 of 20 = 10%: refused
    assert len(load_task(DataConfig(files={"train": train, "validation": one}, test_split=None), tok).validation) == 20
    with pytest.raises(DataError, match=r"2 of the 20 rows of split 'validation' \(10.0%\) are also rows of the "
                                        r"training split 'train' \(more than 5%\).*allow_split_overlap"):
        load_task(DataConfig(files={"train": train, "validation": two}, test_split=None), tok)
    assert len(load_task(DataConfig(files={"train": train, "validation": two}, test_split=None,
                                    allow_split_overlap=True), tok).validation) == 20
