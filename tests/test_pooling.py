"""model.pooling: mean — the masked-mean classification head for BERT, through baseline, trial, export."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_tiny_model, tiny_config_dict

from autoprune.config import RunConfig
from autoprune.errors import ModelError
from autoprune.models import load_model
from autoprune.models._pooling import MeanPoolingBertForSequenceClassification


def test_mean_pooling_ignores_padding_and_is_not_the_cls_head(tmp_path):
    d = make_tiny_model(tmp_path / "m")
    mean = load_model(str(d), pooling="mean").eval()
    cls = load_model(str(d)).eval()
    assert isinstance(mean, MeanPoolingBertForSequenceClassification)
    assert not isinstance(cls, MeanPoolingBertForSequenceClassification)
    ids = torch.tensor([[2, 6, 9, 14, 3]])
    padded = torch.tensor([[2, 6, 9, 14, 3, 0, 0, 0]])
    with torch.no_grad():
        a = mean(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        b = mean(input_ids=padded, attention_mask=(padded != 0).long()).logits
        c = cls(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        # by hand: classifier(mean of the last hidden states)
        h = mean.bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        by_hand = mean.classifier(h.mean(dim=1))
    assert torch.allclose(a, b, atol=1e-5)  # padding does not move the mean
    assert torch.allclose(a, by_hand, atol=1e-6)
    assert not torch.allclose(a, c, atol=1e-3)  # same weights, another head
    # the same parameters as the [CLS] model: checkpoints load either way
    assert mean.state_dict().keys() == cls.state_dict().keys()


def test_mean_pooled_baseline_trial_and_export_keep_the_head(tmp_path):
    from autoprune.onnx_export import export_onnx
    from autoprune.serialization import load_pruned
    from autoprune.policy import PruningPolicy
    from autoprune.train import baseline_dir, ensure_baseline
    from autoprune.trial import run_trial

    raw = tiny_config_dict(tmp_path)
    cls_cfg = RunConfig.model_validate(raw)
    cfg = RunConfig.model_validate({**raw, "model": {**raw["model"], "pooling": "mean"}})
    assert cls_cfg.baseline_key() != cfg.baseline_key()  # never shares a cached baseline with the cls head
    bdir = ensure_baseline(cfg, progress=False)
    assert bdir == baseline_dir(cfg)
    assert json.loads((bdir / "config.json").read_text())["autoprune_pooling"] == "mean"
    assert isinstance(load_model(str(bdir)), MeanPoolingBertForSequenceClassification)

    pol = PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5, retrain_steps=4)
    res = run_trial(cfg, pol, save_dir=str(tmp_path / "t"))
    model = load_pruned(tmp_path / "t")
    assert isinstance(model, MeanPoolingBertForSequenceClassification)
    assert res.heads_per_layer == [2, 2] and res.ffn_per_layer == [32, 32]
    ids = torch.randint(5, 30, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
    # the ONNX graph carries the masked mean too
    import numpy as np
    import onnxruntime as ort

    export_onnx(model, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feed = {k: v for k, v in {"input_ids": ids, "attention_mask": mask,
                              "token_type_ids": torch.zeros_like(ids)}.items() if k in names}
    onnx_logits = sess.run(["logits"], {k: v.numpy() for k, v in feed.items()})[0]
    assert np.abs(onnx_logits - got.numpy()).max() <= 1e-4


def test_mean_pooling_is_refused_for_other_families(tmp_path):
    d = make_tiny_model(tmp_path / "distil", "distilbert")
    with pytest.raises(ModelError, match="BERT models only"):
        load_model(str(d), pooling="mean")
