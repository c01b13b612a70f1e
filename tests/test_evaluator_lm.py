"""The language-modelling proxy: `train_on_text` and `evaluator=lm`, training for real on a corpus
the test writes itself (~300 KB of generated prose with non-ASCII letters, one document per file).

Bits per byte checked against the validation loss recomputed from the saved weights and the files'
own sizes; scores, read-back and the sign of the score (trained beats one step); one-line errors;
and `composer-search evaluator=lm` end to end. Tiny proxies (16 wide, sequences of 32 bytes).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from composer.errors import ConfigError
from composer.model import build_model
from composer.runs.proxy import train_on_text
from composer.data.text import TextSource, load_corpus, resolve_files
from composer.data.tokenizer import ByteTokenizer
from composer.engine.trainer import CHECKPOINT, TrainerConfig
from composer.engine.objective import Objective
from search.evaluator import Evaluator, evaluator_config_from_mapping
from search.runner import plain, search_config_from_mapping
from tests.conftest import run_cli

MODEL = {"d_model": 16, "attention": {"n_heads": 2}, "mamba2": {"head_dim": 8, "d_state": 8, "chunk_size": 8}}
TRAINER = {"max_tokens": 16384, "batch_size": 8, "device": "cpu", "ckpt_every": 16}  # 64 steps of 8 x 32


def write_corpus(folder: Path, *, n_documents: int = 120, seed: int = 0) -> Path:
    """Prose from a Zipf-weighted lexicon: words, numbers, punctuation, a few accented and CJK words."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "ri", "sen", "ta", "mu", "vel", "dor", "en", "is", "qua", "zo", "bre", "nix", "ä", "é"]
    lexicon = ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(400)]
    lexicon += ["東京", "数据", "naïve"]
    weights = [1 / (rank + 1) for rank in range(len(lexicon))]
    folder.mkdir(parents=True)
    for d in range(n_documents):
        topic = rng.choice(lexicon)  # each document repeats its own topic word: context helps
        sentences = []
        for _ in range(rng.randint(15, 40)):
            words = rng.choices(lexicon, weights, k=rng.randint(4, 12))
            words[rng.randrange(len(words))] = topic
            if rng.random() < 0.2:
                words.append(str(rng.randint(0, 2025)))
            sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!", ";"]))
        text = "\n\n".join(" ".join(sentences[i : i + 5]) for i in range(0, len(sentences), 5)) + "\n"
        (folder / f"doc{d:03d}.txt").write_text(text, encoding="utf-8")
    return folder


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("lm") / "corpus")


@pytest.fixture(autouse=True)
def token_cache(corpus_dir, monkeypatch) -> Path:
    """One token cache for the module (tokenised once), never the user's ~/.cache."""
    cache = corpus_dir.parent / "cache"
    monkeypatch.setenv("COMPOSER_CACHE", str(cache))
    return cache


def lm_config(corpus_dir: Path, **changes):
    return evaluator_config_from_mapping({
        "name": "lm-tiny", "corpus": {"path": str(corpus_dir)}, "seq_len": 32, "val_tokens": 4096,
        "model": MODEL, "trainer": TRAINER, **changes})


