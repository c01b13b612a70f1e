"""Real-text pipeline: sources, tokenizers, packing, cache, splits, resumable and sharded batches, bpb."""

import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from composer.engine.batches import IGNORE
from composer.errors import ConfigError
from composer.apps.text import main
from composer.data.text import TextBatches, TextSource, bits_per_byte, iter_documents, load_corpus, val_batches
from composer.data.tokenizer import ByteTokenizer, load_tokenizer, train_bpe

WORDS = ["the", "cat", "sat", "über", "café", "日本", "naïve", "dogs", "ran", "🙂"]


def make_docs(n: int) -> list[str]:
    """Distinct documents (every word carries its document and position), with unicode, blank
    lines and leading spaces, so exact round trips and content-unique windows can be checked."""
    rng = random.Random(0)
    docs = []
    for i in range(n):
        words = " ".join(f"{rng.choice(WORDS)}{i}.{j}" for j in range(rng.randint(3, 25)))
        docs.append(("  " if i % 4 == 0 else "") + words + ("\n\nnew para\tend\n" if i % 3 == 0 else "\n"))
    return docs


DOCS = make_docs(60)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i, doc in enumerate(DOCS):
        (folder / f"doc_{i:03d}.txt").write_text(doc, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory) -> Path:
    return train_bpe(DOCS, vocab_size=320, out_path=tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def split_at_eos(stream: np.ndarray, eos: int) -> list[list[int]]:
    assert stream[-1] == eos
    pieces, current = [], []
    for t in stream.tolist():
        if t == eos:
            pieces.append(current)
            current = []
        else:
            current.append(t)
    return pieces


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_packed_stream_decodes_to_the_documents_in_shuffled_order(kind, corpus_dir, bpe_path, cache):
    tok = load_tokenizer("bytes" if kind == "bytes" else str(bpe_path))
    corpus = load_corpus(TextSource(path=str(corpus_dir)), tok, seed=3, cache_dir=cache)
    order = corpus.train.doc_ids.tolist()
    assert sorted(order) == list(range(len(DOCS))) and order != sorted(order)  # shuffled documents, all kept
    stream = corpus.train.read(0, corpus.train.n_tokens)
    pieces = split_at_eos(stream, tok.eos_id)  # one EOS after each document, none inside
    assert [tok.decode(p) for p in pieces] == [DOCS[i] for i in order]
    assert tok.decode(stream) == "".join(DOCS[i] for i in order)
    assert corpus.train.n_bytes == sum(len(d.encode("utf-8")) for d in DOCS)
    assert corpus.vocab_size == tok.vocab_size and stream.max() < tok.vocab_size


def test_one_epoch_serves_every_window_once(corpus_dir, cache):
    corpus = load_corpus(TextSource(path=str(corpus_dir)), ByteTokenizer(), seed=0, cache_dir=cache)
    T = 32
    stream = corpus.train.read(0, corpus.train.n_tokens)
    windows = [stream[w * T : w * T + T + 1].tolist() for w in range((len(stream) - 1) // T)]
    batches = TextBatches(corpus.train, batch_size=1, seq_len=T, seed=0)
    served = []
    for _ in range(batches.per_epoch):
        x, y = batches.next_batch()
        assert x.shape == y.shape == (1, T) and x.dtype == torch.int64
        assert torch.equal(x[0, 1:], y[0, :-1])  # targets are the inputs shifted by one
        served.append(x[0].tolist() + y[0, -1:].tolist())
    assert sorted(served) == sorted(windows) and served != windows  # all of them, in a shuffled order


def test_same_seed_same_batches_other_seed_differs(corpus_dir, cache):
    source = TextSource(path=str(corpus_dir))
    corpus = load_corpus(source, ByteTokenizer(), seed=0, cache_dir=cache)

    def take(seed: int) -> list[torch.Tensor]:
        b = TextBatches(corpus.train, batch_size=4, seq_len=32, seed=seed)
        return [b.next_batch()[0] for _ in range(5)]

    assert all(torch.equal(a, b) for a, b in zip(take(1), take(1)))
    assert not all(torch.equal(a, b) for a, b in zip(take(1), take(2)))
    again = load_corpus(source, ByteTokenizer(), seed=0, cache_dir=cache)
    other = load_corpus(source, ByteTokenizer(), seed=1, cache_dir=cache)
    assert again.train.doc_ids.tolist() == corpus.train.doc_ids.tolist()
    assert other.train.doc_ids.tolist() != corpus.train.doc_ids.tolist()


def test_resume_sees_the_uninterrupted_batches_across_an_epoch(corpus_dir, cache):
    corpus = load_corpus(TextSource(path=str(corpus_dir)), ByteTokenizer(), seed=0, cache_dir=cache)
    make = lambda: TextBatches(corpus.train, batch_size=16, seq_len=32, seed=7)  # noqa: E731
    whole = make()
    n = whole.per_epoch - 2
    reference = [whole.next_batch() for _ in range(n + 5)]  # crosses into epoch 1
    assert n + 5 > whole.per_epoch
    first = make()
    for _ in range(n):
        first.next_batch()
    state = first.state_dict()
    assert state == {"position": n}
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON checkpoint
    for x_ref, y_ref in reference[n:]:
        x, y = resumed.next_batch()
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_ranks_split_the_global_batch(corpus_dir, cache):
    corpus = load_corpus(TextSource(path=str(corpus_dir)), ByteTokenizer(), seed=0, cache_dir=cache)
    glob = TextBatches(corpus.train, batch_size=6, seq_len=32, seed=4)
    ranks = [TextBatches(corpus.train, batch_size=3, seq_len=32, seed=4, rank=r, world_size=2) for r in (0, 1)]
    assert ranks[0].per_epoch == glob.per_epoch
    for _ in range(glob.per_epoch + 2):  # into the second epoch
        gx, gy = glob.next_batch()
        (x0, y0), (x1, y1) = (r.next_batch() for r in ranks)
        assert {tuple(r) for r in x0.tolist()}.isdisjoint(tuple(r) for r in x1.tolist())
        assert torch.equal(torch.cat([x0, x1]), gx) and torch.equal(torch.cat([y0, y1]), gy)
    with pytest.raises(ConfigError, match="rank"):
        TextBatches(corpus.train, batch_size=3, seq_len=32, seed=4, rank=2, world_size=2)


def test_validation_split_is_whole_documents_apart_from_train(corpus_dir, cache):
    tok = ByteTokenizer()
    corpus = load_corpus(TextSource(path=str(corpus_dir)), tok, seed=5, val_tokens=700, cache_dir=cache)
    val, train = corpus.val, corpus.train
    assert val.n_tokens >= 700 and val.n_tokens - int(val.lengths[-1]) < 700  # the fewest documents that reach it
    assert set(val.doc_ids.tolist()).isdisjoint(train.doc_ids.tolist())
    assert sorted(val.doc_ids.tolist() + train.doc_ids.tolist()) == list(range(len(DOCS)))
    train_text = tok.decode(train.read(0, train.n_tokens))
    val_docs = [DOCS[i] for i in val.doc_ids.tolist()]
    assert [tok.decode(p) for p in split_at_eos(val.read(0, val.n_tokens), tok.eos_id)] == val_docs
    assert not any(doc.strip() in train_text for doc in val_docs)
    assert val.n_bytes == sum(len(d.encode("utf-8")) for d in val_docs)
    # Validation batches: fixed order, every stream token a target exactly once.
    batches = val_batches(val, batch_size=4, seq_len=32)
    again = val_batches(val, batch_size=4, seq_len=32)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    targets = torch.cat([y for _, y in batches]).flatten()
    assert torch.equal(targets[targets != IGNORE], torch.from_numpy(val.read(0, val.n_tokens)))
    inputs = torch.cat([x for x, _ in batches]).flatten()
    assert inputs[0] == tok.eos_id and torch.equal(inputs[1 : val.n_tokens], targets[: val.n_tokens - 1])
    with pytest.raises(ConfigError, match="val_tokens=100000 leaves no training documents"):
        load_corpus(TextSource(path=str(corpus_dir)), tok, seed=5, val_tokens=100_000, cache_dir=cache)


def test_cache_is_reused_and_keyed_by_files_and_tokenizer(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("first document")
    (tmp_path / "data" / "b.txt").write_text("second one")
    calls = []

    class Counting(ByteTokenizer):
        def encode_batch(self, texts):
            calls.append(len(texts))
            return super().encode_batch(texts)

    source = TextSource(path=str(tmp_path / "data"))
    one = load_corpus(source, Counting(), cache_dir=tmp_path / "cache")
    two = load_corpus(source, Counting(), seed=9, val_tokens=5, cache_dir=tmp_path / "cache")
    assert calls == [2] and one.cache_path == two.cache_path  # seed and split do not re-tokenise
    (tmp_path / "data" / "b.txt").write_text("second one, edited")
    three = load_corpus(source, Counting(), cache_dir=tmp_path / "cache")
    assert calls == [2, 2] and three.cache_path != one.cache_path and three.train.n_bytes == 14 + 18


def test_a_cache_folder_is_a_source_read_without_datasets(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("first document")
    (tmp_path / "data" / "b.txt").write_text("second one")
    made = load_corpus(TextSource(path=str(tmp_path / "data")), ByteTokenizer(), cache_dir=tmp_path / "cache")
    copied = tmp_path / "elsewhere"
    shutil.copytree(made.cache_path, copied)
    shutil.rmtree(tmp_path / "data")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as on a machine without `datasets`
    again = load_corpus(TextSource(path=str(copied)), ByteTokenizer(), seed=0)
    assert again.cache_path == copied and again.train.n_bytes == made.train.n_bytes == 24
    assert np.array_equal(again.train.read(0, again.train.n_tokens), made.train.read(0, made.train.n_tokens))
    bpe = train_bpe(["first document", "second one"] * 50, vocab_size=300, out_path=tmp_path / "tok.json")
    with pytest.raises(ConfigError, match="tokenised with bytes"):
        load_corpus(TextSource(path=str(copied)), load_tokenizer(str(bpe)))


def write_records(folder: Path, docs: list[str], field: str) -> None:
    records = [{"id": i, field: d} for i, d in enumerate(docs)]
    (folder / "a.json").write_text(json.dumps(records[:3]))
    (folder / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[3:7]))
    pq.write_table(pa.Table.from_pylist(records[7:]), folder / "c.parquet")


def test_json_jsonl_parquet_with_a_custom_text_field(tmp_path):
    docs = DOCS[:10]
    write_records(tmp_path, docs, "body")
    assert list(iter_documents(TextSource(path=str(tmp_path), text_field="body"))) == docs
    assert list(iter_documents(TextSource(path=str(tmp_path / "*.json*"), text_field="body"))) == docs[:7]
    assert list(iter_documents(TextSource(path=str(tmp_path / "c.parquet"), text_field="body"))) == docs[7:]
    source = TextSource(path=str(tmp_path), text_field="body")
    corpus = load_corpus(source, ByteTokenizer(), cache_dir=tmp_path / "cache")
    assert corpus.train.n_bytes == sum(len(d.encode()) for d in docs)


def test_missing_files_fields_and_empty_corpora_are_one_line_errors(tmp_path):
    write_records(tmp_path, DOCS[:10], "body")
    missing = tmp_path / "nowhere" / "corpus.jsonl"
    with pytest.raises(ConfigError, match=f"text source not found: {missing}"):
        list(iter_documents(TextSource(path=str(missing))))
    with pytest.raises(ConfigError, match=r"no field 'text' in .*b\.jsonl \(its fields: id, body\)"):
        list(iter_documents(TextSource(path=str(tmp_path / "b.jsonl"))))
    with pytest.raises(ConfigError, match="no field 'content'"):
        load_corpus(TextSource(path=str(tmp_path / "c.parquet"), text_field="content"), ByteTokenizer(),
                    cache_dir=tmp_path / "cache")
    (tmp_path / "d.jsonl").write_text('{"body": 5}\n')
    with pytest.raises(ConfigError, match=r"field 'body' in .*d\.jsonl holds int, not text"):
        list(iter_documents(TextSource(path=str(tmp_path / "d.jsonl"), text_field="body")))
    with pytest.raises(ConfigError, match="no files match"):
        list(iter_documents(TextSource(path=str(tmp_path / "*.txt"))))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("")
    with pytest.raises(ConfigError, match="every document is empty"):
        load_corpus(TextSource(path=str(tmp_path / "empty")), ByteTokenizer(), cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.tmp-*"))  # a failed build leaves nothing behind
    with pytest.raises(ConfigError, match="unknown tokenizer 'gpt2'.*tokenizer.json") as info:
        load_tokenizer("gpt2")
    assert "\n" not in str(info.value)


def test_local_files_load_with_hf_datasets_offline(tmp_path, corpus_dir):
    # `datasets` reads HF_DATASETS_OFFLINE when imported, so the check runs in a fresh interpreter.
    write_records(tmp_path, DOCS[:10], "body")
    code = (
        "import json, sys, datasets\n"
        "from composer.data.text import TextSource, iter_documents\n"
        "from composer.errors import ConfigError\n"
        "assert datasets.config.HF_HUB_OFFLINE\n"
        "out = {'txt': list(iter_documents(TextSource(path=sys.argv[1]))),\n"
        "       'records': list(iter_documents(TextSource(path=sys.argv[2], text_field='body')))}\n"
        "try:\n"
        "    list(iter_documents(TextSource(path='hub:composer-test/not-a-dataset')))\n"
        "except ConfigError as exc:\n"
        "    out['hub'] = str(exc)\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code, str(corpus_dir), str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=120, cwd=Path(__file__).parents[1])
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["txt"] == DOCS and out["records"] == DOCS[:10]
    assert "composer-test/not-a-dataset" in out["hub"] and "\n" not in out["hub"]


def test_trained_bpe_saves_loads_and_round_trips(tmp_path, bpe_path):
    tok = load_tokenizer(str(bpe_path))
    assert tok.vocab_size == 320  # 256 bytes + EOS + 63 merges: the corpus has that many pairs
    assert load_tokenizer(str(bpe_path.parent)).identity == tok.identity  # a folder holding tokenizer.json
    for text in DOCS[:5] + ["unseen: Ωmega ∑ 🚀\r\n  spaced  ", "<|endoftext|> is text here"]:
        ids = tok.encode(text)
        assert tok.eos_id not in ids and tok.decode(ids) == text
    assert len(tok.encode(DOCS[0])) < len(DOCS[0].encode("utf-8"))  # merges compress
    tiny = load_tokenizer(str(train_bpe(["ab ab ab"], vocab_size=5000, out_path=tmp_path / "tiny.json")))
    assert 257 < tiny.vocab_size < 5000  # a tiny corpus runs out of merges
    with pytest.raises(ConfigError, match="vocab_size must be >= 257"):
        train_bpe(["x"], vocab_size=100, out_path=tmp_path / "x.json")


def test_train_tokenizer_command(tmp_path, corpus_dir, capsys):
    out = tmp_path / "tok" / "tokenizer.json"
    assert main(["train-tokenizer", "--input", str(corpus_dir), "--vocab-size", "300", "--output", str(out)]) == 0
    assert load_tokenizer(str(out)).vocab_size == 300 and "wrote" in capsys.readouterr().out
    missing = ["--input", str(tmp_path / "none"), "--vocab-size", "300", "--output", str(out)]
    assert main(["train-tokenizer", *missing]) == 2
    assert f"text source not found: {tmp_path / 'none'}" in capsys.readouterr().err


def test_bits_per_byte_by_hand():
    # One bit per token (ln 2 nats), 4 bytes per token: a quarter bit per byte.
    assert bits_per_byte(math.log(2), n_tokens=100, n_bytes=400) == pytest.approx(0.25)
    # 2 nats x 3 tokens = 6 nats = 8.6562 bits over 12 bytes = 0.72135 bits per byte.
    assert bits_per_byte(2.0, n_tokens=3, n_bytes=12) == pytest.approx(0.7213475204444817)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, n_tokens=3, n_bytes=0)


def test_split_bits_per_byte_uses_its_own_counts(corpus_dir, cache):
    source = TextSource(path=str(corpus_dir))
    val = load_corpus(source, ByteTokenizer(), seed=5, val_tokens=700, cache_dir=cache).val
    # Bytes tokenizer: tokens = bytes + one EOS per document, so bpb is slightly above loss / ln 2.
    assert val.n_tokens == val.n_bytes + len(val.doc_ids)
    assert val.bits_per_byte(1.0) == pytest.approx(val.n_tokens / (val.n_bytes * math.log(2)))


def test_a_hub_tokenizer_comes_from_the_hugging_face_cache_offline(tmp_path, bpe_path):
    snapshot = tmp_path / "hub" / "models--someone--tok" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    shutil.copyfile(bpe_path, snapshot / "tokenizer.json")
    (tmp_path / "hub" / "models--someone--tok" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tok" / "refs" / "main").write_text("a" * 40)
    code = ("from composer.data.tokenizer import load_tokenizer; import sys\n"
            "t = load_tokenizer(sys.argv[1]); print(t.identity, t.encode('hello world'))\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    got = subprocess.run([sys.executable, "-c", code, "hub:someone/tok"], capture_output=True, text=True, env=env)
    local = load_tokenizer(str(bpe_path))
    assert got.returncode == 0, got.stderr
    assert got.stdout.split(" ", 1) == [local.identity, f"{local.encode('hello world')}\n"]
    missing = subprocess.run([sys.executable, "-c", code, "hub:someone/absent"], capture_output=True, text=True, env=env)
    assert missing.returncode != 0 and "tokenizer hub:someone/absent: no tokenizer.json" in missing.stderr
