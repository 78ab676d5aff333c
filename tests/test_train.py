"""The dense baseline: training once and caching, a model brought already fine-tuned (cached as it
is, its classifier checked against the data), label names carried into every saved model, checks of
the config against the model before any training, and the thread count of a lone baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autoprune import train
from autoprune.config import RunConfig
from autoprune.errors import ConfigError, DataError, ModelError
from conftest import REPO, make_tiny_model, tiny_config_dict

MINILM_SST2 = (REPO / ".." / "shared" / "models" / "minilm-l6-sst2").resolve()
NEWS = ["World", "Sports", "Business", "SciTech"]


def _write_rows(path: Path, rows: list[tuple[str, str]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("sentence\tlabel\n" + "\n".join(f"{t}\t{y}" for t, y in rows) + "\n")
    return str(path)


def string_label_data(root: Path, names: list[str], n: int = 48) -> dict[str, str]:
    """A learnable task whose labels are the strings ``names`` (class k: words containing a k-th marker)."""
    markers = ["good", "bad", "fine", "dull", "great", "awful"][: len(names)]
    files = {}
    for split, count, start in (("train", n, 0), ("validation", n // 4, 1000), ("test", n // 4, 2000)):
        rows = [(f"the {markers[i % len(names)]} movie {'very ' * ((start + i) % 7)}number{start + i}",
                 names[i % len(names)]) for i in range(count)]
        files[split] = _write_rows(root / f"{split}.tsv", rows)
    return files


def _config(tmp_path: Path, model_dir: Path | None = None, files: dict | None = None, **over) -> RunConfig:
    raw = tiny_config_dict(tmp_path, baseline_steps=5)
    if model_dir is not None:
        raw["model"] = {"name_or_path": str(model_dir)}
    if files is not None:
        raw["data"]["files"] = files
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k] = {**raw[k], **v}
        else:
            raw[k] = v
    return RunConfig.model_validate(raw)


def _named(model_dir: Path, id2label: dict[int, str]) -> Path:
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["id2label"] = {str(k): v for k, v in id2label.items()}
    cfg["label2id"] = {v: k for k, v in id2label.items()}
    (model_dir / "config.json").write_text(json.dumps(cfg))
    return model_dir


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a fine-tuned model must not be trained")

    monkeypatch.setattr(train, "finetune", refuse)


# ----------------------------------------------------------------------------- bring your own fine-tuned model
def test_finetuned_model_is_evaluated_and_cached_as_it_is(tmp_path, no_training):
    model_dir = make_tiny_model(tmp_path / "byo", "bert", seed=3)
    cfg = _config(tmp_path, model_dir, model={"finetuned": True})
    out = train.ensure_baseline(cfg, progress=False)
    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    m = json.loads((out / "metrics.json").read_text())
    assert m["finetuned"] is True and m["steps"] == 0 and m["settings"] is None and m["final_loss"] is None
    assert m["label_names"] == ["0", "1"] and m["validation_n"] == 64 and m["test_n"] == 64
    # integer labels keep their integers as names in the cached model
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "0", "1": "1"}
    assert train.ensure_baseline(cfg, progress=False) == out  # cached: not evaluated again


def test_finetuned_label_count_mismatch_is_one_error_naming_both(tmp_path, no_training):
    model_dir = make_tiny_model(tmp_path / "three", "bert", num_labels=3)
    cfg = _config(tmp_path, model_dir, model={"finetuned": True})
    with pytest.raises(DataError) as exc:
        train.ensure_baseline(cfg, progress=False)
    msg = str(exc.value)
    assert "has 3 labels" in msg and "the data has 2 ['0', '1']" in msg and str(model_dir) in msg
    assert not train.baseline_dir(cfg).exists()


def test_finetuned_label_names_must_match_and_set_the_order(tmp_path, no_training):
    files = string_label_data(tmp_path / "data_np", ["neg", "pos"])
    model_dir = _named(make_tiny_model(tmp_path / "named", "bert"), {0: "pos", 1: "neg"})
    cfg = _config(tmp_path, model_dir, files, model={"finetuned": True})
    task = train.load_task_data(cfg)
    assert task.label_names == ["pos", "neg"]
    assert task.train.labels[:2] == [1, 0]  # row 0 is 'neg', row 1 'pos': the checkpoint's ids
    out = train.ensure_baseline(cfg, progress=False)
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "pos", "1": "neg"}

    other = string_label_data(tmp_path / "data_gb", ["bad", "good"])
    with pytest.raises(DataError) as exc:
        train.ensure_baseline(_config(tmp_path, model_dir, other, model={"finetuned": True}), progress=False)
    assert "has labels ['pos', 'neg']" in str(exc.value) and "the data's labels are ['bad', 'good']" in str(exc.value)


def test_finetuned_names_are_kept_for_integer_labels(tmp_path, no_training):
    model_dir = _named(make_tiny_model(tmp_path / "named_int", "bert"), {0: "negative", 1: "positive"})
    out = train.ensure_baseline(_config(tmp_path, model_dir, model={"finetuned": True}), progress=False)
    assert json.loads((out / "metrics.json").read_text())["label_names"] == ["negative", "positive"]
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}


def test_finetuned_pooling_must_be_the_recorded_one(tmp_path, no_training):
    model_dir = make_tiny_model(tmp_path / "mean", "bert")
    cfg_json = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**cfg_json, "autoprune_pooling": "mean"}))
    with pytest.raises(ConfigError, match="trained with 'mean' pooling .* set model.pooling: mean"):
        train.ensure_baseline(_config(tmp_path, model_dir, model={"finetuned": True}), progress=False)


@pytest.mark.sst2
def test_minilm_sst2_checkpoint_as_a_finetuned_baseline(tmp_path, sst2_dir, no_training):
    """The provided MiniLM-L6 / SST-2 checkpoint works as a brought model with the SST-2 files: cached
    unchanged, and it classifies (a few hundred validation and test rows, no training)."""
    if not (MINILM_SST2 / "model.safetensors").is_file():
        pytest.skip(f"fine-tuned MiniLM-L6 / SST-2 checkpoint not found at {MINILM_SST2}")
    raw = {"model": {"name_or_path": str(MINILM_SST2), "finetuned": True},
           "data": {"files": {s: str(sst2_dir / f"{s}.tsv") for s in ("train", "validation", "test")},
                    "max_train_samples": 200, "min_validation_words": 15, "max_validation_samples": 300,
                    "max_test_samples": 300},
           "run_dir": str(tmp_path / "runs"), "eval_batch_size": 100, "torch_threads": 1}
    cfg = RunConfig.model_validate(raw)
    out = train.ensure_baseline(cfg, progress=False)
    m = json.loads((out / "metrics.json").read_text())
    # the checkpoint scored 0.9586 on all 1,496 such validation rows and 0.8945 on the 872 test sentences
    assert m["validation_n"] == 300 and m["validation_accuracy"] > 0.9
    assert m["test_n"] == 300 and m["test_accuracy"] > 0.85
    before, after = load_file(str(MINILM_SST2 / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert sorted(before) == sorted(after) and all(torch.equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------- label names in every saved model
def test_string_label_names_reach_baseline_trial_model_and_export(tmp_path):
    import optuna

    from autoprune import _study as S
    from autoprune.export import Selector, export_trial
    from autoprune.serialization import load_pruned
    from autoprune.policy import PruningPolicy
    from autoprune.trial import run_trial

    files = string_label_data(tmp_path / "news", NEWS)
    cfg = _config(tmp_path, files=files)
    out = train.ensure_baseline(cfg, progress=False)
    expected = {str(i): n for i, n in enumerate(sorted(NEWS))}
    assert json.loads((out / "config.json").read_text())["id2label"] == expected
    pol = PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5, retrain_steps=2)
    res = run_trial(cfg, pol, save_dir=str(tmp_path / "trial"))
    assert json.loads((tmp_path / "trial" / "config.json").read_text())["id2label"] == expected
    assert load_pruned(tmp_path / "trial").config.id2label == {int(k): v for k, v in expected.items()}

    study = optuna.create_study(directions=S.DIRECTIONS)
    study.set_user_attr(S.ATTR_CONFIG, cfg.model_dump(mode="json"))
    rd = res.to_dict()
    study.add_trial(optuna.trial.create_trial(
        values=[rd["accuracy"], rd["speedup"]], params={"x": 0.0},
        distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
        user_attrs={S.T_POLICY: pol.to_dict(), S.T_SUMMARY: pol.summary(), S.T_RESULT: rd}))
    exp = export_trial(study, Selector.parse(trial=0), tmp_path / "export")
    assert json.loads((exp / "config.json").read_text())["id2label"] == expected
    assert "0 = `Business`, 1 = `SciTech`, 2 = `Sports`, 3 = `World`" in (exp / "README.md").read_text()


# ----------------------------------------------------------------------------- checks before any training
@pytest.mark.parametrize("over, needle", [
    ({"data": {"max_length": 256}}, "data.max_length is 256, above the model's limit of 128 tokens"),
    ({"measure": {"seq_len": 129}}, "measure.seq_len is 129, above the model's limit of 128 tokens"),
])
def test_lengths_above_the_position_limit_fail_before_training(tmp_path, monkeypatch, over, needle):
    monkeypatch.setattr(train, "finetune", lambda *a, **k: pytest.fail("trained before checking"))
    cfg = _config(tmp_path, **over)
    with pytest.raises(ConfigError) as exc:
        train.ensure_baseline(cfg, progress=False)
    assert needle in str(exc.value) and "max_position_embeddings 128" in str(exc.value)
    with pytest.raises(ConfigError, match="above the model's limit"):
        train.check_config(cfg)
    assert not (tmp_path / "runs" / "baselines").exists()


def test_roberta_position_limit_leaves_out_the_padding_offset(tmp_path):
    raw = tiny_config_dict(tmp_path, "roberta")  # 130 position embeddings from pad_token_id 0 + 1: 129 tokens
    raw["data"]["max_length"] = 129
    train.check_model_fits(RunConfig.model_validate(raw))
    raw["data"]["max_length"] = 130
    with pytest.raises(ConfigError, match="limit of 129 tokens"):
        train.check_model_fits(RunConfig.model_validate(raw))


def test_tokenizer_that_does_not_fit_the_model(tmp_path):
    from transformers import BertTokenizerFast

    from conftest import VOCAB

    model_dir = make_tiny_model(tmp_path / "vocab", "bert")
    (model_dir / "vocab.txt").write_text("\n".join(VOCAB + ["zebra"]) + "\n")
    BertTokenizerFast(vocab=str(model_dir / "vocab.txt"), do_lower_case=True).save_pretrained(model_dir)
    files = string_label_data(tmp_path / "zebra", ["a", "b"])
    Path(files["train"]).write_text(Path(files["train"]).read_text() + "a zebra film\ta\n")
    with pytest.raises(ModelError, match=f"gives token id {len(VOCAB)}, but the model's embedding has "
                                         f"{len(VOCAB)} rows"):
        train.check_config(_config(tmp_path, model_dir, files))


def test_unwritable_run_dir_is_one_error(tmp_path, readonly_dir):
    cfg = _config(tmp_path, run_dir=str(readonly_dir / "runs"))
    with pytest.raises(ConfigError, match="run_dir .*: cannot write .*set run_dir in the run config"):
        train.ensure_baseline(cfg, progress=False)


# ----------------------------------------------------------------------------- threads of a lone baseline
@pytest.mark.parametrize("threads", [None, 1])
def test_lone_baseline_threads_default_to_the_cpus_it_may_use(tmp_path, monkeypatch, threads):
    seen = []
    real = train.finetune

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(train, "finetune", spy)
    before = torch.get_num_threads()
    out = train.ensure_baseline(_config(tmp_path, torch_threads=threads), progress=False)
    want = threads or train.available_cpus()
    assert seen == [want] and json.loads((out / "metrics.json").read_text())["torch_threads"] == want
    assert torch.get_num_threads() == before  # restored for the caller
