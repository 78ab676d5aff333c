"""The search driver without Ray: lease, resume, orphans, duplicates, early stop, n_trials accounting,
trial threads, study names, read-only storage, progress without a terminal and the CLI's end-of-search
hint. Trials are the fakes of ``autoprune.search._fake`` run by ``InProcessExecutor`` in this process;
the end-to-end tests on a real Ray are in tests/test_search.py.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_config_dict

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from autoprune import _study as S  # noqa: E402
from autoprune.cli import app  # noqa: E402
from autoprune.errors import StudyError  # noqa: E402
from autoprune.search import InProcessExecutor, resume, run_search, space_from_dict  # noqa: E402
from autoprune.search._driver import counted  # noqa: E402
from autoprune.search._fake import fake_trial  # noqa: E402
from autoprune.search._progress import Progress  # noqa: E402
from autoprune.search._storage import ATTR_LEASE, Lease  # noqa: E402

DENSE = {"accuracy": 0.9, "macro_f1": 0.89}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_config_dict(tmp_path_factory.mktemp("tiny"))


def make_space(tiny, tmp_path, **over):
    raw = {"config": dict(tiny, run_dir=str(tmp_path / "runs")), "criteria": ["l1", "l2"], "n_trials": 6,
           "trials_in_flight": 2, "sampler": "random", "retrain": {"steps": [10, 20]},
           "structured": {"heads": {"base": [0.0, 0.5]}, "ffn": {"mode": "free"}}}
    raw.update(over)
    return space_from_dict(raw, str(tmp_path / "space.yaml"), tmp_path)


def search(space, executor=None, **kw):
    kw.setdefault("study_name", "s")
    kw.setdefault("trial_fn", functools.partial(fake_trial, sleep=0.0))
    return run_search(space, dense_metrics=DENSE, progress=False, executor=executor or InProcessExecutor(), **kw)


def url_of(tmp_path, name="s"):
    return f"sqlite:///{tmp_path / 'runs' / (name + '.db')}"


def databases(root: Path) -> dict[str, str]:
    """sha256 of every SQLite file under ``root`` (a new or changed database shows up)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.db")) if p.is_file()}


class Interrupting(InProcessExecutor):
    """Ctrl-C while the driver waits for its first results (trials submitted, none finished)."""

    def wait(self, handles, timeout):
        raise KeyboardInterrupt


class NeverStarted(InProcessExecutor):
    def start(self, *, num_cpus, run_dir):
        raise AssertionError("the executor was started although the study had reached its target")


# ----------------------------------------------------------------------------- outcomes and accounting
def test_outcomes_are_recorded_and_counted_without_ray(tiny, tmp_path):
    space = make_space(tiny, tmp_path, criteria=["l1", "l2", "random"], n_trials=9, accuracy_drop_floor=0.05)
    ex = InProcessExecutor()
    fn = functools.partial(fake_trial, sleep=0.0, fail_criterion="random", low_accuracy_criterion="l2")
    study = search(space, ex, trial_fn=fn)
    trials = study.get_trials()
    assert len(trials) == 9 and counted(trials) == 9
    assert study.user_attrs[ATTR_LEASE]["released"] is True
    for t in trials:
        crit = t.user_attrs[S.T_POLICY]["criterion"]
        want = {"random": TrialState.FAIL, "l2": TrialState.PRUNED, "l1": TrialState.COMPLETE}[crit]
        assert t.state == want, (t.number, crit, t.state)
        if crit == "random":
            assert "fake failure for criterion random" in t.user_attrs[S.T_FAIL]
        elif crit == "l2":  # stopped by the worker-side rule at dense 0.9 - floor 0.05 - margin 0.02
            assert "below the floor 0.8500" in t.user_attrs[S.T_PRUNE] and t.user_attrs[S.T_HISTORY]
        else:
            assert t.values == [t.user_attrs[S.T_RESULT]["accuracy"], t.user_attrs[S.T_RESULT]["speedup"]]
    # what the executor was given: one job per trial, with the policy, floor and early-stop rule of the space
    assert [j.number for j in ex.submitted] == [t.number for t in trials]
    assert all(j.policy == trials[j.number].user_attrs[S.T_POLICY] for j in ex.submitted)
    assert [j.floor for j in ex.submitted] == [pytest.approx(0.85)] * 9
    assert ex.submitted[0].early_stop == {"margin": 0.02, "min_fraction": 0.5}
    # the target is reached: a second run records nothing and does not even start the executor
    again = search(space, NeverStarted(), trial_fn=fn)
    assert len(again.get_trials()) == 9


