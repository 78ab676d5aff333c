"""The dashboard page of a small real study: content, offline rendering in headless Chromium,
masking of storage passwords, the live server and the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from test_export import POLICIES, add_result_trial, build_real_study, new_study
from typer.testing import CliRunner

from autoprune import _study as S
from autoprune.dashboard import build_dashboard, default_output, make_server, write_dashboard
from autoprune.errors import StudyError
from autoprune.search import mask_url
from autoprune.study import load_study

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Real tiny-BERT trials, plus a pruned and a running trial so every state shows."""
    info = build_real_study(tmp_path_factory, name="tinydash")
    st = info["study"]
    st.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED,
                                           user_attrs={S.T_PRUNE: "below the accuracy floor"}))
    return info


def _front_numbers(study) -> set[int]:
    return {t.number for t in study.best_trials}


def _plotly_free(page: str) -> str:
    """The page without the embedded plotly.js (what autoprune generated), JSON escapes of <, >, / undone."""
    own = re.sub(r"<script type=\"text/javascript\">.*?</script>", "", page, count=1, flags=re.S)
    for esc, ch in (("\\u003c", "<"), ("\\u003e", ">"), ("\\u002f", "/"), ("\\u0026", "&")):
        own = own.replace(esc, ch)
    return own


# ----------------------------------------------------------------------------- content
def test_page_contains_the_front_and_everything_else(real):
    st = real["study"]
    page = build_dashboard(st, storage=real["storage"])
    own = _plotly_free(page)
    front = _front_numbers(st)
    assert front
    for n in front:
        assert f"<b>trial {n}</b>" in own  # hover text
        assert f"--trial {n} -o" in own   # export command in the front table
        t = st.trials[n]
        assert f"<td>{t.values[0]:.4f}</td>" in own and f"<td>{t.values[1]:.2f}x</td>" in own
    for text in ("Pareto front", "dense baseline", "accuracy floor", "Per-layer sparsity",
                 "attention heads removed per layer", "FFN neurons removed per layer", "Fronts by criterion",
                 "trials by state", "best accuracy at >= 1.5x",
                 "best accuracy at >= 2x", "Parameter importance", "macro-F1", "FLOPs reduction",
                 "retraining steps", "granularity", "optuna-dashboard"):
        assert text in own, text
    for crit in ("random", "gradient", "l1", "l2"):
        assert f"{crit} front" in own
    # plotly.js is embedded exactly once and nothing is fetched from a CDN
    assert page.count("plotly.js v") <= 2 and "<script src=" not in page and "cdn.plot.ly" not in own
    assert len(page) > 1_000_000  # the library itself is inside
    assert "http-equiv=\"refresh\"" not in page


def test_importances_need_five_completed_trials(tmp_path):
    st = new_study(f"sqlite:///{tmp_path / 'few.db'}", "few", {"model": {"name_or_path": "x"}})
    res = {"accuracy": 0.8, "speedup": 1.5, "accuracy_drop": 0.1, "dense_accuracy": 0.9, "heads_per_layer": [2, 2],
           "ffn_per_layer": [32, 32]}
    for _, pol, _ in POLICIES[:3]:
        add_result_trial(st, pol, res, values=[0.8, 1.5])
    page = _plotly_free(build_dashboard(st))
    assert "Parameter importances appear from 5 completed trials on (3 so far)" in page


def test_bookkeeping_trials_are_not_counted_as_failures(tmp_path):
    st = new_study(f"sqlite:///{tmp_path / 'bk.db'}", "bk", {"model": {"name_or_path": "x"}})
    res = {"accuracy": 0.8, "speedup": 1.5, "accuracy_drop": 0.1, "dense_accuracy": 0.9, "heads_per_layer": [2, 2],
           "ffn_per_layer": [32, 32]}
    add_result_trial(st, POLICIES[0][1], res, values=[0.8, 1.5])
    for attrs in ({S.T_DUPLICATE: True, S.T_FAIL: "duplicate of trial 0; skipped"},
                  {S.T_ORPHANED: True, S.T_FAIL: "driver stopped while the trial ran; re-enqueued"},
                  {S.T_FAIL: "CUDA out of memory"}):
        st.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=attrs))
    assert [S.state_label(t) for t in st.trials] == ["complete", "duplicate skipped", "re-enqueued", "fail"]
    meta = re.search(r"<div class=meta>(.*?)</div>", build_dashboard(st)).group(1)
    assert "1 complete, 1 duplicate skipped, 1 fail, 1 re-enqueued" in meta


