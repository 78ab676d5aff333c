"""Search service end to end on a real Ray: spaces, a search with failures and early stops, a dead
worker, an interrupted and a SIGKILLed driver, the real trial; also the GP sampler and the status CLI.

One local Ray session is shared by the whole module (``ray.init`` costs seconds); trials are the
fast fake from ``autoprune.search._fake`` except in the end-to-end test, which runs the real
``run_trial`` on the tiny model. The driver's own logic (lease, orphans, duplicates, accounting) is
tested without Ray in tests/test_search_driver.py.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_config_dict

optuna = pytest.importorskip("optuna")
ray = pytest.importorskip("ray")

from optuna.trial import TrialState  # noqa: E402

from autoprune import _study as S  # noqa: E402
from autoprune.errors import ConfigError, StudyError  # noqa: E402
from autoprune.search import (InProcessExecutor, SearchSpace, load_search_space, mask_url, open_study,  # noqa: E402
                              resume, run_search, space_from_dict, study_status)
from autoprune.search._dispatch import EarlyStopRule  # noqa: E402
from autoprune.search._driver import counted  # noqa: E402
from autoprune.search._fake import fake_trial  # noqa: E402
from autoprune.search._storage import ATTR_LEASE  # noqa: E402

DENSE = {"accuracy": 0.9, "macro_f1": 0.89}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A raw tiny RunConfig mapping shared by the module (model, data)."""
    return tiny_config_dict(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """One quiet local Ray (2 CPUs) for the module; run_search reuses it and leaves it running."""
    tmp = Path("/tmp") / f"ap_test_ray_{os.getpid()}"
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             _temp_dir=str(tmp), _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def make_space(tiny, tmp_path, **over) -> SearchSpace:
    cfg = dict(tiny, run_dir=str(tmp_path / "runs"))
    raw = {"config": cfg, "criteria": ["l1", "l2"], "n_trials": 6, "trials_in_flight": 2, "sampler": "random",
           "retrain": {"steps": [10, 20]}, "structured": {"heads": {"base": [0.0, 0.5]}, "ffn": {"mode": "free"}}}
    raw.update(over)
    return space_from_dict(raw, str(tmp_path / "space.yaml"), tmp_path)


def storage_of(tmp_path, name="s") -> str:
    return f"sqlite:///{tmp_path / 'runs' / (name + '.db')}"


# ----------------------------------------------------------------------------- spaces
def test_space_file_and_sampling(tiny, tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(tiny))
    (tmp_path / "sp.yaml").write_text(yaml.safe_dump({
        "config": "run.yaml", "criteria": ["l1", "gradient"], "granularities": ["structured", "unstructured"],
        "structured": {"heads": {"mode": "profile", "base": [0.5, 0.5], "slope": [0.6, 0.6], "range": [0.0, 0.7]},
                       "ffn": {"mode": "free", "range": [[0.1, 0.1], [0.2, 0.4]]}},
        "distillation": {"enabled": [True], "weight": [0.3, 0.6]}, "quantize": [False, True], "qat": [False, True]}))
    space = load_search_space(tmp_path / "sp.yaml")
    assert space.run_config().model.name_or_path == tiny["model"]["name_or_path"]
    study = optuna.create_study(directions=S.DIRECTIONS, sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    quant: set[tuple[bool, bool]] = set()
    for _ in range(20):
        trial = study.ask()
        pol = space.sample_policy(trial, 2)
        pol.check_layers(2)
        seen.add(pol.granularity)
        quant.add((pol.quantize, pol.qat))
        assert ("qat" in trial.params) == pol.quantize  # qat is drawn only for int8 policies
        assert pol.distillation is not None and pol.distillation.weight in (0.3, 0.6)
        if pol.granularity == "structured":
            assert pol.head_sparsity == [0.5, 0.7]  # 0.5 + 0.6 clipped to the range's 0.7
            assert pol.ffn_sparsity[0] == 0.1 and 0.2 <= pol.ffn_sparsity[1] <= 0.4
        else:
            assert len(pol.weight_sparsity) == 2
    assert seen == {"structured", "unstructured"}
    assert quant == {(False, False), (True, False), (True, True)}


@pytest.mark.parametrize("over,needle", [
    ({"sampler": "cmaes"}, "field 'sampler'"),
    ({"criteria": []}, "field 'criteria'"),
    ({"structured": {"heads": {"base": [0.8, 0.2]}}}, "field 'structured.heads'"),
    ({"trials_in_flight": 0}, "field 'trials_in_flight'"),
    ({"objectives": ["accuracy"]}, "field 'objectives'"),
    ({"bogus": 1}, "field 'bogus'"),
    ({"config": {"data": {}}}, "field 'config'"),
])
def test_bad_space_clear_error(tiny, tmp_path, over, needle):
    raw = {"config": tiny, **over}
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as ei:
        load_search_space(f)
    assert str(f) in str(ei.value) and needle in str(ei.value)


def test_bad_space_creates_no_study(tiny, tmp_path):
    # per-layer ranges for 3 layers but the tiny model has 2: caught before any study exists
    space = make_space(tiny, tmp_path, structured={"ffn": {"mode": "free", "range": [[0, .5]] * 3}})
    with pytest.raises(ConfigError, match="3 per-layer pairs but the model has 2"):
        run_search(space, study_name="s", trial_fn=fake_trial, dense_metrics=DENSE, progress=False)
    assert not (tmp_path / "runs" / "s.db").exists()
    missing = make_space(tiny, tmp_path, config="nope.yaml")
    with pytest.raises(ConfigError, match="nope.yaml not found"):
        run_search(missing, study_name="s", progress=False)


def test_mask_url_and_unknown_study(tmp_path):
    assert mask_url("postgresql://u:p%40ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_url("postgresql+psycopg2://u:secret@h/db") == "postgresql+psycopg2://u:***@h/db"
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    url = f"sqlite:///{tmp_path / 'x.db'}"
    optuna.create_study(study_name="alpha", storage=url, directions=S.DIRECTIONS)
    with pytest.raises(StudyError, match="study 'beta' not found.*existing studies: alpha"):
        open_study(url, "beta")
    with pytest.raises(StudyError, match="no study storage"):
        open_study(f"sqlite:///{tmp_path / 'none.db'}", "alpha")


def test_early_stop_rule():
    rule = EarlyStopRule(floor=0.85, budget_steps=100, margin=0.02, min_fraction=0.5)
    assert rule(10, 0.1) is False  # too early to judge
    assert rule(50, 0.84) is False  # within the margin
    assert rule(50, 0.80) is True and "below the floor" in rule.reason
    assert rule.history == [[10, 0.1], [50, 0.84], [50, 0.80]]
    assert EarlyStopRule(None, 100)(100, 0.0) is False


# ----------------------------------------------------------------------------- driver on Ray
def test_search_completes_with_front_failures_and_prunes(tiny, tmp_path, ray_local):
    space = make_space(tiny, tmp_path, criteria=["l1", "l2", "random"], n_trials=9, accuracy_drop_floor=0.05)
    fn = functools.partial(fake_trial, sleep=0.2, fail_criterion="random", low_accuracy_criterion="l2")
    study = run_search(space, study_name="s", trial_fn=fn, dense_metrics=DENSE, progress=False)
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 9 and TrialState.RUNNING not in states
    assert study.metric_names == S.METRIC_NAMES
    assert study.user_attrs[S.ATTR_DENSE] == DENSE and study.user_attrs[S.ATTR_FLOOR] == pytest.approx(0.85)
    assert study.user_attrs[S.ATTR_CONFIG]["run_dir"] == str((tmp_path / "runs").resolve())
    assert study.user_attrs[ATTR_LEASE]["released"] is True
    for t in trials:
        assert S.T_POLICY in t.user_attrs and S.T_SUMMARY in t.user_attrs
        crit = t.user_attrs[S.T_POLICY]["criterion"]
        if crit == "random":
            assert t.state == TrialState.FAIL and "fake failure for criterion random" in t.user_attrs[S.T_FAIL]
        elif crit == "l2":
            assert t.state == TrialState.PRUNED and "below the floor" in t.user_attrs[S.T_PRUNE]
            assert t.user_attrs[S.T_HISTORY]
        else:
            assert t.state == TrialState.COMPLETE
            assert t.values == [t.user_attrs[S.T_RESULT]["accuracy"], t.user_attrs[S.T_RESULT]["speedup"]]
            assert t.user_attrs["node_id"] and t.user_attrs["torch_threads"] == 1  # cpus_per_trial 1
    front = S.pareto_numbers(study)
    assert front and all(trials[n].state == TrialState.COMPLETE for n in front)
    rows = study_status("s", storage_of(tmp_path))
    assert {r["number"] for r in rows if r["on_front"]} == front
    # re-running the same search with the target reached does nothing
    again = run_search(space, study_name="s", trial_fn=fn, dense_metrics=DENSE, progress=False)
    assert len(again.get_trials()) == 9


def test_dead_worker_is_retried_once_then_fail(tiny, tmp_path, ray_local):
    space = make_space(tiny, tmp_path, n_trials=3, criteria=["l1", "l2"], accuracy_drop_floor=None)
    fn = functools.partial(fake_trial, sleep=0.1, crash_criterion="l2")
    study = run_search(space, study_name="s", trial_fn=fn, dense_metrics=DENSE, progress=False)
    assert any(t.user_attrs[S.T_POLICY]["criterion"] == "l2" for t in study.get_trials())
    for t in study.get_trials():
        if t.user_attrs[S.T_POLICY]["criterion"] == "l2":
            assert t.state == TrialState.FAIL and "worker lost (retried once)" in t.user_attrs[S.T_FAIL]
        else:
            assert t.state == TrialState.COMPLETE
    assert counted(study.get_trials()) == 3


def test_gp_sampler_models_the_front_after_its_startup_trials(tiny, tmp_path):
    space = make_space(tiny, tmp_path, sampler="gp", startup_trials=3, n_trials=6, accuracy_drop_floor=None)
    study = run_search(space, study_name="s", trial_fn=fake_trial, dense_metrics=DENSE, progress=False,
                       executor=InProcessExecutor())
    trials = study.get_trials()
    assert counted(trials) == 6
    assert type(study.sampler).__name__ == "GPSampler"
    by_gp = [t.number for t in trials if any(k.startswith("gp:relative_params") for k in t.system_attrs)]
    # the first 3 completed trials are random; from then on the Gaussian process proposes the policy
    assert by_gp and min(by_gp) >= 3, [(t.number, t.state) for t in trials]


def test_gp_sampler_without_scipy_is_one_clear_error_and_no_study(tiny, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a))
    space = make_space(tiny, tmp_path, sampler="gp")
    with pytest.raises(ConfigError, match="field 'sampler': 'gp' needs scipy.*pip install scipy"):
        run_search(space, study_name="s", trial_fn=fake_trial, dense_metrics=DENSE, progress=False)
    assert not (tmp_path / "runs" / "s.db").exists()


def test_resume_refuses_unknown_study(tiny, tmp_path):
    space = make_space(tiny, tmp_path)
    with pytest.raises(StudyError, match="no study storage"):
        resume(space, study_name="nope", trial_fn=fake_trial, dense_metrics=DENSE, progress=False)
    assert not (tmp_path / "runs").exists()  # not even the run folder is created
    url = storage_of(tmp_path, "x")
    (tmp_path / "runs").mkdir()
    optuna.create_study(study_name="other", storage=url, directions=S.DIRECTIONS)
    with pytest.raises(StudyError, match="study 'nope' not found.*existing studies: other"):
        resume(space, study_name="nope", storage=url, trial_fn=fake_trial, dense_metrics=DENSE, progress=False)


_DRIVER = textwrap.dedent("""
    import functools, json, sys
    from autoprune.search import space_from_dict, run_search
    from autoprune.search._fake import fake_trial
    raw = json.load(open(sys.argv[1]))
    space = space_from_dict(raw, sys.argv[1], None)
    run_search(space, study_name="s", trial_fn=functools.partial(fake_trial, sleep=2.0),
               dense_metrics={"accuracy": 0.9}, progress=False)
""")


def _kill_ray_of(temp_dir: str) -> None:
    """Kill the Ray processes a killed driver left behind (only those using its temp dir)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            if temp_dir not in cmd:  # Ray agents rename themselves; find them by their open log files
                cmd = " ".join(os.readlink(fd) for fd in (d / "fd").iterdir())
        except OSError:
            continue
        if temp_dir in cmd and int(d.name) != os.getpid():
            try:
                os.kill(int(d.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _states(db: Path) -> list[str]:
    """Trial states read straight from SQLite, read-only: polling through Optuna could race the
    driver's schema creation."""
    import sqlite3

    if not db.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return [r[0] for r in con.execute("SELECT state FROM trials")]
        finally:
            con.close()
    except sqlite3.Error:
        return []


@pytest.mark.slow
def test_sigkilled_driver_resumes_without_loss(tiny, tmp_path, ray_local):
    space = make_space(tiny, tmp_path, n_trials=6, trials_in_flight=2, accuracy_drop_floor=None)
    (tmp_path / "space.json").write_text(json.dumps(space.raw()))
    (tmp_path / "driver.py").write_text(_DRIVER)
    from autoprune.search._dispatch import ray_temp_dir

    temp = ray_temp_dir(tmp_path / "runs")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "space.json")], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "driver.err", "wb"))
    url = storage_of(tmp_path)
    db = tmp_path / "runs" / "s.db"
    ready = False
    try:
        deadline = time.time() + 150
        while time.time() < deadline and not ready:
            time.sleep(0.5)
            assert proc.poll() is None, (tmp_path / "driver.err").read_text(errors="replace")[-3000:]
            ready = _states(db).count("COMPLETE") >= 2 and "RUNNING" in _states(db)
        assert ready, "driver did not get going in time"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_ray_of(temp)
        shutil.rmtree(temp, ignore_errors=True)
    st = optuna.load_study(study_name="s", storage=url)
    before = {t.number: (t.values, t.params) for t in st.get_trials() if t.state == TrialState.COMPLETE}
    running_before = [t.number for t in st.get_trials() if t.state == TrialState.RUNNING]
    assert running_before

    study = resume(space, study_name="s", trial_fn=functools.partial(fake_trial, sleep=0.2), dense_metrics=DENSE,
                   progress=False)
    trials = study.get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for n, (values, params) in before.items():  # nothing completed was lost or changed
        assert trials[n].state == TrialState.COMPLETE and trials[n].values == values and trials[n].params == params
    orphans = [t for t in trials if t.user_attrs.get("orphaned")]
    assert sorted(t.number for t in orphans) == sorted(running_before)
    assert all(t.state == TrialState.FAIL for t in orphans)
    retries = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    assert sorted(retries) == sorted(running_before)
    for n, t in retries.items():
        assert t.state == TrialState.COMPLETE
        if S.T_POLICY in trials[n].user_attrs:  # dispatched: the very same policy runs again
            assert t.params == trials[n].params
        else:  # killed while its parameters were still being sampled: the sampled ones are kept
            assert trials[n].params.items() <= t.params.items()
    assert counted(trials) == 6
    # status says which rows count: the orphans do not, their re-runs do
    rows = {r["number"]: r for r in study_status("s", url)}
    assert sorted(n for n, r in rows.items() if not r["counted"]) == sorted(running_before)
    assert sum(r["counted"] for r in rows.values()) == 6
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 6  # none duplicated: one COMPLETE per counted trial
    assert len({t.number for t in finished}) == 6