def test_duplicate_policies_are_skipped_not_counted(tiny, tmp_path):
    space = make_space(tiny, tmp_path, n_trials=3, trials_in_flight=1, criteria=["l1"], retrain={"steps": 10},
                       structured={"heads": {"mode": "fixed", "value": 0.5},
                                   "ffn": {"mode": "free", "range": [0.2, 0.25]}}, accuracy_drop_floor=None)
    ex = InProcessExecutor()
    study = search(space, ex)
    trials = study.get_trials()
    dups = [t for t in trials if t.user_attrs.get("duplicate")]
    assert dups, "the space has 4 distinct policies: random sampling repeats one within 3 trials (seed 0)"
    assert all(t.state == TrialState.FAIL and "duplicate of trial" in t.user_attrs[S.T_FAIL] for t in dups)
    assert len(ex.submitted) == 3  # a duplicate never runs
    assert len({json.dumps(j.policy["ffn_sparsity"]) for j in ex.submitted}) == 3
    assert counted(trials) == 3


def test_sampling_error_is_a_counted_failure(tiny, tmp_path, monkeypatch):
    space = make_space(tiny, tmp_path, n_trials=2, accuracy_drop_floor=None)
    calls = {"n": 0}
    real = type(space).sample_policy

    def flaky(self, trial, depth):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("bad draw")
        return real(self, trial, depth)

    monkeypatch.setattr(type(space), "sample_policy", flaky)
    study = search(space)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]
    assert "cannot build a policy from the sampled parameters: bad draw" in study.trials[0].user_attrs[S.T_FAIL]
    assert counted(study.get_trials()) == 2


# ----------------------------------------------------------------------------- lease, orphans, interrupts
def test_live_lease_refuses_a_second_driver_and_changes_nothing(tiny, tmp_path):
    space = make_space(tiny, tmp_path, n_trials=2)
    (tmp_path / "runs").mkdir()
    study = optuna.create_study(study_name="s", storage=url_of(tmp_path), directions=S.DIRECTIONS)
    holder = Lease(study).acquire()
    try:
        with pytest.raises(StudyError, match="being run by another driver"):
            search(space)
        assert study.get_trials() == [] and study.user_attrs[ATTR_LEASE]["id"] == holder.id
    finally:
        holder.release()


def test_dead_driver_orphans_are_rerun_once_and_its_lease_taken_over(tiny, tmp_path):
    space = make_space(tiny, tmp_path, n_trials=4, accuracy_drop_floor=None)
    first = search(space, n_trials=2)  # two trials done by a first driver
    done = {t.number: t.values for t in first.get_trials()}
    # a second driver dispatched two more trials and was SIGKILLed: RUNNING trials and a lease whose
    # process is gone
    st = optuna.load_study(study_name="s", storage=url_of(tmp_path))
    running = []
    for _ in range(2):
        t = st.ask()
        pol = space.sample_policy(t, 2)
        t.set_user_attr(S.T_POLICY, pol.to_dict())
        running.append((t.number, dict(t.params)))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    st.set_user_attr(ATTR_LEASE, {"id": "deadbeef", "host": os.uname().nodename, "pid": dead.pid,
                                  "started": time.time(), "heartbeat": time.time()})
    ex = InProcessExecutor()
    study = resume(space, study_name="s", trial_fn=functools.partial(fake_trial, sleep=0.0), dense_metrics=DENSE,
                   progress=False, executor=ex)
    trials = study.get_trials()
    assert all(trials[n].values == v for n, v in done.items())  # nothing completed was lost or changed
    for n, params in running:
        assert trials[n].state == TrialState.FAIL and trials[n].user_attrs["orphaned"] is True
    retries = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    assert sorted(retries) == [n for n, _ in running]
    for n, params in running:
        assert retries[n].state == TrialState.COMPLETE and retries[n].params == params
    assert counted(trials) == 4 and len([t for t in trials if t.state == TrialState.COMPLETE]) == 4
    assert len(ex.submitted) == 2  # only the two re-runs ran
    assert study.user_attrs[ATTR_LEASE]["id"] != "deadbeef" and study.user_attrs[ATTR_LEASE]["released"]


