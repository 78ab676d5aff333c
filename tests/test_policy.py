"""PruningPolicy and RunConfig: round trips and one clear error per bad input."""

from __future__ import annotations

import pytest

from autoprune.config import config_from_dict, load_config
from autoprune.errors import ConfigError, PolicyError
from autoprune.policy import PruningPolicy


def test_yaml_and_json_round_trip(tmp_path):
    p = PruningPolicy(criterion="gradient", head_sparsity=[0.0, 0.25, 0.5], ffn_sparsity=[0.1, 0.2, 0.3],
                      iterative_steps=3, retrain={"steps": 77, "learning_rate": 1e-4, "warmup_ratio": 0.2},
                      distillation={"weight": 0.7, "temperature": 3.0}, quantize=True, seed=5)
    assert PruningPolicy.from_yaml(p.to_yaml()) == p
    assert PruningPolicy.from_json(p.to_json()) == p
    for name in ("p.yaml", "p.json"):
        p.save(tmp_path / name)
        assert PruningPolicy.load(tmp_path / name) == p


def test_exported_policy_file_reads_policy_key(tmp_path):
    p = PruningPolicy.uniform("l2", 2, heads=0.5, ffn=0.5)
    (tmp_path / "policy.yaml").write_text("metrics:\n  accuracy: 0.9\npolicy:\n" +
                                          "".join(f"  {line}\n" for line in p.to_yaml().splitlines()))
    assert PruningPolicy.load(tmp_path / "policy.yaml") == p


@pytest.mark.parametrize("data, fragment", [
    ({"criterion": "magnitude", "head_sparsity": [0.5]}, "criterion"),
    ({"criterion": "l1", "head_sparsity": [0.5, 1.5]}, "head_sparsity[1]' = 1.5 is outside [0, 1]"),
    ({"criterion": "l1", "granularity": "unstructured", "weight_sparsity": [0.5, 1.0]},
     "weight_sparsity[1]' = 1.0 is outside [0, 1)"),
    ({"criterion": "l1", "ffn_sparsity": [-0.1]}, "outside [0, 1]"),
    ({"criterion": "l1", "granularity": "blocks", "head_sparsity": [0.5]}, "granularity"),
    ({"criterion": "l1"}, "needs 'head_sparsity' and/or 'ffn_sparsity'"),
    ({"criterion": "l1", "granularity": "unstructured"}, "needs 'weight_sparsity'"),
    ({"criterion": "l1", "head_sparsity": [0.1, 0.2], "ffn_sparsity": [0.1]}, "give one value per encoder layer"),
    ({"criterion": "l1", "head_sparsity": [0.1], "bogus": 1}, "bogus"),
])
def test_bad_policies_get_one_clear_error(data, fragment):
    with pytest.raises(PolicyError) as exc:
        PruningPolicy.from_dict(data, "my_policy.yaml")
    assert "my_policy.yaml" in str(exc.value)
    assert fragment in str(exc.value)


def test_per_layer_length_must_match_model():
    p = PruningPolicy.uniform("l1", 4, heads=0.5, ffn=0.5)
    p.check_layers(4)
    with pytest.raises(PolicyError, match="has 4 entries but the model has 6 encoder layers"):
        p.check_layers(6)


def test_malformed_policy_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("criterion: l1\nhead_sparsity: [0.5\n")
    with pytest.raises(PolicyError, match="malformed YAML at line"):
        PruningPolicy.load(bad)
    with pytest.raises(PolicyError, match="file not found"):
        PruningPolicy.load(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(PolicyError, match="expected a YAML mapping"):
        PruningPolicy.load(tmp_path / "list.yaml")


def test_config_resolves_relative_paths_and_rejects_unknown_fields(tmp_path):
    (tmp_path / "d").mkdir()
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("data:\n  files: {train: d/t.tsv, validation: d/v.tsv}\n")
    cfg = load_config(cfg_file)
    assert cfg.data.files["train"] == str(tmp_path / "d" / "t.tsv")
    with pytest.raises(ConfigError, match="field 'data.colums'"):
        config_from_dict({"data": {"files": {"train": "x"}, "colums": 1}}, "c.yaml")
    with pytest.raises(ConfigError, match="needs either 'files'"):
        config_from_dict({"data": {}}, "c.yaml")
    with pytest.raises(ConfigError, match="field 'measure.batch_size'"):
        config_from_dict({"data": {"dataset": "glue"}, "measure": {"batch_size": 0}}, "c.yaml")


def test_shipped_example_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "search_spaces" / "minilm_sst2_config.yaml")
    assert cfg.model.name_or_path == "minilm-l6"
    assert cfg.data.files["test"].endswith("sst2/test.tsv")


def test_shipped_example_policy_fits_minilm_depth():
    from pathlib import Path

    p = PruningPolicy.load(Path(__file__).resolve().parents[1] / "search_spaces" / "example_policy.yaml")
    p.check_layers(6)  # MiniLM-L6
    assert p.distillation is not None and p.retrain.steps == 600
