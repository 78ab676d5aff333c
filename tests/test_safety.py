"""Safe defaults: YAML is read safely, nothing user-supplied is unpickled, storage passwords never
show, and the dashboard server and a local Ray listen on 127.0.0.1 only."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_config_dict

optuna = pytest.importorskip("optuna")

from typer.testing import CliRunner  # noqa: E402

from autoprune import _study as S  # noqa: E402
from autoprune.cli import app  # noqa: E402

PKG = REPO / "autoprune"
SECRET = "s3cr3tPassw0rd"


def _sources() -> dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text() for p in PKG.rglob("*.py")}


def _listeners(pids: set[int] | None = None) -> list[tuple[str, int, int]]:
    """(address hex, port, pid) of listening TCP sockets (IPv4 and IPv6), optionally of some pids only."""
    inode_pid: dict[str, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or (pids is not None and int(d.name) not in pids):
            continue
        try:
            for fd in (d / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inode_pid[link[8:-1]] = int(d.name)
        except OSError:
            continue
    out = []
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(f).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inode_pid:
                ip, port = parts[1].split(":")
                out.append((ip, int(port, 16), inode_pid[parts[9]]))
    return out


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


# ----------------------------------------------------------------------------- YAML
@pytest.mark.parametrize("kind", ["config", "policy", "space"])
def test_yaml_python_tags_are_refused(tmp_path, kind):
    marker = tmp_path / "pwned"
    evil = f'!!python/object/apply:os.system ["touch {marker}"]\n'
    f = tmp_path / f"{kind}.yaml"
    f.write_text(f"model: {evil}" if kind != "policy" else f"criterion: {evil}")
    raw = tiny_config_dict(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    args = {"config": ["baseline", "-c", str(f)], "policy": ["prune", "-c", str(cfg), "--policy", str(f)],
            "space": ["search", "-c", str(f)]}[kind]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert str(f) in res.output and "python/object" in res.output and "Traceback" not in res.output
    assert not marker.exists()


def test_package_reads_yaml_only_with_safe_load():
    bad = {n: m for n, src in _sources().items()
           for m in re.findall(r"yaml\.(?:load|unsafe_load|full_load|load_all)\s*\(|Loader\s*=", src)}
    assert not bad, f"unsafe YAML loading: {bad}"


# ----------------------------------------------------------------------------- no pickles
def test_no_pickle_of_user_files():
    src = _sources()
    loads = [(n, m) for n, s in src.items() for m in re.findall(r"torch\.load\([^)]*\)", s)]
    assert loads, "expected the baseline checkpoint's torch.load"
    assert all("weights_only=True" in m for _, m in loads), loads
    for n, s in src.items():
        assert not re.search(r"^\s*(import|from)\s+(pickle|cloudpickle|dill|joblib)\b", s, re.M), n
        assert "allow_pickle=True" not in s and "trust_remote_code=True" not in s, n
        assert "weights_only=False" not in s, n
    # exports are safetensors and never copy pickled checkpoints
    from autoprune import export

    assert {".bin", ".pt", ".pth", ".pkl", ".ckpt"} <= set(export._SKIP_SUFFIXES)


# ----------------------------------------------------------------------------- passwords
def test_password_masked_for_unreachable_storage(tmp_path):
    """Every command given a postgresql:// URL with a password: the password is in no output or log."""
    url = f"postgresql://user:{SECRET}@127.0.0.1:9/db"
    raw = tiny_config_dict(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"config": raw, "criteria": ["l1"], "n_trials": 1}))
    runner = CliRunner()
    for args in (["status", "--storage", url, "--study", "x"], ["search", "-c", str(space), "--storage", url],
                 ["resume", "-c", str(space), "--storage", url],
                 ["dashboard", "--storage", url, "--study", "x", "-o", str(tmp_path / "d.html")],
                 ["export", "--storage", url, "--study", "x", "--trial", "0", "-o", str(tmp_path / "e")]):
        res = runner.invoke(app, ["-v", *args])
        assert res.exit_code == 2, (args, res.output)
        assert SECRET not in res.output and "user:***@" in res.output, (args, res.output)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "autoprune", "-v", "search", "-c", str(space), "--storage", url],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and SECRET not in p.stdout + p.stderr and "Traceback" not in p.stderr


