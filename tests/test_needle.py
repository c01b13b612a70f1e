"""composer.evals.needle: the probes' layout, and scoring against models whose answer is known: a perfect
retriever (1.0), a model with no preference (0), an untrained model (≈0), and a small attention model
trained on needle probes (high at its training context)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from composer.config import ModelConfig
from composer.engine.batches import IGNORE, ArrayBatches
from composer.errors import ConfigError
from composer.model import build_model
from composer.evals.needle import NeedleConfig, make_probes, needle_accuracy, probe_tensors, score_probes
from composer.data.text import TokenSplit
from composer.data.tokenizer import ByteTokenizer, load_tokenizer, train_bpe
from composer.engine.trainer import TrainerConfig, train
from primitives.attention import AttentionConfig

BYTES = ByteTokenizer()


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A small byte-level BPE: codes and names split into several tokens of varying count."""
    from composer.evals.needle import FILLER

    path = train_bpe([" ".join(FILLER)] * 20 + ["The secret code of Ada is 48213. Codes: 12 345 6789."],
                     vocab_size=320, out_path=tmp_path_factory.mktemp("bpe") / "tokenizer.json")
    return load_tokenizer(str(path))


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text))


# ------------------------------------------------------------------------------------------ probes

@pytest.mark.parametrize("which", ["bytes", "bpe"])
def test_probe_layout(which, bpe):
    tok = BYTES if which == "bytes" else bpe
    cfg = NeedleConfig(n_probes=12, depths=(0.0, 0.25, 0.5, 1.0))
    probes = make_probes(tok, length=200, cfg=cfg)
    assert len(probes) == 12 and [p.depth for p in probes[:5]] == [0.0, 0.25, 0.5, 1.0, 0.0]
    for p in probes:
        assert p.tokens.dtype == np.int64 and len(p.tokens) == 201 and p.length == 200  # reads exactly 200
        needle = _ids(tok, f"\nThe secret code of {p.name} is") + _ids(tok, f" {p.code}") + _ids(tok, ".\n")
        query = _ids(tok, f"\nThe secret code of {p.name} is")
        answer = _ids(tok, f" {p.code}")
        assert len(p.code) == 5 and p.code[0] != "0"
        # the needle sits at the requested depth of the haystack (every token that is not needle/query/answer)
        assert p.tokens[p.needle_start : p.needle_start + p.needle_len].tolist() == needle
        haystack = 201 - len(needle) - len(query) - len(answer)
        assert p.needle_start == round(p.depth * haystack)
        # the query ends the context, the answer follows it and ends the sequence
        assert p.tokens[p.query_start : p.answer_start].tolist() == query
        assert p.answer.tolist() == answer and p.answer_start == 201 - len(answer)
        assert p.query_start == p.needle_len + haystack  # haystack before + needle + haystack after
        assert tok.decode(p.answer.tolist()) == f" {p.code}"
    # depth 0: the needle opens the context; depth 1: it ends just before the query
    assert probes[0].needle_start == 0 and probes[3].needle_start + probes[3].needle_len == probes[3].query_start


def test_probes_are_deterministic_for_a_seed():
    a = make_probes(BYTES, length=300, cfg=NeedleConfig(n_probes=8, seed=3))
    b = make_probes(BYTES, length=300, cfg=NeedleConfig(n_probes=8, seed=3))
    c = make_probes(BYTES, length=300, cfg=NeedleConfig(n_probes=8, seed=4))
    assert all(np.array_equal(x.tokens, y.tokens) for x, y in zip(a, b))
    assert [x.code for x in a] != [z.code for z in c]
    assert len({x.code for x in a}) > 1 and len({x.tokens[:40].tobytes() for x in a}) > 1  # varied haystacks


def test_filler_from_a_token_split_is_a_contiguous_slice():
    docs = [f"Document {i} talks about topic {i * 7} at some length. " * 5 for i in range(40)]
    ids = [BYTES.encode(d) + [BYTES.eos_id] for d in docs]
    lengths = np.array([len(d) for d in ids])
    split = TokenSplit(tokens=np.concatenate(ids).astype(np.uint16), doc_ids=np.arange(40)[::-1].copy(),
                       starts=(np.cumsum(lengths) - lengths)[::-1].copy(), lengths=lengths[::-1].copy(),
                       n_bytes=0, eos_id=BYTES.eos_id)
    stream = split.read(0, split.n_tokens).tobytes()
    for p in make_probes(BYTES, length=500, cfg=NeedleConfig(n_probes=4), filler=split):
        hay = np.concatenate([p.tokens[: p.needle_start], p.tokens[p.needle_start + p.needle_len : p.query_start]])
        assert hay.tobytes() in stream  # one slice of the split, cut where the needle went in
        assert b"The secret code" not in bytes(t for t in hay if t < 256)
    array = split.read(0, split.n_tokens)  # a plain token array works the same
    assert make_probes(BYTES, length=500, cfg=NeedleConfig(n_probes=2), filler=array)[0].length == 500


