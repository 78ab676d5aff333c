#!/usr/bin/env python
"""Fault injection for the search driver: SIGKILL the driver at random moments, kill a Ray worker
mid-trial, inject a NaN result and a raising trial; then check the study lost nothing.

Loopback only and bounded in time (``--time-limit``). Trials are the fake of
``autoprune.testing`` (sleep, plausible metrics) with its ``fault_dir`` hook; the model is a tiny
BERT config written to the work folder (only its depth is read). Each driver is a separate process
(``python scripts/chaos_search.py driver ...``) that starts its own local Ray on 127.0.0.1; after a
SIGKILL the Ray processes it left behind (found by its Ray temp folder) are killed too, then the same
search is started again (re-running the command resumes).

    python scripts/chaos_search.py                      # 10 driver kills, 20 trials, SQLite
    python scripts/chaos_search.py --kills 3 --n-trials 8 --storage postgresql://u:pw@127.0.0.1:5432/db

Report: completed trials lost (must be 0), duplicate trials (0), trials left RUNNING/WAITING (0),
study reached n_trials (yes), and what became of the worker kill, the NaN trial and the raising trial.
Exit status 0 when every check passes. ``tests/test_chaos.py`` runs a 3-kill version.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STUDY = "chaos"
DENSE = {"accuracy": 0.9, "macro_f1": 0.89}


# ----------------------------------------------------------------------------- workspace
def make_workspace(work: Path, n_trials: int, trials_in_flight: int = 2, seed: int = 0) -> dict[str, Any]:
    """Write a tiny BERT config and tiny data under ``work``; return the raw search space."""
    from transformers import BertConfig

    model = work / "tiny-bert"
    BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=64).save_pretrained(model)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    files = {}
    for split in ("train", "validation"):
        f = data / f"{split}.tsv"
        f.write_text("sentence\tlabel\ngood film\t1\nbad film\t0\n")
        files[split] = str(f)
    return {
        "config": {"model": {"name_or_path": str(model)}, "data": {"files": files, "max_length": 16},
                   "run_dir": str(work / "runs")},
        "criteria": ["l1", "l2", "gradient", "random"], "sampler": "random", "seed": seed,
        "n_trials": n_trials, "trials_in_flight": trials_in_flight, "cpus_per_trial": 1,
        "accuracy_drop_floor": None, "retrain": {"steps": [10, 20, 30, 40]},
        "structured": {"heads": {"mode": "free"}, "ffn": {"mode": "free"}},
    }


# ----------------------------------------------------------------------------- one driver (child process)
def driver_main(space_file: str, storage: str, sleep: float, fault_dir: str, study: str = STUDY) -> None:
    import functools

    from autoprune.search import run_search, space_from_dict
    from autoprune.testing import fake_trial

    raw = json.loads(Path(space_file).read_text())
    space = space_from_dict(raw, space_file, None)
    run_search(space, study_name=study, storage=storage, dense_metrics=DENSE, progress=False,
               trial_fn=functools.partial(fake_trial, sleep=sleep, fault_dir=fault_dir))


# ----------------------------------------------------------------------------- helpers
def kill_ray_of(temp_dir: str) -> int:
    """SIGKILL the Ray processes a killed driver left behind: only those whose command line or open
    files mention its Ray temp folder (Ray agents rename themselves). Returns how many were killed."""
    n = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            if temp_dir not in cmd:
                cmd = " ".join(os.readlink(fd) for fd in (d / "fd").iterdir())
        except OSError:
            continue
        if temp_dir in cmd:
            try:
                os.kill(int(d.name), signal.SIGKILL)
                n += 1
            except ProcessLookupError:
                pass
    return n


def live_states(url: str, study: str = STUDY) -> list[str]:
    """Trial states read straight from the database while a driver runs (never creates anything)."""
    sql = ("SELECT t.state FROM trials t JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = ?")
    try:
        if url.startswith("sqlite:///"):
            import sqlite3

            db = url[len("sqlite:///"):]
            if not Path(db).exists():
                return []
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                return [str(r[0]) for r in con.execute(sql, (study,))]
            finally:
                con.close()
        import psycopg2

        con = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"), connect_timeout=5)
        try:
            with con.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), (study,))
                return [str(r[0]) for r in cur.fetchall()]
        finally:
            con.close()
    except Exception:  # noqa: BLE001 - tables not created yet, database briefly busy
        return []


def snapshot(url: str, study: str = STUDY) -> list[Any]:
    """All trials of the study (FrozenTrial), or [] when it does not exist yet. Only call with no driver running."""
    import optuna

    from autoprune.search import get_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return []
    st = get_storage(url)
    names = [s.study_name for s in optuna.study.get_all_study_summaries(st, include_best_trial=False)]
    if study not in names:
        return []
    return optuna.load_study(study_name=study, storage=st).get_trials(deepcopy=False)


def _reason(t: Any) -> str:
    from autoprune.study import record_of

    return str(record_of(t).reason or "")


class Chaos:
    def __init__(self, work: Path, storage: str | None, n_trials: int, kills: int, sleep: float, seed: int,
                 time_limit: float, log: Any = print, study: str = STUDY) -> None:
        from autoprune.search import ray_temp_dir

        self.work = work
        self.study = study
        self.raw = make_workspace(work, n_trials, seed=seed)
        self.space_file = work / "space.json"
        self.space_file.write_text(json.dumps(self.raw))
        self.url = storage or f"sqlite:///{work / 'runs' / (study + '.db')}"
        (work / "runs").mkdir(parents=True, exist_ok=True)
        self.n_trials, self.kills, self.sleep = n_trials, kills, sleep
        self.rng = random.Random(seed)
        self.deadline = time.time() + time_limit
        self.temp = ray_temp_dir(work / "runs")
        self.faults = work / "faults"
        (self.faults / "running").mkdir(parents=True, exist_ok=True)
        self.log = log
        self.completed: dict[int, tuple[Any, Any]] = {}  # every COMPLETE trial ever seen: number -> (values, params)
        self.kill_log: list[dict[str, Any]] = []
        self.worker_kill: dict[str, Any] | None = None
        self.spawns = 0

    # -- one driver
    def spawn(self) -> subprocess.Popen:
        for f in (self.faults / "running").iterdir():
            f.unlink()
        self._rearm()
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("RAY_ADDRESS", None)
        self.spawns += 1
        err = open(self.work / f"driver{self.spawns}.err", "wb")
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "driver", str(self.space_file),
                                 self.url, str(self.sleep), str(self.faults), self.study],
                                env=env, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)

    def _rearm(self) -> None:
        """(Re)create the NaN / raise tokens until a trial carrying each is on record. A token taken by a
        trial whose driver was killed before recording it is put back (that trial re-runs under a new
        number, so its claim ``<token>.taken.<key>`` is dropped); within one driver a taken token stays
        with its trial, so Ray's retry after a worker kill takes the same fault (``_fake._claim``)."""
        trials = snapshot(self.url, self.study)
        reasons = [_reason(t) for t in trials]
        for token, needle in (("nan", "non-finite"), ("raise", "injected fault")):
            if not any(needle in r for r in reasons):
                for stale in self.faults.glob(f"{token}.taken.*"):
                    stale.unlink()
                (self.faults / token).touch()

    def cleanup(self) -> int:
        n = kill_ray_of(self.temp)
        time.sleep(0.3)
        n += kill_ray_of(self.temp)
        shutil.rmtree(self.temp, ignore_errors=True)
        return n

    def record(self) -> list[Any]:
        trials = snapshot(self.url, self.study)
        from optuna.trial import TrialState

        for t in trials:
            if t.state == TrialState.COMPLETE and t.number not in self.completed:
                self.completed[t.number] = (list(t.values), dict(t.params))
        return trials

    def _err(self, k: int) -> str:
        return (self.work / f"driver{k}.err").read_text(errors="replace")[-3000:]

    # -- the experiment
    def kill_once(self, i: int) -> None:
        from optuna.trial import TrialState

        before = live_states(self.url, self.study)
        proc = self.spawn()
        t0 = time.time()
        if self.rng.random() < 0.3:  # during start-up: imports, Ray, study creation, lease, recovery
            phase, wait_until = "start-up", t0 + self.rng.uniform(0.5, 6.0)
            while time.time() < wait_until and proc.poll() is None:
                time.sleep(0.05)
        else:  # while trials run: once this driver has dispatched, a random moment within ~3 trial lengths
            phase = "trials in flight"
            limit = min(t0 + 120, self.deadline)
            while time.time() < limit and proc.poll() is None:
                st = live_states(self.url, self.study)
                if len(st) > len(before) and "RUNNING" in st:
                    break
                time.sleep(0.1)
            wait_until = time.time() + self.rng.uniform(0.0, 3.0 * self.sleep)
            while time.time() < wait_until and proc.poll() is None:
                time.sleep(0.05)
        if proc.poll() is not None:
            self.log(f"kill {i}: the driver had already exited (rc {proc.returncode})")
            if proc.returncode != 0:
                raise RuntimeError(f"driver {self.spawns} exited with {proc.returncode}:\n{self._err(self.spawns)}")
        else:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        at = time.time() - t0
        n_ray = self.cleanup()
        trials = self.record()
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        done = sum(1 for t in trials if t.state == TrialState.COMPLETE)
        entry = {"kill": i, "phase": phase, "after_s": round(at, 1), "trials": len(trials), "complete": done,
                 "running_at_kill": running, "ray_processes_killed": n_ray}
        self.kill_log.append(entry)
        self.log(f"kill {i:2d}: SIGKILL after {at:5.1f} s ({phase}); study: {len(trials)} trials, {done} complete, "
                 f"RUNNING after the kill: {running or 'none'}; {n_ray} Ray processes of that driver killed")

    def final_run(self) -> None:
        """Run to the end, SIGKILLing one Ray worker in the middle of a trial."""
        proc = self.spawn()
        k = self.spawns
        limit = min(time.time() + 300, self.deadline)
        running = self.faults / "running"
        while time.time() < limit and proc.poll() is None and self.worker_kill is None:
            files = [f for f in running.iterdir() if f.name.isdigit()]
            if files:
                f = files[0]
                time.sleep(self.rng.uniform(0.1, 0.5) * self.sleep)  # in the middle of the trial
                try:
                    pid = int(f.name)
                    summary = f.read_text() if f.exists() else "?"
                    os.kill(pid, signal.SIGKILL)
                    self.worker_kill = {"pid": pid, "policy": summary}
                    self.log(f"worker kill: SIGKILL Ray worker pid {pid} in the middle of trial '{summary}'")
                except (ProcessLookupError, ValueError, OSError):
                    continue
            time.sleep(0.05)
        try:
            proc.wait(timeout=max(limit - time.time(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.cleanup()
            raise RuntimeError(f"the final driver did not finish in time:\n{self._err(k)}")
        self.cleanup()
        if proc.returncode != 0:
            raise RuntimeError(f"the final driver exited with {proc.returncode}:\n{self._err(k)}")

    def run(self) -> dict[str, Any]:
        t0 = time.time()
        try:
            for i in range(1, self.kills + 1):
                if time.time() > self.deadline:
                    self.log(f"time limit reached after {i - 1} kills")
                    break
                self.kill_once(i)
            self.final_run()
        finally:
            self.cleanup()
        rep = self.check()
        rep["seconds"] = round(time.time() - t0, 1)
        return rep

    def check(self) -> dict[str, Any]:
        from optuna.trial import TrialState

        from autoprune.search import policy_key
        from autoprune.study import counted_trials, record_of

        trials = self.record()
        by_num = {t.number: t for t in trials}
        lost = [n for n, (vals, params) in self.completed.items()
                if n not in by_num or by_num[n].state != TrialState.COMPLETE or list(by_num[n].values) != vals
                or dict(by_num[n].params) != params]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        keys: dict[str, int] = {}
        dups = []
        for t in complete:
            key = policy_key(t.user_attrs.get("policy") or {k: v for k, v in t.params.items()})
            if key in keys:
                dups.append((keys[key], t.number))
            keys.setdefault(key, t.number)
        # a re-run of a trial that had completed would also be a duplicate
        dups += [(t.user_attrs["retry_of"], t.number) for t in trials
                 if "retry_of" in t.user_attrs and by_num.get(t.user_attrs["retry_of"]) is not None
                 and by_num[t.user_attrs["retry_of"]].state == TrialState.COMPLETE]
        left = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        n_counted = len(counted_trials([record_of(t) for t in trials]))
        reasons = {t.number: _reason(t) for t in trials if t.state == TrialState.FAIL}
        nan = [n for n, r in reasons.items() if "non-finite" in r]
        raised = [n for n, r in reasons.items() if "injected fault" in r]
        worker_lost = [n for n, r in reasons.items() if "worker lost" in r]
        orphans = [t.number for t in trials if t.user_attrs.get("orphaned")]
        retry_of = [t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs]
        bad_retries = [n for n in orphans if retry_of.count(n) != 1]  # each orphan re-run exactly once
        states: dict[str, int] = {}
        for t in trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
        ok = (not lost and not dups and not left and n_counted == self.n_trials and len(nan) == 1 and len(raised) == 1
              and not worker_lost and not bad_retries and len(self.kill_log) == self.kills)
        return {
            "ok": ok, "storage": _mask(self.url), "driver_kills": len(self.kill_log), "drivers_started": self.spawns,
            "n_trials": self.n_trials, "counted": n_counted, "reached_n_trials": n_counted == self.n_trials,
            "completed_seen": len(self.completed), "completed_lost": lost, "duplicates": dups,
            "left_running_or_waiting": left, "trials_total": len(trials), "states": states,
            "orphans_reenqueued": orphans, "orphans_not_rerun_once": bad_retries, "nan_trial": nan, "raising_trial": raised,
            "worker_kill": self.worker_kill, "worker_lost_failures": worker_lost, "kills": self.kill_log,
        }


def _mask(url: str) -> str:
    from autoprune.search import mask_url

    return mask_url(url)


def report(rep: dict[str, Any]) -> str:
    yes = lambda b: "yes" if b else "NO"  # noqa: E731
    wk = rep["worker_kill"]
    lines = [
        f"storage: {rep['storage']}; {rep['driver_kills']} driver SIGKILLs, {rep['drivers_started']} drivers started, "
        f"{rep['seconds']} s",
        f"completed trials lost:          {len(rep['completed_lost'])} (of {rep['completed_seen']} ever seen COMPLETE)",
        f"duplicate trials:               {len(rep['duplicates'])}",
        f"trials left RUNNING/WAITING:    {len(rep['left_running_or_waiting'])}",
        f"study reached n_trials:         {yes(rep['reached_n_trials'])} ({rep['counted']}/{rep['n_trials']} counted)",
        f"orphans re-enqueued:            {len(rep['orphans_reenqueued'])} (FAIL 'orphaned'; not re-run exactly once: "
        f"{len(rep['orphans_not_rerun_once'])})",
        f"NaN trial recorded as FAIL:     {yes(len(rep['nan_trial']) == 1)} (trial {rep['nan_trial']})",
        f"raising trial recorded as FAIL: {yes(len(rep['raising_trial']) == 1)} (trial {rep['raising_trial']})",
        f"Ray worker killed mid-trial:    {('pid %s, trial %s' % (wk['pid'], wk['policy'])) if wk else 'NOT DONE'}; "
        f"'worker lost' failures: {len(rep['worker_lost_failures'])} (Ray retried the task)",
        f"trial states: {rep['states']} ({rep['trials_total']} trials)",
        f"RESULT: {'PASS' if rep['ok'] else 'FAIL'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "driver":
        driver_main(argv[1], argv[2], float(argv[3]), argv[4], argv[5] if len(argv) > 5 else STUDY)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10, help="driver SIGKILLs (default 10)")
    ap.add_argument("--n-trials", type=int, default=20)
    ap.add_argument("--sleep", type=float, default=1.5, help="seconds per fake trial")
    ap.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite in the work folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=900, help="seconds; kills stop when it is reached")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--json", action="store_true", help="also print the full report as JSON")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="ap_chaos_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rep = Chaos(work, a.storage, a.n_trials, a.kills, a.sleep, a.seed, a.time_limit).run()
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    print(report(rep))
    if a.json:
        print(json.dumps(rep, indent=1, default=str))
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