def test_interrupt_re_enqueues_trials_in_flight(tiny, tmp_path):
    space = make_space(tiny, tmp_path, n_trials=4, trials_in_flight=2, accuracy_drop_floor=None)
    with pytest.raises(KeyboardInterrupt):
        search(space, Interrupting())
    st = optuna.load_study(study_name="s", storage=url_of(tmp_path))
    states = [t.state for t in st.get_trials()]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING, TrialState.WAITING]
    assert st.user_attrs[ATTR_LEASE]["released"] is True
    study = resume(space, study_name="s", trial_fn=fake_trial, dense_metrics=DENSE, progress=False,
                   executor=InProcessExecutor())
    trials = study.get_trials()
    assert counted(trials) == 4 and sorted(t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs) == [0, 1]
    assert [t.params for t in trials[2:4]] == [t.params for t in trials[0:2]]  # the re-runs: same policies


# ----------------------------------------------------------------------------- threads
def test_trial_threads_default_to_cpus_per_trial_and_an_explicit_value_wins(tiny, tmp_path):
    import torch

    before = torch.get_num_threads()
    ex = InProcessExecutor()
    study = search(make_space(tiny, tmp_path, n_trials=2, cpus_per_trial=2, accuracy_drop_floor=None), ex)
    assert {j.config["torch_threads"] for j in ex.submitted} == {2}
    assert study.user_attrs[S.ATTR_CONFIG]["torch_threads"] == 2  # explicit in the run config on record
    assert [t.user_attrs["torch_threads"] for t in study.get_trials()] == [2, 2]  # what torch ran with
    assert torch.get_num_threads() == before  # the in-process executor restores the caller's setting
    own = make_space(dict(tiny, torch_threads=3), tmp_path / "own", n_trials=1, cpus_per_trial=2)
    study = search(own, study_name="own")
    assert study.trials[0].user_attrs["torch_threads"] == 3


# ----------------------------------------------------------------------------- study names
@pytest.mark.parametrize("name,needle", [
    ("../outside", "study name '../outside' is not allowed"),
    ("a/b", "no path separators"),
    ("a\\b", "no path separators"),
    (".hidden", "not starting with '.'"),
    ("", "study name is empty"),
    ("x" * 129, "at most 128 characters"),
])
def test_unsafe_study_names_are_refused_before_any_file(tiny, tmp_path, name, needle):
    space = make_space(tiny, tmp_path / "w")
    with pytest.raises(StudyError) as ei:
        search(space, study_name=name)
    assert needle in str(ei.value)
    assert not list(tmp_path.rglob("*.db")) and not (tmp_path / "w" / "runs").exists()


def test_space_file_with_an_unsafe_stem_needs_a_study_name(tiny, tmp_path):
    raw = make_space(tiny, tmp_path).raw()
    space = space_from_dict(raw, str(tmp_path / "my space.yaml"), tmp_path)
    with pytest.raises(StudyError, match="'my space' .*the search space file .*my space.yaml.*e.g. 'my_space'"):
        search(space, study_name=None)
    assert search(space, study_name="my_space").study_name == "my_space"