@pytest.mark.parametrize("change, message", [
    (dict(length=40), "cannot hold the needle"),
    (dict(filler=np.zeros(30, dtype=np.int64)), "filler holds 30 tokens"),
    (dict(filler=np.full(1000, 999, dtype=np.int64)), "outside the tokenizer's vocabulary"),
])
def test_probe_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        make_probes(BYTES, cfg=NeedleConfig(n_probes=2), **({"length": 200} | change))


@pytest.mark.parametrize("field, message", [
    (dict(needle="The code is {code}."), "needle must hold"),
    (dict(needle="{code} belongs to {name}."), "needle must hold"),
    (dict(depths=(0.5, 1.5)), "depths"),
    (dict(multiples=(1, 0)), "multiples"),
    (dict(n_probes=0), "n_probes"),
])
def test_config_errors(field, message):
    with pytest.raises(ConfigError, match=message):
        NeedleConfig(**field)


def test_probe_tensors_mark_only_the_answer():
    probes = make_probes(BYTES, length=128, cfg=NeedleConfig(n_probes=3))
    inputs, targets = probe_tensors(probes)
    assert inputs.shape == targets.shape == (3, 128)
    for row, p in enumerate(probes):
        counted = (targets[row] != IGNORE).nonzero().flatten().tolist()
        assert counted == list(range(p.answer_start - 1, 128))  # position t predicts token t + 1
        assert targets[row, counted].tolist() == p.answer.tolist()


# ------------------------------------------------------------------------------------------ scoring

class SuffixCopier(nn.Module):
    """A perfect retriever, written out: at each position, find the earlier position whose preceding
    text matches the text ending here for longest (latest on ties) and predict the token that followed
    it, as a one-hot. On a probe the query matches the needle best, so it copies the code."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, T = tokens.shape
        logits = torch.zeros(B, T, self.vocab_size)
        run = torch.zeros(B, T, dtype=torch.long)  # run[:, j]: common suffix length of x[..t] and x[..j]
        for t in range(1, T):
            shifted = torch.cat([torch.zeros(B, 1, dtype=torch.long), run[:, : t - 1]], dim=1)  # (B, t)
            run = torch.zeros(B, T, dtype=torch.long)
            run[:, :t] = (tokens[:, :t] == tokens[:, t : t + 1]) * (shifted + 1)
            best = t - 1 - run[:, :t].flip(1).argmax(1)  # (B,) the latest longest match
            found = run[torch.arange(B), best] > 0
            nxt = tokens[torch.arange(B), best + 1]
            logits[found, t, nxt[found]] = 1.0
        return logits


class Indifferent(nn.Module):
    """Equal logits for every token: it retrieves nothing."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*tokens.shape, self.vocab_size)


def test_a_perfect_retriever_scores_one():
    result = needle_accuracy(SuffixCopier(BYTES.vocab_size), BYTES, seq_len=96,
                             cfg=NeedleConfig(n_probes=10), batch_size=4)
    assert result["needle@1x"] == result["needle@2x"] == 1.0
    assert result["per_token@1x"] == result["per_token@2x"] == 1.0
    assert result["lengths"] == {"1x": 96, "2x": 192} and result["n_probes"] == 10
    assert result["by_depth"]["2x"] == {"0.1": 1.0, "0.3": 1.0, "0.5": 1.0, "0.7": 1.0, "0.9": 1.0}


def test_a_model_without_preference_scores_zero():
    result = needle_accuracy(Indifferent(BYTES.vocab_size), BYTES, seq_len=80,
                             cfg=NeedleConfig(n_probes=5, multiples=(1, 1.5)))
    assert result["needle@1x"] == result["needle@1.5x"] == 0.0 and result["per_token@1x"] == 0.0
    assert result["lengths"] == {"1x": 80, "1.5x": 120}