def test_empty_study_renders_a_note(tmp_path):
    st = optuna.create_study(directions=S.DIRECTIONS, study_name="empty")
    assert "no completed trials yet" in build_dashboard(st)


def test_storage_passwords_are_masked(real):
    url = "postgresql://alice:s3cr3t-pw@db.example:5432/autoprune"
    page = build_dashboard(real["study"], storage=url)
    assert "s3cr3t-pw" not in page
    assert "postgresql://alice:***@db.example:5432/autoprune" in page
    assert mask_url("mysql+pymysql://u:p@h/d") == "mysql+pymysql://u:***@h/d"
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


# ----------------------------------------------------------------------------- browser
@pytest.fixture(scope="session")
def chromium():
    """Headless Chromium, installed on demand; skipped (outside CI) only if installing fails."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "install_browser.sh")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0 or not os.access(CHROMIUM, os.X_OK):
        reason = f"headless Chromium unavailable: scripts/install_browser.sh failed: {proc.stderr.strip()[-300:]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


_CHECK_HEAD = """<script>window.__errors=[];
window.addEventListener('error',function(e){window.__errors.push('error: '+e.message)});
window.addEventListener('unhandledrejection',function(e){window.__errors.push('rejection: '+e.reason)});
(function(){var ce=console.error;console.error=function(){window.__errors.push('console.error: '+
Array.prototype.join.call(arguments,' '));ce.apply(console,arguments)}})();</script>"""
_CHECK_TAIL = """<script>window.addEventListener('load',function(){setTimeout(function(){
var r={errors:window.__errors,plots:document.querySelectorAll('.js-plotly-plot').length,
svgs:document.querySelectorAll('.js-plotly-plot .main-svg').length,
points:document.querySelectorAll('.js-plotly-plot .scatterlayer .point').length,
plotly:typeof window.Plotly};var p=document.createElement('pre');p.id='__check';
p.textContent=JSON.stringify(r);document.body.appendChild(p)},500)});</script>"""


def _chromium_args(binary: str, tmp: Path) -> list[str]:
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'chrome-profile'}"]


@pytest.mark.browser
def test_page_renders_in_headless_chromium_without_errors(real, chromium, tmp_path):
    page = build_dashboard(real["study"], storage=real["storage"])
    ARTIFACTS.mkdir(exist_ok=True)
    html_file = ARTIFACTS / "dashboard.html"
    html_file.write_text(page, encoding="utf-8")
    # 1) DOM check: the page itself plus a probe that records JS errors and counts rendered plots
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + _CHECK_HEAD, 1).replace("</body>", _CHECK_TAIL + "</body>", 1),
                     encoding="utf-8")
    dom = subprocess.run(_chromium_args(chromium, tmp_path) + ["--virtual-time-budget=15000", "--dump-dom",
                                                              probe.as_uri()],
                         capture_output=True, text=True, timeout=180)
    m = re.search(r'<pre id="__check">(.*?)</pre>', dom.stdout, re.S)
    assert m, f"probe did not run; chromium stderr: {dom.stderr[-2000:]}"
    check = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert check["errors"] == [], check["errors"]
    assert check["plotly"] == "object"
    assert check["plots"] >= 6 and check["svgs"] >= check["plots"]
    assert check["points"] >= len(real["study"].best_trials)
    # 2) screenshot of the unmodified page; console errors go to stderr with --enable-logging
    shot = ARTIFACTS / "dashboard.png"
    if shot.exists():
        shot.unlink()
    proc = subprocess.run(_chromium_args(chromium, tmp_path) + [
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--hide-scrollbars",
        f"--screenshot={shot}", "--window-size=1400,2400", html_file.as_uri()],
        capture_output=True, text=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 50_000, proc.stderr[-2000:]
    console_errors = [ln for ln in proc.stderr.splitlines()
                      if "CONSOLE" in ln and re.search(r"error|uncaught", ln, re.I)]
    assert console_errors == []


# ----------------------------------------------------------------------------- live server
def test_serve_binds_localhost_and_rebuilds_on_each_request(real, tmp_path):
    st = real["study"]
    server = make_server(lambda: optuna.load_study(study_name=real["name"], storage=real["storage"]), port=0,
                         storage=real["storage"], refresh_seconds=3)
    host, port = server.server_address[:2]
    assert host == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}/"
        page = _plotly_free(urllib.request.urlopen(url, timeout=60).read().decode())
        assert '<meta http-equiv="refresh" content="3">' in page
        n_before = len(st.trials)
        assert f"<b>trial {n_before}</b>" not in page
        # a new trial finishes while the page is open: the next request shows it
        res = dict(st.trials[0].user_attrs[S.T_RESULT])
        res.update(accuracy=0.999, speedup=9.0, accuracy_drop=-0.5)
        add_result_trial(st, POLICIES[0][1], res, values=[0.999, 9.0])
        page2 = _plotly_free(urllib.request.urlopen(url, timeout=60).read().decode())
        assert f"<b>trial {n_before}</b>" in page2 and f"--trial {n_before} -o" in page2
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url + "etc/passwd", timeout=30)
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------- CLI and study lookup
def test_cli_dashboard_writes_the_default_file(real, tmp_path):
    from autoprune.cli import app

    r = CliRunner().invoke(app, ["dashboard", "--storage", real["storage"], "--study", real["name"]])
    assert r.exit_code == 0, r.output
    expected = Path(real["storage"][len("sqlite:///"):]).parent / f"{real['name']}_dashboard.html"
    assert expected.is_file() and "Pareto front" in expected.read_text()
    out = tmp_path / "sub" / "d.html"
    r = CliRunner().invoke(app, ["dashboard", "--storage", real["storage"], "--study", real["name"], "-o", str(out)])
    assert r.exit_code == 0 and out.is_file()


def test_cli_dashboard_with_a_space_file_uses_the_search_convention(real, tmp_path):
    from autoprune.cli import app

    run_dir = tmp_path / "runs"
    raw = dict(real["raw"], run_dir=str(run_dir))
    space = tmp_path / "myspace.yaml"
    space.write_text(yaml.safe_dump({"config": raw}))
    run_dir.mkdir()
    st = new_study(f"sqlite:///{run_dir / 'myspace.db'}", "myspace", raw)
    add_result_trial(st, POLICIES[0][1], real["results"]["l1"])
    r = CliRunner().invoke(app, ["dashboard", "-c", str(space)])
    assert r.exit_code == 0, r.output
    assert (run_dir / "myspace_dashboard.html").is_file()


def test_missing_studies_are_clear_errors(real, tmp_path):
    from autoprune.cli import app

    with pytest.raises(StudyError, match=rf"nope.*{real['name']}"):
        load_study(study_name="nope", storage=real["storage"])
    with pytest.raises(StudyError, match="does not exist"):
        load_study(storage=f"sqlite:///{tmp_path / 'none.db'}")
    r = CliRunner().invoke(app, ["dashboard", "--storage", real["storage"], "--study", "nope"])
    assert r.exit_code == 2 and real["name"] in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["dashboard"])
    assert r.exit_code == 2 and "--storage" in r.output


def test_default_output_and_write(real, tmp_path):
    assert default_output("s", None) == Path("dashboard.html")
    assert default_output("s", tmp_path) == tmp_path / "s_dashboard.html"
    p = write_dashboard(real["study"], tmp_path / "a" / "b.html")
    assert p.read_text().startswith("<!DOCTYPE html>")
