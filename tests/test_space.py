"""Search-space parameters for layer dropping and reconstruction: off by default, so existing spaces draw the same."""

from __future__ import annotations

import optuna
import pytest

from autoprune.errors import ConfigError
from autoprune.search._space import space_from_dict

optuna.logging.set_verbosity(optuna.logging.WARNING)
BASE = {"config": {"data": {"files": {"train": "t.tsv", "validation": "v.tsv"}}}, "criteria": ["l1"]}


def _draw(raw: dict, n: int = 6) -> list[tuple[dict, object]]:
    space = space_from_dict(raw)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        pol = space.sample_policy(trial, 4)
        out.append((trial.params, pol))
    return out


def test_defaults_add_no_parameter():
    for params, pol in _draw(BASE):
        assert "drop_layers" not in params and "reconstruct" not in params and "keep_best" not in params
        assert pol.retrain.keep_best is False
        assert pol.drop_layer_count == 0 and pol.reconstruct == "none"
        assert "drop_layer_count" not in pol.to_dict() and "reconstruct" not in pol.to_dict()


def test_drop_layers_and_reconstruct_are_searched_when_asked():
    raw = {**BASE, "structured": {"drop_layers": {"max": 2}}, "reconstruct": ["none", "least_squares"]}
    draws = _draw(raw, 12)
    counts = {pol.drop_layer_count for _, pol in draws}
    assert counts <= {0, 1, 2} and len(counts) > 1
    assert all(params["drop_layers"] == pol.drop_layer_count for params, pol in draws)
    assert {pol.reconstruct for _, pol in draws} == {"none", "least_squares"}
    space = space_from_dict(raw)
    with pytest.raises(ConfigError, match="drop_layers.max' = 2 would remove every one of the model's 2"):
        space.check_depth(2)
    with pytest.raises(ConfigError, match="min 3 is above max 2"):
        space_from_dict({**BASE, "structured": {"drop_layers": {"min": 3, "max": 2}}})


def test_keep_best_is_fixed_or_searched():
    fixed = _draw({**BASE, "retrain": {"keep_best": True}})
    assert all(pol.retrain.keep_best is True and "keep_best" not in params for params, pol in fixed)
    searched = _draw({**BASE, "retrain": {"keep_best": [False, True]}}, 12)
    assert {pol.retrain.keep_best for _, pol in searched} == {False, True}
    assert all(params["keep_best"] == pol.retrain.keep_best for params, pol in searched)
    with pytest.raises(ConfigError, match="keep_best"):
        space_from_dict({**BASE, "retrain": {"keep_best": []}})