def test_interrupted_driver_leaves_nothing_running(tiny, tmp_path, ray_local, monkeypatch):
    import autoprune.search._driver as drv

    space = make_space(tiny, tmp_path, n_trials=4, trials_in_flight=2, accuracy_drop_floor=None)
    real_record = drv._record

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(drv, "_record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_search(space, study_name="s", trial_fn=functools.partial(fake_trial, sleep=0.2), dense_metrics=DENSE,
                   progress=False)
    st = optuna.load_study(study_name="s", storage=storage_of(tmp_path))
    states = [t.state for t in st.get_trials()]
    assert TrialState.RUNNING not in states and states.count(TrialState.WAITING) == 2
    assert st.user_attrs[ATTR_LEASE]["released"] is True
    monkeypatch.setattr(drv, "_record", real_record)
    study = resume(space, study_name="s", trial_fn=fake_trial, dense_metrics=DENSE, progress=False)
    trials = study.get_trials()
    assert counted(trials) == 4 and len([t for t in trials if t.state == TrialState.COMPLETE]) == 4
    assert sorted(t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs) == [0, 1]


# ----------------------------------------------------------------------------- CLI
def test_cli_status_and_bad_space(tiny, tmp_path):
    from typer.testing import CliRunner

    from autoprune.cli import app

    space = make_space(tiny, tmp_path, n_trials=2)
    run_search(space, study_name="s", trial_fn=fake_trial, dense_metrics=DENSE, progress=False,
               executor=InProcessExecutor())
    runner = CliRunner()
    res = runner.invoke(app, ["status", "--storage", storage_of(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 2 and {"number", "policy_summary", "accuracy", "speedup", "state", "on_front"} <= set(rows[0])
    res = runner.invoke(app, ["status", "--storage", storage_of(tmp_path)])
    assert res.exit_code == 0 and "COMPLETE" in res.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"config": tiny, "sampler": "grid"}))
    res = runner.invoke(app, ["search", "-c", str(bad)])
    assert res.exit_code == 2
    assert "field 'sampler'" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["status", "--storage", "postgresql://u:topsecret@127.0.0.1:9/db", "--study", "x"])
    assert res.exit_code == 2 and "topsecret" not in res.output and "u:***@" in res.output


