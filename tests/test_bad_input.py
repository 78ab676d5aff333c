"""Bad input catalogue: every case runs the real CLI (typer's CliRunner, a few through
``python -m autoprune`` in a subprocess) and must give one clear ``error:`` line naming the file or
field and how to fix it, exit status 2, no traceback (unless ``--debug``), and leave the existing
study storage byte-for-byte unchanged with no new study database created.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_tiny_model, tiny_config_dict

optuna = pytest.importorskip("optuna")

from typer.testing import CliRunner  # noqa: E402

from autoprune import _study as S  # noqa: E402
from autoprune.cli import app  # noqa: E402

GOOD_POLICY = {"criterion": "l1", "granularity": "structured", "head_sparsity": [0.25, 0.5],
               "ffn_sparsity": [0.25, 0.5], "retrain": {"steps": 4, "batch_size": 16}}


def _w(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: tiny model + data, run config, search space, a valid policy, and a study
    database ``runs/space.db`` (study 'space') holding two COMPLETE trials."""
    from autoprune.policy import PruningPolicy
    from autoprune.search._fake import fake_result

    root = tmp_path_factory.mktemp("bad")
    raw = tiny_config_dict(root)
    raw["run_dir"] = str(root / "runs")
    cfg = _w(root / "config.yaml", raw)
    space = _w(root / "space.yaml", {"config": "config.yaml", "criteria": ["l1"], "n_trials": 2,
                                     "structured": {"heads": {"base": [0.0, 0.5]}}})
    policy = _w(root / "policy.yaml", GOOD_POLICY)
    (root / "runs").mkdir()
    url = f"sqlite:///{root / 'runs' / 'space.db'}"
    study = optuna.create_study(study_name="space", storage=url, directions=S.DIRECTIONS)
    study.set_user_attr(S.ATTR_DENSE, {"accuracy": 0.9})
    study.set_user_attr(S.ATTR_CONFIG, dict(raw))
    for k, (h, f) in enumerate(((0.25, 0.25), (0.5, 0.5))):
        pol = PruningPolicy.model_validate(dict(GOOD_POLICY, head_sparsity=[h, h], ffn_sparsity=[f, f]))
        res = fake_result(pol, 0.88 - 0.05 * k, 1.3 + 0.4 * k).to_dict()
        study.add_trial(optuna.trial.create_trial(
            params={"x": float(k)}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            values=[res["accuracy"], res["speedup"]],
            user_attrs={S.T_POLICY: pol.to_dict(), S.T_SUMMARY: pol.summary(), S.T_RESULT: res}))
    return {"root": root, "raw": raw, "config": cfg, "space": space, "policy": policy, "url": url,
            "db": root / "runs" / "space.db"}


