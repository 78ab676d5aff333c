"""Run configuration: validation, path resolution, the fields for files without a header and
fine-tuned models, and a baseline cache key that new fields at their defaults leave unchanged."""

from __future__ import annotations

import pytest

from autoprune.config import RunConfig, config_from_dict, load_config
from autoprune.errors import ConfigError
from conftest import REPO

FILES = {"train": "/data/sst2/train.tsv", "validation": "/data/sst2/validation.tsv", "test": "/data/sst2/test.tsv"}


def _raw(**data) -> dict:
    return {"model": {"name_or_path": "minilm-l6"},
            "data": {"files": dict(FILES), "min_validation_words": 15, "max_validation_samples": 2000, **data},
            "baseline": {"steps": 8000, "learning_rate": 3e-5}}


def test_baseline_key_of_existing_configs_is_unchanged():
    """The keys written by earlier versions (computed before ``header``, ``allow_split_overlap`` and
    ``model.finetuned`` existed): cached baselines stay valid."""
    assert RunConfig.model_validate(_raw()).baseline_key() == "0f20a757447375ff"
    raw = _raw()
    raw["model"]["pooling"] = "mean"
    assert RunConfig.model_validate(raw).baseline_key() == "6eef53d3c3268b49"
    # explicit defaults of the new fields, and a check that only relaxes a check, keep the key
    same = _raw(header=True, allow_split_overlap=True)
    same["model"]["finetuned"] = False
    assert RunConfig.model_validate(same).baseline_key() == "0f20a757447375ff"


def test_baseline_key_of_a_finetuned_model_ignores_training_settings():
    def key(steps: int, finetuned: bool) -> str:
        raw = _raw()
        raw["model"]["finetuned"] = finetuned
        raw["baseline"]["steps"] = steps
        return RunConfig.model_validate(raw).baseline_key()

    assert key(10, True) == key(8000, True)
    assert key(10, True) != key(10, False) and key(10, False) != key(8000, False)


def test_header_false_names_columns_by_position():
    cfg = RunConfig.model_validate(_raw(header=False))
    assert (cfg.data.text_column, cfg.data.label_column) == ("0", "1")
    cfg = RunConfig.model_validate(_raw(header=False, text_column=2, label_column=0, text_pair_column=3))
    assert (cfg.data.text_column, cfg.data.label_column, cfg.data.text_pair_column) == ("2", "0", "3")
    assert cfg.baseline_key() != RunConfig.model_validate(_raw(text_column=2, label_column=0,
                                                               text_pair_column=3)).baseline_key()


@pytest.mark.parametrize("data, needle", [
    ({"files": {"train": "t.jsonl", "validation": "v.jsonl"}, "header": False}, "applies to local .tsv/.csv files"),
    ({"dataset": "glue", "subset": "sst2", "header": False}, "applies to local .tsv/.csv files"),
    ({"files": {}}, "'files' is empty"),
    ({"subset": "sst2"}, "either 'files'"),
    ({"files": {"train": "t.tsv", "validation": "v.tsv"}, "max_length": 4}, "field 'data.max_length'"),
    ({"files": {"train": "t.tsv", "validation": "v.tsv"}, "label_column": True}, "field 'data.label_column'"),
])
def test_bad_data_config(data, needle):
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"data": data}, "cfg.yaml")
    assert needle in str(exc.value) and str(exc.value).startswith("cfg.yaml: ")


def test_finetuned_example_config_resolves_the_model_against_its_folder():
    cfg = load_config(REPO / "search_spaces" / "minilm_sst2_finetuned.yaml")
    assert cfg.model.finetuned
    assert cfg.model.name_or_path == str((REPO / ".." / "shared" / "models" / "minilm-l6-sst2").resolve())
    assert cfg.data.files["train"] == str((REPO / ".." / "shared" / "data" / "sst2" / "train.tsv").resolve())
    assert cfg.run_dir == "runs"


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("model: {name_or_path: ./m, finetuned: true}\n"
                                             "data: {files: {train: d/t.tsv, validation: /abs/v.tsv}}\n")
    cfg = load_config(tmp_path / "sub" / "c.yaml")
    assert cfg.model.name_or_path == str(tmp_path / "sub" / "m")
    assert cfg.data.files == {"train": str(tmp_path / "sub" / "d" / "t.tsv"), "validation": "/abs/v.tsv"}


def test_unknown_field_and_folder_given_as_config(tmp_path):
    with pytest.raises(ConfigError, match="field 'model.fine_tuned'"):
        config_from_dict({"model": {"fine_tuned": True}, "data": {"dataset": "x"}})
    with pytest.raises(ConfigError, match="is a folder; give the YAML file"):
        load_config(tmp_path)