def test_bits_per_byte_is_the_validation_loss_over_the_validation_bytes(corpus_dir, tmp_path):
    corpus = load_corpus(TextSource(path=str(corpus_dir)), ByteTokenizer(), seed=0, val_tokens=4096)
    cfg = lm_config(corpus_dir).proxy("*-", vocab_size=257)
    summary = train_on_text(model_cfg=cfg, corpus=corpus, trainer_cfg=TrainerConfig(**TRAINER), seq_len=32, seed=0,
                            run_dir=tmp_path / "run")
    final = summary["final"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["final"] == final
    assert summary["status"] == "completed" and summary["pattern"] == "*-" and summary["n_params"] > 0
    assert summary["corpus"]["val_tokens"] == corpus.val.n_tokens and summary["seq_len"] == 32

    # The validation loss again, from the saved weights and the raw files: every byte of every
    # validation document and its EOS is a target once, each window of 32 starting fresh.
    files = resolve_files(str(corpus_dir))
    docs = [files[i].read_bytes() for i in corpus.val.doc_ids]
    stream = [256]
    for doc in docs:
        stream += [*doc, 256]
    module = Objective(build_model(cfg))
    module.load_state_dict(torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["model"])
    module.eval()
    tokens, total = torch.tensor(stream), 0.0
    with torch.no_grad():
        for start in range(0, len(stream) - 1, 32):
            x, y = tokens[start : start + 32], tokens[start + 1 : start + 33]
            total += F.cross_entropy(module(x[None, : len(y)])[0], y, reduction="sum").item()
    n_targets, n_bytes = len(stream) - 1, sum(len(d) for d in docs)  # bytes as on disk (UTF-8, some multi-byte)
    assert final["loss"] == pytest.approx(total / n_targets, rel=1e-5)
    assert final["bits_per_byte"] == pytest.approx(final["loss"] * n_targets / (n_bytes * math.log(2)), rel=1e-12)
    assert final["bits_per_byte"] < 6  # it learned: a uniform guess over 257 ids costs about 8 bits per byte


def test_the_evaluator_scores_patterns_and_reads_finished_runs_back(corpus_dir, tmp_path):
    ev = Evaluator(lm_config(corpus_dir), run_dir=tmp_path)
    results = {p: ev(p) for p in ("*-", "M-")}
    for pattern, r in results.items():
        assert set(r) == {"score", "tasks", "bits_per_byte", "loss", "seed", "seconds"}
        assert r["tasks"] == {"-bpb": r["score"]} and r["score"] == -r["bits_per_byte"] and r["seed"] == 0
        assert 0 < r["bits_per_byte"] < 8 and 0 < r["loss"] < math.log(257)
    summaries = sorted(tmp_path.glob("trials/*/lm-lr0.003/summary.json"))
    assert len(summaries) == 2 and not list(tmp_path.glob(f"trials/*/*/{CHECKPOINT}"))  # checkpoints deleted
    assert results["*-"]["score"] != results["M-"]["score"]

    stamps = [p.stat().st_mtime_ns for p in summaries]
    again = Evaluator(lm_config(corpus_dir), run_dir=tmp_path)  # a new worker: the corpus comes from the cache
    assert {k: v for k, v in again("*-").items() if k != "seconds"} == \
        {k: v for k, v in results["*-"].items() if k != "seconds"}
    assert [p.stat().st_mtime_ns for p in summaries] == stamps  # read back, not retrained

    other = ev("*-", seed=1)  # another init and batch order, scored on the same validation documents
    assert other["seed"] == 1 and other["score"] != results["*-"]["score"]
    corpora = {json.dumps(json.loads(p.read_text())["corpus"]) for p in tmp_path.glob("trials/*/*/summary.json")}
    assert len(corpora) == 1


def test_a_trained_proxy_outscores_one_step_of_training(corpus_dir, tmp_path):
    trained = Evaluator(lm_config(corpus_dir), run_dir=tmp_path / "trained")("*-")
    one_step = Evaluator(lm_config(corpus_dir, trainer={**TRAINER, "max_tokens": 8 * 32}),  # one step of 8 x 32
                         run_dir=tmp_path / "one")("*-")
    assert trained["score"] > one_step["score"] + 1.5  # higher is better: at least 1.5 bits per byte fewer
    assert one_step["bits_per_byte"] > 7


def test_a_learning_rate_sweep_keeps_the_lowest_bits_per_byte(corpus_dir, tmp_path):
    result = Evaluator(lm_config(corpus_dir, lrs=[3e-3, 1e-5]), run_dir=tmp_path)("*-")
    bpb = {p.parent.name: json.loads(p.read_text())["final"]["bits_per_byte"]
           for p in tmp_path.glob("trials/*/*/summary.json")}
    assert set(bpb) == {"lm-lr0.003", "lm-lr1e-05"}
    assert result["bits_per_byte"] == min(bpb.values()) and result["best_lr"] == {"lm": 3e-3}


@pytest.mark.parametrize("bad, message", [
    ({"tasks": {"in_context_recall": {}}}, "evaluator.tasks and evaluator.corpus exclude each other"),
    ({"corpus": {"path": "/no/such/corpus"}}, "evaluator.corpus.path: text source not found"),
    ({"corpus": {"path": ".", "text_feild": "body"}}, "unknown key evaluator.corpus.text_feild"),
    ({"tokenizer": "missing/tokenizer.json"}, "evaluator.tokenizer must be 'bytes' or the path"),
    ({"seq_len": 0}, "evaluator.seq_len must be a positive integer"),
    ({"val_tokens": None}, "evaluator.val_tokens must be a positive integer"),
])
def test_bad_language_modelling_settings_are_one_line(corpus_dir, bad, message):
    with pytest.raises(ConfigError, match=message) as info:
        lm_config(corpus_dir, **bad)
    assert "\n" not in str(info.value)


def test_language_modelling_settings_without_a_corpus_are_refused():
    with pytest.raises(ConfigError, match="evaluator.seq_len is a language-modelling setting"):
        evaluator_config_from_mapping({"seq_len": 64})


def test_the_config_crosses_to_worker_processes_unchanged(corpus_dir):
    cfg = search_config_from_mapping({"name": "s", "evaluator": {
        "corpus": {"path": str(corpus_dir)}, "seq_len": 32, "val_tokens": 4096, "model": MODEL, "trainer": TRAINER}})
    assert search_config_from_mapping(plain(cfg)) == cfg
    assert plain(cfg)["evaluator"]["corpus"]["text_field"] == "text" and plain(cfg)["evaluator"]["tasks"] == {}


def test_a_default_corpus_that_cannot_be_fetched_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPOSER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg
    cfg = evaluator_config_from_mapping({"corpus": {"path": None}, "seq_len": 32, "val_tokens": 4096, "model": MODEL,
                                         "trainer": TRAINER})
    with pytest.raises(ConfigError, match=r"evaluator.corpus.path is null .* needs apt-get") as info:
        Evaluator(cfg, run_dir=tmp_path)
    assert "\n" not in str(info.value) and not (tmp_path / "cache" / "corpus").exists()


def test_composer_search_with_the_lm_evaluator(corpus_dir, tmp_path):
    proc = run_cli(
        "search", "evaluator=lm", f"evaluator.corpus.path={corpus_dir}", "n_trials=3", "workers=1",
        "strategy=random", "space.length=3", "evaluator.seq_len=32", "evaluator.val_tokens=4096",
        "evaluator.model.d_model=16", "evaluator.model.mamba2.head_dim=8", "evaluator.model.mamba2.d_state=8",
        "evaluator.model.mamba2.chunk_size=8", "evaluator.trainer.max_tokens=8192", "evaluator.trainer.batch_size=8",
        "evaluator.trainer.device=cpu", f"hydra.run.dir={tmp_path / 'run'}",
        f"leaderboard={tmp_path / 'leaderboard.jsonl'}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["name"] == "random-lm-n3-s0" and result["evaluator"] == "lm" and result["n_evaluations"] == 3
    assert len(result["architecture"]) == 3 and len(result["top"]) == 3
    assert all(set(row["tasks"]) == {"-bpb"} and row["score"] == row["tasks"]["-bpb"] < 0 for row in result["top"])
    assert "-bpb" in proc.stdout and "top 3:" in proc.stdout
    records = [json.loads(line) for line in (tmp_path / "leaderboard.jsonl").read_text().splitlines()]
    best = next(r for r in records if r["kind"] == "architecture" and r["pattern"] == result["top"][0]["pattern"])
    assert best["score"]["mean"] == pytest.approx(result["top"][0]["score"])  # the leaderboard ranks by -bpb too
    assert best["proxy"]["vocab_size"] == 257 and best["proxy"]["seq_len"] == 32  # bytes, the text windows