@pytest.mark.postgres
@pytest.mark.slow
def test_password_masked_in_search_logs_status_and_html(pg_url, tmp_path, caplog):
    """A real search on PostgreSQL (fake trials): no log record, status output, dashboard file or
    served page contains the password."""
    import functools

    from autoprune.search import run_search, space_from_dict
    from autoprune.search._fake import fake_trial
    from urllib.parse import urlsplit

    pw = urlsplit(pg_url).password
    assert pw
    raw = tiny_config_dict(tmp_path)
    space = space_from_dict({"config": raw, "criteria": ["l1"], "n_trials": 2, "trials_in_flight": 2,
                             "sampler": "random", "accuracy_drop_floor": None}, str(tmp_path / "s.yaml"), tmp_path)
    name = f"mask_{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.DEBUG):
        run_search(space, study_name=name, storage=pg_url, trial_fn=functools.partial(fake_trial, sleep=0.1),
                   dense_metrics={"accuracy": 0.9}, progress=False)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "created study" in text and pw not in text
    runner = CliRunner()
    res = runner.invoke(app, ["-v", "status", "--storage", pg_url, "--study", name])
    assert res.exit_code == 0 and pw not in res.output
    html = tmp_path / "d.html"
    res = runner.invoke(app, ["-v", "dashboard", "--storage", pg_url, "--study", name, "-o", str(html)])
    assert res.exit_code == 0 and pw not in res.output and pw not in html.read_text()
    page, out = _serve_and_get(["--storage", pg_url, "--study", name], tmp_path)
    assert pw not in page and pw not in out
    assert "Pareto" in page or "pareto" in page


# the session-scoped server fixture of test_postgres.py (skips, or fails with CI=true, without a server)
from test_postgres import pg_url  # noqa: E402,F811


# ----------------------------------------------------------------------------- loopback only
def _serve_and_get(args: list[str], tmp_path: Path) -> tuple[str, str]:
    """Start ``autoprune dashboard --serve --port 0`` (a subprocess), check it listens on 127.0.0.1
    only, GET its page, stop it. Returns (page, console output)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="500")
    proc = subprocess.Popen([sys.executable, "-m", "autoprune", "dashboard", *args, "--serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
                            stdin=subprocess.DEVNULL)
    try:
        out: list[str] = []
        deadline = time.time() + 120
        m = None
        while time.time() < deadline and m is None:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            out.append(line)
            m = re.search(r"http://([\d.]+):(\d+)/", "".join(out))
        assert m, "".join(out)
        host, port = m.group(1), int(m.group(2))
        assert host == "127.0.0.1"
        mine = [(ip, p) for ip, p, _ in _listeners({proc.pid}) if p == port]
        assert mine and all(ip in LOOPBACK for ip, _ in mine), mine
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60).read().decode()
        return page, "".join(out)
    finally:
        proc.kill()
        proc.wait()


def test_dashboard_serve_binds_loopback(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    st = optuna.create_study(study_name="x", storage=url, directions=S.DIRECTIONS)
    st.set_user_attr(S.ATTR_DENSE, {"accuracy": 0.9})
    page, out = _serve_and_get(["--storage", url, "--study", "x"], tmp_path)
    assert "<html" in page.lower()


_RAY_PROBE = """
import json, os, sys
sys.path.insert(0, sys.argv[2])
from test_safety import _listeners
from autoprune.search._dispatch import ray_session, ray_temp_dir
import ray
tmp = ray_temp_dir(sys.argv[1])
with ray_session(address=None, num_cpus=1, run_dir=sys.argv[1]):
    node = ray.nodes()[0]["NodeManagerAddress"]
    gcs = ray.get_runtime_context().gcs_address
    pids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if tmp in " ".join(os.readlink(f"/proc/{d}/fd/{fd}") for fd in os.listdir(f"/proc/{d}/fd")) \\
                        or d == str(os.getpid()):
                    pids.add(int(d))
            except OSError:
                pass
    print(json.dumps({"node": node, "gcs": gcs, "listen": _listeners(pids), "pids": len(pids)}))
"""


@pytest.mark.slow
def test_local_ray_is_loopback_only(tmp_path):
    """A local Ray started by the driver: node IP 127.0.0.1 and every listening socket of its
    processes on the loopback interface."""
    probe = tmp_path / "probe.py"
    probe.write_text(_RAY_PROBE)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    run_dir = tmp_path / "r"
    p = subprocess.run([sys.executable, str(probe), str(run_dir), str(REPO / "tests")], capture_output=True,
                       text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["node"] == "127.0.0.1" and rep["gcs"].startswith("127.0.0.1:"), rep
    assert rep["pids"] >= 3 and rep["listen"], rep
    assert all(ip in LOOPBACK for ip, _, _ in rep["listen"]), rep["listen"]