def test_shipped_spaces_validate():
    for name in ("quickstart.yaml", "minilm_sst2.yaml"):
        space = load_search_space(REPO / "search_spaces" / name)
        space.check_depth(6)
    quick = load_search_space(REPO / "search_spaces" / "quickstart.yaml")
    # short: at most 10 trials at the full budget (with rungs, the top rung's quota of n_trials,
    # ceil(n_trials x promote_fraction); asynchronous promotion may add a few, also_final as many
    # again without retraining)
    full = quick.n_trials if not quick.rungs else -(-quick.n_trials * quick.promote_fraction // 1)
    assert full <= 10 and quick.run_config().model.name_or_path == "minilm-l6"


# ----------------------------------------------------------------------------- the real trial
@pytest.mark.slow
def test_real_trial_end_to_end_through_ray(tiny, tmp_path, ray_local):
    pytest.importorskip("autoprune.trial")
    space = make_space(tiny, tmp_path, n_trials=2, trials_in_flight=2, criteria=["l1"],
                       retrain={"steps": 8, "batch_size": 16}, accuracy_drop_floor=None, save_models=True)
    study = run_search(space, study_name="real", progress=False)  # real ensure_baseline + run_trial
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs.get(S.T_FAIL) for t in trials]
    res = trials[0].user_attrs[S.T_RESULT]
    assert res["speedup"] > 0 and 0 <= res["accuracy"] <= 1 and res["retrain_steps"] == 8
    assert "retrain" in res["phase_seconds"]
    assert study.user_attrs[S.ATTR_DENSE]["accuracy"] == pytest.approx(
        study.user_attrs[S.ATTR_DENSE]["validation_accuracy"])
    assert Path(study.user_attrs[S.ATTR_BASELINE_DIR]).is_dir()
    assert S.pareto_numbers(study)
    # save_models: each completed trial kept its pruned model, which loads with the recorded shape
    from autoprune.serialization import load_pruned

    saved = load_pruned(res["model_dir"])
    assert Path(res["model_dir"]).name == "trial_0" and saved.config.autoprune["heads_per_layer"] == res["heads_per_layer"]