def fingerprint(root: Path) -> dict[str, str]:
    """sha256 of every database file under the workspace (a new or changed one shows up)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".db", ".sqlite", ".sqlite3")}


def n_trials(ws) -> int:
    return len(optuna.load_study(study_name="space", storage=ws["url"]).trials)


def bad(ws, args: list[str], *needles: str, subprocess_: bool = False) -> str:
    """Run the CLI; require exit 2, one ``error:`` line containing every needle, no traceback, and the
    study storage unchanged. Returns the output."""
    before, trials = fingerprint(ws["root"]), n_trials(ws)
    if subprocess_:
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        p = subprocess.run([sys.executable, "-m", "autoprune", *args], capture_output=True, text=True, timeout=300,
                           cwd=ws["root"], env=env, stdin=subprocess.DEVNULL)
        code, output = p.returncode, p.stdout + p.stderr
    else:
        res = CliRunner().invoke(app, args)
        code, output = res.exit_code, res.output
        assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), \
            f"{args}: raised {res.exception!r}\n{output}"
    assert code == 2, f"{args}: exit {code}\n{output}"
    assert "Traceback" not in output, output
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, f"expected one 'error:' line:\n{output}"
    for n in needles:
        assert n in output, f"{args}: '{n}' not in:\n{output}"
    assert fingerprint(ws["root"]) == before, f"{args}: a study database was created or changed"
    assert n_trials(ws) == trials
    print(f"[{' '.join(args[:1])}] {errors[0]}")
    return output


def cfg_with(ws, name: str, **over) -> Path:
    raw = dict(ws["raw"])
    for k, v in over.items():
        raw[k] = v
    return _w(ws["root"] / name, raw)


def data_with(ws, name: str, **files) -> dict:
    return dict(ws["raw"]["data"], files=dict(ws["raw"]["data"]["files"], **files))


# ----------------------------------------------------------------------------- YAML
def test_malformed_yaml_config(ws):
    f = _w(ws["root"] / "broken.yaml", "model: {name_or_path: x\ndata: [\n")
    bad(ws, ["baseline", "-c", str(f)], str(f), "malformed YAML", "line")


def test_malformed_yaml_space_subprocess(ws):
    f = _w(ws["root"] / "broken_space.yaml", "criteria: [l1\n  n_trials: : 3\n")
    bad(ws, ["search", "-c", str(f)], str(f), "malformed YAML", subprocess_=True)


def test_yaml_not_a_mapping(ws):
    f = _w(ws["root"] / "list.yaml", "- a\n- b\n")
    bad(ws, ["prune", "-c", str(ws["config"]), "--policy", str(f)], str(f), "mapping")


# ----------------------------------------------------------------------------- search space
@pytest.mark.parametrize("over,needle", [
    ({"criteria": ["l1", "magnitude"]}, "criteria"),
    ({"granularities": ["blocks"]}, "granularities"),
    ({"sampler": "cmaes"}, "sampler"),
    ({"structured": {"heads": {"range": [0.0, 1.2]}}}, "structured.heads"),
])
def test_bad_search_space(ws, over, needle):
    f = _w(ws["root"] / f"space_{needle.replace('.', '_')}.yaml", {"config": "config.yaml", "n_trials": 2, **over})
    out = bad(ws, ["search", "-c", str(f)], str(f), needle)
    assert not (ws["root"] / "runs" / f"{f.stem}.db").exists()


def test_space_per_layer_ranges_wrong_length(ws):
    f = _w(ws["root"] / "space_layers.yaml", {"config": "config.yaml", "n_trials": 2,
                                               "structured": {"ffn": {"mode": "free", "range": [[0, .5]] * 3}}})
    bad(ws, ["search", "-c", str(f)], "3 per-layer pairs", "2 encoder layers", "give one [low, high] per layer")


# ----------------------------------------------------------------------------- policy
@pytest.mark.parametrize("over,needle", [
    ({"criterion": "magnitude"}, "criterion"),
    ({"granularity": "blocks"}, "granularity"),
    ({"head_sparsity": [0.5, 1.5]}, "head_sparsity"),
    ({"ffn_sparsity": [-0.1, 0.5]}, "ffn_sparsity"),
])
def test_bad_policy_field(ws, over, needle):
    f = _w(ws["root"] / f"pol_{needle}.yaml", dict(GOOD_POLICY, **over))
    bad(ws, ["prune", "-c", str(ws["config"]), "--policy", str(f)], str(f), needle)


def test_policy_per_layer_list_wrong_length(ws):
    f = _w(ws["root"] / "pol_len.yaml", dict(GOOD_POLICY, head_sparsity=[0.1, 0.2, 0.3], ffn_sparsity=[0.1, 0.2, 0.3]))
    bad(ws, ["prune", "-c", str(ws["config"]), "--policy", str(f)], str(f), "'head_sparsity' has 3 entries",
        "2 encoder layers")


# ----------------------------------------------------------------------------- model
def test_missing_model_path(ws):
    f = cfg_with(ws, "cfg_nomodel.yaml", model={"name_or_path": str(ws["root"] / "no-such-model")})
    bad(ws, ["prune", "-c", str(f), "--policy", str(ws["policy"])], "model.name_or_path", "no-such-model",
        "does not exist")


def test_unsupported_architecture_gpt2(ws):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    d = ws["root"] / "tiny-gpt2"
    if not d.exists():
        GPT2ForSequenceClassification(GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50,
                                                 n_positions=32, num_labels=2)).save_pretrained(d)
    f = cfg_with(ws, "cfg_gpt2.yaml", model={"name_or_path": str(d)})
    out = bad(ws, ["prune", "-c", str(f), "--policy", str(ws["policy"])], "gpt2", subprocess_=True)
    assert "bert" in out.lower()  # names the supported families


# ----------------------------------------------------------------------------- data
def test_data_file_missing(ws):
    f = cfg_with(ws, "cfg_nofile.yaml", data=data_with(ws, "x", train=str(ws["root"] / "nope.tsv")))
    bad(ws, ["baseline", "-c", str(f)], "data.files.train", "nope.tsv")


def test_empty_split(ws):
    empty = _w(ws["root"] / "data" / "empty_val.tsv", "sentence\tlabel\n")
    f = cfg_with(ws, "cfg_empty.yaml", data=data_with(ws, "x", validation=str(empty)))
    bad(ws, ["baseline", "-c", str(f)], "empty", "empty_val.tsv")


def test_missing_text_column(ws):
    f = cfg_with(ws, "cfg_text.yaml", data=dict(ws["raw"]["data"], text_column="review"))
    bad(ws, ["baseline", "-c", str(f)], "review", "sentence")


def test_missing_label_column(ws):
    f = cfg_with(ws, "cfg_label.yaml", data=dict(ws["raw"]["data"], label_column="stars"))
    bad(ws, ["baseline", "-c", str(f)], "stars")


def test_search_with_missing_data_creates_no_study(ws):
    """The data is checked before a study database exists (a failing search leaves nothing behind)."""
    raw = dict(ws["raw"], data=data_with(ws, "x", train=str(ws["root"] / "gone.tsv")),
               run_dir=str(ws["root"] / "runs_missing"))
    f = _w(ws["root"] / "space_nodata.yaml", {"config": raw, "criteria": ["l1"], "n_trials": 2})
    bad(ws, ["search", "-c", str(f)], "gone.tsv")
    assert not list((ws["root"] / "runs_missing").glob("*.db"))


# ----------------------------------------------------------------------------- storage and studies
def test_unreachable_storage_subprocess(ws):
    out = bad(ws, ["status", "--storage", "postgresql://u:hunter2pw@127.0.0.1:9/db", "--study", "x"],
              "cannot open storage", "u:***@127.0.0.1:9", subprocess_=True)
    assert "hunter2pw" not in out


@pytest.mark.parametrize("url,needle", [
    ("notaurl", "sqlite:///"),
    ("sqlite:////no/such/folder/x.db", "/no/such/folder"),
    ("mongodb://u:pw@h/db", "postgresql://user:password@host"),
])
def test_malformed_storage_url(ws, url, needle):
    bad(ws, ["status", "--storage", url, "--study", "x"], needle)
    assert not Path("/no/such/folder").exists()


def test_search_malformed_storage_url(ws):
    bad(ws, ["search", "-c", str(ws["space"]), "--storage", "sqlite:////no/such/folder/x.db"], "/no/such/folder")


@pytest.mark.parametrize("cmd", ["resume", "status", "export", "dashboard"])
def test_unknown_study_name(ws, cmd):
    args = [cmd, "-c", str(ws["space"]), "--study", "nosuch", "--storage", ws["url"]]
    if cmd == "export":
        args += ["--trial", "0", "-o", str(ws["root"] / "exp_x")]
    bad(ws, args, "study 'nosuch' not found", "space")
    assert not (ws["root"] / "exp_x").exists()


def test_unknown_study_storage_file_missing_subprocess(ws):
    url = f"sqlite:///{ws['root'] / 'runs' / 'other.db'}"
    bad(ws, ["resume", "-c", str(ws["space"]), "--storage", url], "other.db", subprocess_=True)
    assert not (ws["root"] / "runs" / "other.db").exists()


@pytest.mark.parametrize("args,needle", [
    (["--min-speedup", "50"], "50"),
    (["--max-accuracy-drop", "0.1"], "0.1"),
    (["--trial", "99"], "99"),
])
def test_export_selector_nothing_qualifies(ws, args, needle):
    out_dir = ws["root"] / "exp_none"
    bad(ws, ["export", "-c", str(ws["space"]), *args, "-o", str(out_dir)], needle)
    assert not out_dir.exists()


# ----------------------------------------------------------------------------- exported policies
def test_corrupt_policy_yaml_apply(ws):
    f = _w(ws["root"] / "corrupt" / "policy.yaml", "policy: {criterion: l1, head_sparsity: [0.1,\nmetrics: ]]\n")
    bad(ws, ["apply", str(f), "-c", str(ws["config"])], str(f), "malformed YAML")


def test_policy_binary_garbage_apply(ws):
    f = ws["root"] / "corrupt2" / "policy.yaml"
    f.parent.mkdir(exist_ok=True)
    f.write_bytes(b"\x80\x04\x95\x00garbage\xff\xfe")
    bad(ws, ["apply", str(f), "-c", str(ws["config"])], str(f))


def test_policy_for_a_different_model_shape(ws):
    """An exported policy of a 6-layer model applied to the 2-layer tiny model."""
    doc = {"policy": dict(GOOD_POLICY, head_sparsity=[0.5] * 6, ffn_sparsity=[0.5] * 6),
           "metrics": {"accuracy": 0.9}, "trial": 3}
    f = _w(ws["root"] / "six" / "policy.yaml", doc)
    bad(ws, ["apply", str(f), "-c", str(ws["config"])], str(f), "6", "2")


def test_policy_kept_indices_beyond_model(ws):
    """Kept head indices that do not exist in this model (the file claims this very base model)."""
    from autoprune.export import weights_sha256

    sha, _ = weights_sha256(ws["raw"]["model"]["name_or_path"])
    pol = dict(GOOD_POLICY, kept_heads=[[0, 1, 7], [0, 1]], kept_neurons=[list(range(48)), list(range(32))])
    doc = {"policy": pol, "metrics": {"accuracy": 0.9}, "base_model": {"sha256": sha}}
    f = _w(ws["root"] / "wide" / "policy.yaml", doc)
    bad(ws, ["apply", str(f), "-c", str(ws["config"])], str(f), "kept_heads[0]", "does not match this model")


# ----------------------------------------------------------------------------- --debug
def test_debug_shows_the_traceback(ws):
    f = _w(ws["root"] / "broken_dbg.yaml", "a: [\n")
    res = CliRunner().invoke(app, ["--debug", "baseline", "-c", str(f)])
    assert res.exit_code != 0 and res.exception is not None
    from autoprune.errors import ConfigError

    assert isinstance(res.exception, ConfigError)


# ----------------------------------------------------------------------------- one guard for every command
def _bench():
    """The case table of ``benchmarks/bad_input.py`` (which runs it through ``python -m autoprune``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bad_input_bench", REPO / "benchmarks" / "bad_input.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


BENCH = _bench()


@pytest.fixture(scope="module")
def table_ws(ws):
    from conftest import readonly_place

    t = dict(ws, ro=readonly_place(ws["root"]))
    yield t
    if t["ro"] is not None and t["ro"].is_relative_to(ws["root"]):
        t["ro"].chmod(0o755)


@pytest.mark.parametrize("name", [c.name for c in BENCH.CASES])
def test_bad_value_table(table_ws, name):
    """Ports, output paths that are files or folders or read-only, data without a header / binary / not
    UTF-8 / the training file, lengths above the position limit, a fine-tuned model that does not fit
    the data: one line, exit 2, no traceback, storage unchanged, for every command."""
    try:
        args, needles = BENCH.case(name).build(table_ws)
    except BENCH.Skip as exc:
        pytest.skip(str(exc))
    bad(table_ws, args, *needles)
    for p in (table_ws["root"] / "cases").glob("runs_*"):  # a failed search left no study behind
        assert not list(p.glob("*.db")), p