# ----------------------------------------------------------------------------- progress
def test_progress_without_a_terminal_writes_lines_and_heartbeats(tiny, tmp_path, capsys):
    space = make_space(tiny, tmp_path, n_trials=3, accuracy_drop_floor=None)
    run_search(space, study_name="s", trial_fn=functools.partial(fake_trial, sleep=0.05), dense_metrics=DENSE,
               executor=InProcessExecutor(), progress=True, heartbeat_s=0.01)
    err = capsys.readouterr().err.splitlines()
    assert "search 's' started: target 3 trials" in err[0] and "heartbeat every 0.01 s" in err[0]
    finished = [ln for ln in err if "] trial " in ln]
    assert [ln.split("] trial ")[1].split(" ")[0] for ln in finished] == ["0", "1", "2"]
    assert all(" complete: accuracy 0." in ln and "speedup" in ln for ln in finished)
    assert "[3/3] trial 2 complete" in finished[-1]
    beats = [ln for ln in err[1:-1] if "finished (complete" in ln]
    assert beats and all("running" in ln and "front" in ln for ln in beats)
    assert "3/3 finished (complete 3, pruned 0, failed 0), running 0; front" in err[-1]
    assert "most accurate trial" in err[-1] and "fastest trial" in err[-1]
    # every line is timestamped, so a log file shows when things happened
    assert all(time.strptime(ln[:19], "%Y-%m-%d %H:%M:%S") for ln in err)


def test_progress_heartbeat_interval(tmp_path):
    st = optuna.create_study(directions=S.DIRECTIONS, study_name="hb")
    buf = io.StringIO()
    with Progress(st, target=5, heartbeat_s=3600, stream=buf) as prog:
        for _ in range(20):
            prog.update(running=1)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2  # start and end: no heartbeat within the hour
    assert lines[1].endswith("search 'hb' 0m00s: 0/5 finished (complete 0, pruned 0, failed 0), running 0; "
                             "front: no complete trial yet")
    buf = io.StringIO()
    with Progress(st, target=5, heartbeat_s=0.05, stream=buf) as prog:
        time.sleep(0.06)
        prog.update(running=1)
        prog.update(running=1)  # too soon after the last one
    assert sum("running 1" in ln for ln in buf.getvalue().splitlines()) == 1


def test_progress_on_a_terminal_is_the_live_display(tmp_path):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    st = optuna.create_study(directions=S.DIRECTIONS, study_name="tty")
    buf = Tty()
    with Progress(st, target=5, heartbeat_s=0.01, stream=buf) as prog:
        prog.finished("trial 0 complete", done=1)
    text = buf.getvalue()
    assert prog.mode == "live" and "best accuracy at speedup" in text and "trial 0 complete" not in text
    assert Progress(st, 5, enabled=False, stream=Tty()).mode == "off"


# ----------------------------------------------------------------------------- CLI
@pytest.fixture
def cli_ws(tiny, tmp_path, monkeypatch):
    """A space file and a study 'space' with two trials; the CLI's search runs fake trials in process."""
    import autoprune.search as search_pkg

    (tmp_path / "space.yaml").write_text(yaml.safe_dump(make_space(tiny, tmp_path, n_trials=2).raw()))
    real = search_pkg.run_search
    monkeypatch.setattr(search_pkg, "run_search", functools.partial(
        real, trial_fn=functools.partial(fake_trial, sleep=0.0), dense_metrics=DENSE, executor=InProcessExecutor()))
    res = CliRunner().invoke(app, ["search", "-c", str(tmp_path / "space.yaml")])
    assert res.exit_code == 0, res.output
    return tmp_path


def cli_error(args, root: Path) -> str:
    """Run the CLI: exit 2, exactly one 'error:' line, no traceback, every database under ``root`` unchanged."""
    before = databases(root)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit), res.exception
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.output
    assert databases(root) == before
    return errors[0]


