"""save_pruned / load_pruned: per-layer shapes, dropped layers, pooling and int8 survive a round trip."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from autoprune.errors import ModelError
from autoprune.models import get_adapter, load_model
from autoprune.policy import PruningPolicy
from autoprune.pruner import prune
from autoprune.onnx_export import is_int8, onnx_int8_model
from autoprune.serialization import load_pruned, load_record, save_pruned
from autoprune.surgery import drop_layers, prune_structured
from conftest import REPO, make_tiny_model, token_batch


_batch = token_batch


@torch.no_grad()
def _logits(model):
    return model(**_batch()).logits


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_round_trip_keeps_shapes_and_logits(tmp_path, arch):
    model = load_model(str(make_tiny_model(tmp_path / arch, arch, layers=3))).eval()
    prune_structured(model, [[1], [0, 3], [0, 1, 2, 3]], [[5, 6, 7], list(range(20)), list(range(64))])
    drop_layers(model, [1])
    out = save_pruned(model, tmp_path / "saved")
    again = load_pruned(out)
    assert not again.training
    assert get_adapter(again).shape(again) == ([1, 4], [3, 64])
    assert get_adapter(again).depth(again.config) == 2
    torch.testing.assert_close(_logits(again), _logits(model))
    meta = json.loads((out / "config.json").read_text())["autoprune"]
    assert meta["heads_per_layer"] == [1, 4] and meta["quantization"] is None and meta["pooling"] == "cls"


def test_record_and_tokenizer_are_saved_beside_the_model(tmp_path):
    from transformers import AutoTokenizer

    path = make_tiny_model(tmp_path / "m", layers=3)
    model = load_model(str(path)).eval()
    rec = prune(model, PruningPolicy(criterion="l2", head_sparsity=[0.5, 1.0, 0.25], ffn_sparsity=[0.5, 0.5, 0.5]))
    out = save_pruned(model, tmp_path / "saved", AutoTokenizer.from_pretrained(str(path)), rec)
    assert load_record(out) == rec and rec.dropped_layers == [1]
    assert json.loads((out / "config.json").read_text())["autoprune"]["dropped_layers"] == [1]
    assert AutoTokenizer.from_pretrained(str(out))("a good film")["input_ids"]
    torch.testing.assert_close(_logits(load_pruned(out)), _logits(model))
    save_pruned(model, out)  # saved again without a record: no stale record is left behind
    assert load_record(out) is None


def test_mean_pooling_survives(tmp_path):
    from autoprune.models._pooling import MeanPoolingBertForSequenceClassification

    model = load_model(str(make_tiny_model(tmp_path / "m")), pooling="mean").eval()
    prune_structured(model, [[0, 2], [1]], [list(range(10)), list(range(30))])
    out = save_pruned(model, tmp_path / "saved")
    again = load_pruned(out)
    assert isinstance(again, MeanPoolingBertForSequenceClassification)
    assert json.loads((out / "config.json").read_text())["autoprune"]["pooling"] == "mean"
    torch.testing.assert_close(_logits(again), _logits(model))


def test_int8_is_rebuilt_never_returned_as_float(tmp_path):
    model = load_model(str(make_tiny_model(tmp_path / "m"))).eval()
    prune_structured(model, [[0, 2], [1, 3]], [list(range(32)), list(range(48))])
    with pytest.raises(ModelError, match="takes the float model"):
        save_pruned(onnx_int8_model(model), tmp_path / "q")
    out = save_pruned(model, tmp_path / "q", quantized=True)
    again = load_pruned(out)
    assert is_int8(again)  # ONNX Runtime dynamic int8 of the saved float weights
    torch.testing.assert_close(_logits(again), _logits(onnx_int8_model(model)))
    torch.testing.assert_close(_logits(load_pruned(out, as_float=True)), _logits(model))

    # a model saved with the older flag is rebuilt as int8 too; an unknown quantization is refused
    cfg_file = out / "config.json"
    cfg = json.loads(cfg_file.read_text())
    meta = cfg["autoprune"]
    cfg["autoprune"] = {"heads_per_layer": meta["heads_per_layer"], "ffn_per_layer": meta["ffn_per_layer"],
                        "quantized": True}
    cfg_file.write_text(json.dumps(cfg))
    assert is_int8(load_pruned(out))
    cfg["autoprune"] = {**meta, "quantization": "int4_awq"}
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="quantization 'int4_awq' is not one autoprune can rebuild"):
        load_pruned(out)


def test_load_errors_say_what_to_do(tmp_path):
    dense = make_tiny_model(tmp_path / "dense")
    with pytest.raises(ModelError, match="no config.json"):
        load_pruned(tmp_path / "nothing")
    with pytest.raises(ModelError, match="not saved by autoprune: load a dense checkpoint with autoprune.load_model"):
        load_pruned(dense)
    model = load_model(str(dense)).eval()
    prune_structured(model, [[0], [1]], None)
    out = save_pruned(model, tmp_path / "p")
    with pytest.raises(ModelError, match=r"pruned model saved by autoprune.*autoprune.load_pruned"):
        load_model(str(out))
    cfg = json.loads((out / "config.json").read_text())
    cfg["autoprune"]["heads_per_layer"] = [1, 1, 1]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="shape record has 3 layers but the config has 2"):
        load_pruned(out)
    cfg["autoprune"]["heads_per_layer"] = [2, 1]  # a shape the weights do not have
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="weights do not match the recorded shape"):
        load_pruned(out)


def _imports(path: Path) -> set[str]:
    """Every autoprune module ``path`` imports, at module level or inside functions (``if TYPE_CHECKING:``
    blocks left out: they never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(c) for n in ast.walk(tree) if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING"
                   for b in n.body for c in ast.walk(b)}
    out = set()
    for n in ast.walk(tree):
        if id(n) in typing_only:
            continue
        if isinstance(n, ast.ImportFrom) and n.level == 0 and (n.module or "").startswith("autoprune"):
            out.add(n.module)
            out.update(f"{n.module}.{a.name}" for a in n.names)
        elif isinstance(n, ast.Import):
            out.update(a.name for a in n.names if a.name.startswith("autoprune"))
    return out


def test_no_import_circle_inside_the_package():
    """Modules (subpackages as one node) import each other without a circle, lazy imports included."""
    root = REPO / "autoprune"
    files = {".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): f for f in root.rglob("*.py")}

    def node(name: str) -> str:
        return ".".join(name.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for name, f in files.items():
        deps = {node(d) for d in _imports(f) if d in files}
        graph.setdefault(node(name), set()).update(deps - {node(name)})
    assert "autoprune.surgery" not in graph["autoprune.models"]
    state: dict[str, int] = {}

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(v):] + [v]))
            if not state.get(v):
                visit(v, path + [v])
        state[u] = 2

    for u in sorted(graph):
        if not state.get(u):
            visit(u, [u])
