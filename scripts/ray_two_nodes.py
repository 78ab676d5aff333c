#!/usr/bin/env python
"""Two Ray nodes on this machine (a head and a worker, 1 CPU each) and a search spread over both.

Starts ``ray start --head --node-ip-address=127.0.0.1 --port=<free> --num-cpus 1 --temp-dir <unique>``
and ``ray start --address 127.0.0.1:<port> --num-cpus 1``, runs a 6-trial search with a fake
3-second trial function through ``run_search(address=...)`` (two trials in flight), prints the Ray
node id recorded on each trial (``user_attrs['node_id']``) and checks both nodes ran trials.

Tear-down never calls ``ray stop`` (it would stop every Ray on the machine, e.g. other test runs):
it kills only the processes whose command line names this script's unique temp dir, plus the
processes it started itself.

Usage:
    .venv/bin/python scripts/ray_two_nodes.py
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_using(marker: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace") or _has_open(d, marker):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def _has_open(proc: Path, marker: str) -> bool:
    """Ray agents rename themselves (``ray::DashboardAgent``); find them by their open log files."""
    try:
        return any(marker in os.readlink(fd) for fd in (proc / "fd").iterdir())
    except OSError:
        return False


def teardown(marker: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = pids_using(marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if pids:
            time.sleep(2)


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="ap2n_", dir="/tmp"))
    port = free_port()
    # Ray 2.60 token authentication: the head enables it for a new cluster, but a joining node must
    # be told (RAY_AUTH_MODE=token; the token is ~/.ray/auth_token, created by the head if missing).
    # The search driver turns it on by itself when it joins with --address and a token exists.
    env = dict(os.environ, RAY_AUTH_MODE="token")
    env.pop("RAY_ADDRESS", None)
    addr = f"127.0.0.1:{port}"
    try:
        subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
                        f"--temp-dir={tmp / 'ray'}", "--include-dashboard=false", "--disable-usage-stats"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run([RAY, "start", f"--address={addr}", "--num-cpus=1", "--disable-usage-stats"],
                       check=True, env=env, stdout=subprocess.DEVNULL)

        import ray

        from conftest import tiny_config_dict
        from autoprune.search import run_search, space_from_dict
        from autoprune.testing import sleep_trial

        cfg = tiny_config_dict(tmp / "tiny")
        space = space_from_dict({"config": dict(cfg, run_dir=str(tmp / "runs")), "n_trials": 6, "trials_in_flight": 2,
                                 "sampler": "random", "accuracy_drop_floor": None, "criteria": ["l1"]}, "two_nodes")
        study = run_search(space, study_name="two_nodes", address=addr, progress=False,
                           trial_fn=functools.partial(sleep_trial, sleep=3.0), dense_metrics={"accuracy": 0.9})
        ray.init(address=addr, configure_logging=False, log_to_driver=False)
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        print(f"cluster at {addr}: {len(nodes)} nodes, {ray.cluster_resources().get('CPU')} CPUs")
        ray.shutdown()
        per = Counter()
        for t in study.get_trials():
            nid = t.user_attrs.get("node_id")
            per[nid] += 1
            print(f"trial {t.number}: {t.state.name:8s} node {nid[:12]}  worker {t.user_attrs.get('worker')}")
        print("trials per node:", {k[:12]: v for k, v in per.items()})
        ok = len(per) == 2 and set(per) <= set(nodes)
        print("both nodes ran trials" if ok else "FAIL: trials did not run on both nodes")
        return 0 if ok else 1
    finally:
        teardown(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