def test_an_untrained_model_scores_near_zero_and_keeps_its_mode():
    model = build_model(ModelConfig(pattern="*-M-", vocab_size=BYTES.vocab_size, d_model=32), seed=0)
    model.train()
    cfg = NeedleConfig(n_probes=20)
    result = needle_accuracy(model, BYTES, seq_len=96, cfg=cfg, batch_size=8)
    assert model.training  # restored
    assert result["needle@1x"] <= 0.05 and result["needle@2x"] <= 0.05
    assert result["per_token@1x"] <= 0.25  # at most the repeated digits an identity map gets right

    # the fast path (only the answer positions through the LM head) scores exactly as the full forward
    class ForwardOnly(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.inner(tokens)

    probes = make_probes(BYTES, length=96, cfg=cfg)
    fast = score_probes(model.eval(), probes, device=torch.device("cpu"), batch_size=3)
    full = score_probes(ForwardOnly(model), probes, device=torch.device("cpu"), batch_size=20)
    assert np.array_equal(fast[0], full[0]) and np.array_equal(fast[1], full[1])


def test_vocabulary_mismatch_is_an_error():
    model = build_model(ModelConfig(pattern="*", vocab_size=100, d_model=16), seed=0)
    with pytest.raises(ConfigError, match="smaller than the tokenizer's"):
        needle_accuracy(model, BYTES, seq_len=96)


def test_a_trained_attention_model_retrieves_at_its_context(tmp_path):
    """Two attention layers learn to copy a 3-digit code (an induction circuit) from 500 steps on 64-token
    probes hidden in random letters, about 15 s on two cores. Measured on CPU, model seeds 0-4: 0.94-1.0
    at 1x, 0.2-0.5 at 2x (RoPE positions past the training length); 5-digit codes need 800 steps for
    0.82-0.98."""
    length, batch, steps = 64, 32, 500
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ", dtype=np.uint8)
    filler = np.random.default_rng(0).choice(letters, size=100_000).astype(np.int64)
    needle = "{name} has {code}."
    probes = make_probes(BYTES, length=length, filler=filler,
                         cfg=NeedleConfig(n_probes=batch * steps, seed=100, needle=needle, digits=3))
    inputs, targets = probe_tensors(probes)
    cfg = ModelConfig(pattern="**", vocab_size=BYTES.vocab_size, d_model=64,
                      primitives={"attention": AttentionConfig(n_heads=4, qk_norm=True)})
    model = build_model(cfg, seed=0)
    trainer = TrainerConfig(max_tokens=batch * length * steps, batch_size=batch, lr=1e-2, warmup=0.05,
                            device="cpu", progress=False, ckpt_every=0, log_every=100)
    train(model, train_batches=ArrayBatches(inputs, targets, batch_size=batch, seed=0), eval_batches=[],
          seq_len=length, cfg=trainer, run_dir=tmp_path, signature={"test": "needle"})
    result = needle_accuracy(model, BYTES, seq_len=length, filler=filler,
                             cfg=NeedleConfig(n_probes=100, seed=1000, needle=needle, digits=3))
    assert result["needle@1x"] > 0.8, result


def test_cli_on_an_exported_model(tmp_path, capsys):
    from composer.evals.export import save_pretrained
    from composer.apps.needle import main

    model = build_model(ModelConfig(pattern="*-", vocab_size=BYTES.vocab_size, d_model=32), seed=0)
    save_pretrained(model, tmp_path / "with", tokenizer_spec="bytes", max_length=96)
    assert main([str(tmp_path / "with"), "--n-probes", "4", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["needle@1x", "needle@2x"]
    assert "(96 tokens, 4 probes)" in lines[0] and "(192 tokens, 4 probes)" in lines[1]
    assert main([str(tmp_path / "with"), "--n-probes", "2", "--multiples", "1.5", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["lengths"] == {"1.5x": 144} and list(result["by_depth"]["1.5x"]) == ["0.1", "0.3"]

    save_pretrained(model, tmp_path / "without", tokenizer_spec="bytes")  # no max_length recorded
    assert main([str(tmp_path / "without")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give --seq-len" in err[0]
    assert main([str(tmp_path / "without"), "--seq-len", "96", "--n-probes", "2", "--device", "cpu"]) == 0
    assert main([str(tmp_path / "missing"), "--seq-len", "96"]) == 2
