"""Shared fixtures: tiny randomly initialised models built from configs and tiny local data.

Nothing is downloaded. ``make_tiny_model`` writes a model directory (config, weights and a small
WordPiece tokenizer) that ``from_pretrained`` loads like any Hub checkout.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# one intra-op thread per test process: the machine has 2 cores and tests may share them
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SST2_DIR = (REPO / ".." / "shared" / "data" / "sst2").resolve()

POS = ["good", "great", "fine", "lovely", "superb", "fun", "warm", "bright"]
NEG = ["bad", "awful", "dull", "poor", "boring", "sad", "cold", "weak"]
FILLER = ["the", "a", "movie", "film", "was", "is", "plot", "story", "very", "quite", "and", "it"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POS + NEG + FILLER


#: every model type make_tiny_model can build (one per registered adapter)
TINY_MODEL_TYPES = ("bert", "distilbert", "roberta", "modernbert", "deberta-v2", "electra", "xlm-roberta",
                    "camembert", "mpnet")


def tiny_hf_config(model_type: str = "bert", *, layers: int = 2, heads: int = 4, hidden: int = 32, ffn: int = 64,
                   num_labels: int = 2, **extra):
    """A tiny ``transformers`` config of ``model_type`` for the test vocabulary (``extra`` overrides fields).

    * ``modernbert``: local attention window 4 (so a 12-token batch really is windowed) and a global layer
      every 2 layers: layer types ``full, sliding, full, ...``;
    * ``deberta-v2``: DeBERTa-v3's attention (relative attention with ``c2p`` and ``p2c``, log buckets, a
      LayerNorm on the relative embeddings, no absolute positions); ``share_att_key`` true as in v3 by
      default, pass ``share_att_key=False`` for separate ``pos_key_proj`` / ``pos_query_proj``;
    * ``electra``: embedding size 16 below the hidden size (the projected embeddings of ELECTRA-small).
    """
    from transformers import AutoConfig

    common = dict(vocab_size=len(VOCAB), num_labels=num_labels, pad_token_id=0)
    bert_like = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn)
    roberta_ids = dict(max_position_embeddings=130, bos_token_id=2, eos_token_id=3)
    if model_type == "bert":
        kw = dict(bert_like, max_position_embeddings=128)
    elif model_type == "distilbert":
        kw = dict(dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=ffn, max_position_embeddings=128)
    elif model_type in ("roberta", "xlm-roberta", "camembert"):
        kw = dict(bert_like, **roberta_ids)
    elif model_type == "electra":
        kw = dict(bert_like, embedding_size=16, max_position_embeddings=128)
    elif model_type == "modernbert":
        kw = dict(bert_like, max_position_embeddings=128, local_attention=4, global_attn_every_n_layers=2,
                  bos_token_id=2, cls_token_id=2, eos_token_id=3, sep_token_id=3)
    elif model_type == "deberta-v2":
        kw = dict(bert_like, max_position_embeddings=128, relative_attention=True, pos_att_type=["p2c", "c2p"],
                  position_buckets=8, max_relative_positions=32, norm_rel_ebd="layer_norm",
                  position_biased_input=False, share_att_key=True, type_vocab_size=0)
    elif model_type == "mpnet":
        kw = dict(bert_like, max_position_embeddings=130, relative_attention_num_buckets=32, bos_token_id=2,
                  eos_token_id=3)
    else:
        raise ValueError(f"make_tiny_model has no config for model_type {model_type!r}; known: {TINY_MODEL_TYPES}")
    return AutoConfig.for_model(model_type, **{**common, **kw, **extra})


def make_tiny_model(path: Path, model_type: str = "bert", *, layers: int = 2, heads: int = 4,
                    hidden: int = 32, ffn: int = 64, num_labels: int = 2, seed: int = 0, **extra) -> Path:
    """Write a tiny randomly initialised ``model_type`` classifier with a WordPiece tokenizer to ``path``.

    ``extra`` overrides config fields (see :func:`tiny_hf_config`), e.g. ``share_att_key=False``.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, BertTokenizerFast

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    cfg = tiny_hf_config(model_type, layers=layers, heads=heads, hidden=hidden, ffn=ffn, num_labels=num_labels,
                         **extra)
    model = AutoModelForSequenceClassification.from_config(cfg)
    model.save_pretrained(path)
    tok = BertTokenizerFast(vocab=str(path / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(path)
    return path


def make_tiny_data(path: Path, n_train: int = 256, n_val: int = 64, n_test: int = 64, seed: int = 0) -> dict[str, str]:
    """Write a learnable sentiment task as TSV files (header ``sentence<TAB>label``)."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
        rows = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.randint(0, 1)
            words = rng.sample(FILLER, 4) + [rng.choice(POS if label else NEG)]
            rng.shuffle(words)
            rows.append(" ".join(words) + f"\t{label}")
        f = path / f"{split}.tsv"
        f.write_text("\n".join(rows) + "\n")
        files[split] = str(f)
    return files


def tiny_config_dict(tmp_path: Path, model_type: str = "bert", *, baseline_steps: int = 30, **model_kw) -> dict:
    """A raw RunConfig mapping for a tiny model and tiny data, fast enough for unit tests."""
    model_dir = make_tiny_model(tmp_path / f"tiny-{model_type}", model_type, **model_kw)
    files = make_tiny_data(tmp_path / "data")
    return {
        "model": {"name_or_path": str(model_dir)},
        "data": {"files": files, "max_length": 16},
        "baseline": {"steps": baseline_steps, "batch_size": 16, "learning_rate": 1e-3, "warmup_ratio": 0.1},
        "measure": {"batch_size": 4, "seq_len": 16, "repeats": 3, "warmup": 1, "batch1": False},
        "run_dir": str(tmp_path / "runs"),
        "calibration_batches": 2,
        "eval_batch_size": 64,
    }


def int8_measure(d: dict) -> dict:
    """``d`` (a raw RunConfig mapping) timed in ONNX Runtime as its speed objective, where int8 policies
    run, with eager PyTorch beside it."""
    targets = [{"name": "ort", "runtime": "onnxruntime"}, {"name": "torch", "runtime": "torch"}]
    return {**d, "measure": {**d["measure"], "targets": targets, "objective": "ort"}}


@pytest.fixture
def tiny_config(tmp_path):
    """A validated RunConfig for a tiny BERT on tiny local data."""
    from autoprune.config import RunConfig

    return RunConfig.model_validate(tiny_config_dict(tmp_path))


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    if not (SST2_DIR / "train.tsv").is_file():
        pytest.skip(f"SST-2 data not found at {SST2_DIR} (expected ../shared/data/sst2 beside the repo)")
    return SST2_DIR



def readonly_place(tmp_path: Path) -> Path | None:
    """A folder path this process cannot write in: a ``chmod 555`` folder under ``tmp_path``, or for root
    (whom permission bits do not stop) a path under ``/sys``, where creating files fails; None if neither."""
    ro = tmp_path / "readonly"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    for p in [ro] if os.geteuid() != 0 else [Path("/sys/autoprune-readonly")]:
        try:
            (p / "probe").mkdir(parents=True)
        except OSError:
            return p
        (p / "probe").rmdir()
    return None


@pytest.fixture
def readonly_dir(tmp_path) -> Path:
    """:func:`readonly_place`, or skip."""
    p = readonly_place(tmp_path)
    if p is None:
        pytest.skip("no folder that this process cannot write in")
    yield p
    (tmp_path / "readonly").chmod(0o755)


def token_batch(seed: int = 0) -> dict:
    """A 3 x 12 batch of random token ids of the tiny vocabulary, the second row padded after 8 tokens."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 30, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}