def test_cli_end_of_search_hint_repeats_study_and_storage(cli_ws):
    space = cli_ws / "space.yaml"
    res = CliRunner().invoke(app, ["search", "-c", str(space)])  # target reached: nothing to do, hint again
    hint = res.output.strip().splitlines()[-1]
    assert hint.endswith(f"see all trials with: autoprune status -c {shlex.quote(str(space))}"), hint
    (cli_ws / "other").mkdir()
    url = f"sqlite:///{cli_ws / 'other' / 'x.db'}"
    res = CliRunner().invoke(app, ["search", "-c", str(space), "--study", "mine.v2", "--storage", url])
    assert res.exit_code == 0, res.output
    hint = " ".join(res.output.split("see all trials with: ")[1].split())
    assert hint == f"autoprune status -c {space} --study mine.v2 --storage {url}"
    rows = CliRunner().invoke(app, shlex.split(hint)[1:] + ["--json"])  # the hint works as printed
    assert rows.exit_code == 0 and len(json.loads(rows.stdout)) == 2


def test_cli_unsafe_study_names_exit_2_with_storage_unchanged(cli_ws):
    space = str(cli_ws / "space.yaml")
    for name in ("../outside", "", ".hidden", "a/b"):
        for cmd in ("search", "resume"):
            line = cli_error([cmd, "-c", space, "--study", name], cli_ws)
            assert "study name" in line and ("not allowed" in line or "is empty" in line), line
    line = cli_error(["status", "-c", space, "--study", "../outside"], cli_ws)
    assert "study name '../outside' is not allowed" in line
    assert not (cli_ws.parent / "outside.db").exists() and not (cli_ws / "outside.db").exists()


def test_cli_heartbeat_must_be_positive(cli_ws):
    line = cli_error(["search", "-c", str(cli_ws / "space.yaml"), "--heartbeat", "0"], cli_ws)
    assert "--heartbeat" in line and "positive" in line


# ----------------------------------------------------------------------------- read-only storage
def _read_only_runner(folder: Path) -> list[str] | None:
    """A command prefix under which ``folder`` is read-only: as root (who may write anywhere) a private
    read-only bind mount; otherwise the folder's mode 0555. None when neither is possible here."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {folder} {folder} && "
                            f"mount -o remount,ro,bind {folder} {folder} && ! touch {folder}/probe"],
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c", f'mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} '
            f'{folder} && exec "$0" "$@"']


@pytest.mark.parametrize("where", ["new run_dir", "existing study"])
def test_read_only_storage_is_one_clear_error(tiny, tmp_path, where):
    ro = tmp_path / "ro"
    ro.mkdir()
    space = make_space(tiny, ro if where == "existing study" else ro / "nested")
    if where == "existing study":
        search(space, study_name="space", n_trials=1)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space.raw()))
    before = databases(tmp_path)
    prefix = _read_only_runner(ro)
    if prefix is None:
        pytest.skip("cannot make a read-only folder here (root without mount namespaces)")
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="400")
    env.pop("RAY_ADDRESS", None)
    try:
        p = subprocess.run([*prefix, sys.executable, "-m", "autoprune", "search", "-c", str(tmp_path / "space.yaml")],
                           capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)
    finally:
        ro.chmod(0o755)
    out = p.stdout + p.stderr
    assert p.returncode == 2, out
    assert "Traceback" not in out and "OperationalError" not in out, out
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out
    assert "cannot write the study storage sqlite:///" in lines[0]
    assert ("read-only file system" in lines[0].lower() or "not writable" in lines[0]
            or "Permission denied" in lines[0]), lines[0]
    assert "pass --storage with a writable location or set run_dir" in lines[0]
    assert databases(tmp_path) == before
    if where == "existing study":
        assert len(optuna.load_study(study_name="space", storage=url_of(ro, "space")).trials) == 1
