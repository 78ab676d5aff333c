"""A real PostgreSQL storage: SIGKILLed driver with two trials in flight, resume from a second process.

The server: ``AUTOPRUNE_TEST_PG_URL`` when set (``scripts/test.sh`` starts one with
``scripts/start_postgres.sh``), else this module starts its own throwaway server with that script and
stops it at the end. When no server can be started the tests skip, except with ``CI=true``, where
they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO
from test_chaos import load_chaos

pytestmark = pytest.mark.postgres
optuna = pytest.importorskip("optuna")
pytest.importorskip("ray")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required in CI (CI=true) but {reason}")
    pytest.skip(f"no PostgreSQL server: {reason} (set AUTOPRUNE_TEST_PG_URL or make scripts/start_postgres.sh work)")


@pytest.fixture(scope="session")
def pg_url():
    url = os.environ.get("AUTOPRUNE_TEST_PG_URL")
    started = None
    if not url:
        d = tempfile.mkdtemp(prefix="ap_pg_")
        try:
            res = subprocess.run(["bash", str(REPO / "scripts" / "start_postgres.sh"), "start", d],
                                 capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(d, ignore_errors=True)
            _unavailable(f"scripts/start_postgres.sh could not run: {exc}")
        if res.returncode != 0:
            shutil.rmtree(d, ignore_errors=True)
            _unavailable(f"scripts/start_postgres.sh failed: {res.stderr.strip()[-800:]}")
        url, started = Path(d, "url").read_text().strip(), d
    try:
        import psycopg2

        psycopg2.connect(url, connect_timeout=10).close()
    except Exception as exc:  # noqa: BLE001
        _unavailable(f"cannot connect to the test server: {type(exc).__name__}")
    yield url
    if started:
        subprocess.run(["bash", str(REPO / "scripts" / "start_postgres.sh"), "stop", started], capture_output=True,
                       timeout=120)
        shutil.rmtree(started, ignore_errors=True)


def _password(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).password or ""


@pytest.mark.slow
def test_sigkilled_driver_resumes_on_postgres(pg_url, tmp_path):
    """Two trials in flight, driver SIGKILLed after at least one trial completed, resumed by a second
    process: nothing completed is lost, nothing is left RUNNING, no duplicate, n_trials reached."""
    from optuna.trial import TrialState

    chaos = load_chaos()
    name = f"pg_{uuid.uuid4().hex[:8]}"
    c = chaos.Chaos(tmp_path, pg_url, n_trials=6, kills=0, sleep=1.5, seed=3, time_limit=240, study=name,
                    log=lambda s: None)
    proc = c.spawn()
    try:
        deadline = time.time() + 150
        while time.time() < deadline:
            assert proc.poll() is None, c._err(c.spawns)
            st = chaos.live_states(pg_url, name)
            if st.count("COMPLETE") >= 1 and st.count("RUNNING") == 2:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the driver did not get two trials in flight in time:\n" + c._err(c.spawns))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        c.cleanup()
    killed = c.record()
    running_at_kill = sorted(t.number for t in killed if t.state == TrialState.RUNNING)
    assert len(running_at_kill) == 2 and c.completed

    c.final_run()  # the second process: resumes, and one Ray worker is SIGKILLed mid-trial on the way
    rep = c.check()
    assert rep["completed_lost"] == [] and rep["duplicates"] == [], rep
    assert rep["left_running_or_waiting"] == [] and rep["reached_n_trials"], rep
    study = optuna.load_study(study_name=name, storage=pg_url.replace("postgresql://", "postgresql+psycopg2://"))
    trials = study.get_trials()
    assert sorted(t.number for t in trials if t.user_attrs.get("orphaned")) == running_at_kill
    retries = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    assert sorted(retries) == running_at_kill
    for n in running_at_kill:
        if "policy" in trials[n].user_attrs:  # dispatched: the very same policy runs again
            assert retries[n].params == trials[n].params
        else:  # killed while its parameters were still being sampled: the sampled ones are kept
            assert trials[n].params.items() <= retries[n].params.items()
    assert study.user_attrs["driver_lease"]["released"] is True
    # the driver's stderr never shows the password of the URL
    pw = _password(pg_url)
    for k in range(1, c.spawns + 1):
        assert pw not in (tmp_path / f"driver{k}.err").read_text(errors="replace")


def test_cli_status_on_postgres_masks_password(pg_url, tmp_path):
    """status/dashboard against the real server work; the password appears in no output or page."""
    from typer.testing import CliRunner

    from autoprune import _study as S
    from autoprune.cli import app

    name = f"pgcli_{uuid.uuid4().hex[:8]}"
    storage = pg_url.replace("postgresql://", "postgresql+psycopg2://")
    study = optuna.create_study(study_name=name, storage=storage, directions=S.DIRECTIONS)
    study.set_user_attr(S.ATTR_DENSE, {"accuracy": 0.9})
    pw = _password(pg_url)
    runner = CliRunner()
    res = runner.invoke(app, ["-v", "status", "--storage", pg_url, "--study", name, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == [] and pw not in res.output
    html = tmp_path / "d.html"
    res = runner.invoke(app, ["-v", "dashboard", "--storage", pg_url, "--study", name, "-o", str(html)])
    assert res.exit_code == 0, res.output
    assert pw not in res.output and pw not in html.read_text()
    # wrong password and unknown study: exit 2, one clear line, no password, no traceback
    bad = pg_url.replace(f":{pw}@", ":wrong-secret-pw@")
    res = runner.invoke(app, ["status", "--storage", bad, "--study", name])
    assert res.exit_code == 2 and "wrong-secret-pw" not in res.output and "Traceback" not in res.output
    assert "***@" in res.output
    res = runner.invoke(app, ["status", "--storage", pg_url, "--study", "no_such_study"])
    assert res.exit_code == 2 and "study 'no_such_study' not found" in res.output and pw not in res.output


def test_cli_search_subprocess_on_postgres(pg_url, tmp_path):
    """`python -m autoprune status` in a subprocess against the server: exit 0, masked URL in logs."""
    name = f"pgsub_{uuid.uuid4().hex[:8]}"
    from autoprune import _study as S

    optuna.create_study(study_name=name, storage=pg_url.replace("postgresql://", "postgresql+psycopg2://"),
                        directions=S.DIRECTIONS)
    res = subprocess.run([sys.executable, "-m", "autoprune", "-v", "status", "--storage", pg_url, "--study", name],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    assert _password(pg_url) not in res.stdout + res.stderr
