"""Real text for the trainer: documents read through Hugging Face `datasets`, tokenised once into a
cache, shuffled by document, split into train and validation, served as fixed-length sequences.

Sources (`TextSource.path`):
- a file, a folder (every .txt .md .rst .json .jsonl .parquet under it, recursively, skipping hidden
  ones) or a glob; files are read in sorted path order;
- .txt/.md/.rst: one document per file, exactly as written; .json/.jsonl/.parquet: one document
  per record, its text in `text_field`; empty documents are skipped;
- "hub:<name>": a Hugging Face hub dataset (needs the network unless it is in the HF cache).
Local files are streamed, so `datasets` keeps no Arrow copy and needs no network
(HF_DATASETS_OFFLINE=1 is fine).

A cache folder is itself a source: point `path` at one (copied to a machine without `datasets`, or
tokenised once for many jobs) and it is read as it is.

Cache: `<cache_dir>/<key>/` holds every document's ids followed by EOS, in source order
(`tokens.bin`, a raw memmap), with per-document token and UTF-8 byte counts. The key hashes the
source (each file's resolved path, size and mtime; or the hub name, config and split), the text
field, `max_documents` and the tokenizer's identity. The seed and `val_tokens` act at load time
and never re-tokenise. `cache_dir` defaults to $COMPOSER_CACHE/text, else ~/.cache/composer/text.

Streams: documents are shuffled by `seed`; validation takes the first ones until it holds at least
`val_tokens` tokens, training the rest. A stream is its documents' ids, each followed by EOS;
training sequences are windows of seq_len + 1 tokens at stride seq_len (inputs x[:-1], targets
x[1:], so each token after the first is a target once per epoch).
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from composer.engine.batches import IGNORE, EpochOrder
from composer.errors import ConfigError
from composer.data.tokenizer import Tokenizer, load_tokenizer

_BUILDERS = {  # file suffix -> the `datasets` builder that reads it
    ".txt": "text", ".md": "text", ".rst": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
}
_CACHE_FORMAT = 1  # bump when the cache layout or tokenisation rules change


@dataclass(frozen=True, kw_only=True)
class TextSource:
    path: str  # file, folder, glob, or "hub:<name>"
    text_field: str = "text"  # record field holding the text (json, jsonl, parquet, hub)
    hub_config: str | None = None  # a hub dataset's configuration name
    split: str = "train"  # a hub dataset's split
    streaming: bool = False  # hub only: stream instead of downloading the whole dataset first
    max_documents: int | None = None  # stop after this many non-empty documents

    def __post_init__(self) -> None:
        if not self.text_field:
            raise ConfigError("text_field must name a field, got an empty string")
        if self.max_documents is not None and self.max_documents < 1:
            raise ConfigError(f"max_documents must be >= 1, got {self.max_documents}")

    @property
    def hub_name(self) -> str | None:
        return self.path.removeprefix("hub:") if self.path.startswith("hub:") else None


def resolve_files(path: str) -> list[Path]:
    """The files a local source names, sorted; a one-line ConfigError when there are none."""
    p = Path(path).expanduser()
    if any(c in path for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
        if not files:
            raise ConfigError(f"no files match {path}")
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _BUILDERS
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not files:
            raise ConfigError(f"no {' '.join(_BUILDERS)} files under {path}")
    elif p.is_file():
        files = [p]
    else:
        raise ConfigError(f"text source not found: {path}")
    bad = [f for f in files if f.suffix.lower() not in _BUILDERS]
    if bad:
        raise ConfigError(f"unsupported file type: {bad[0]} (supported: {' '.join(_BUILDERS)})")
    return files


def iter_documents(source: TextSource) -> Iterator[str]:
    """Every non-empty document of `source`, in a fixed order."""
    import datasets

    if source.hub_name is not None:
        try:
            rows = datasets.load_dataset(source.hub_name, source.hub_config, split=source.split,
                                         streaming=source.streaming)
        except Exception as exc:  # offline, unknown name, unknown split: all mean "cannot use this source"
            reason = " ".join(str(exc).split())[:300]
            raise ConfigError(f"cannot load hub dataset {source.hub_name!r}: {reason}") from None
        groups: Iterable = [("", source.path, rows)]
    else:
        groups = _local_groups(resolve_files(source.path), source)
    n = 0
    for builder, where, rows in groups:
        name = "text" if builder == "text" else source.text_field
        for row in rows:
            if name not in row:
                raise ConfigError(f"no field {name!r} in {where} (its fields: {', '.join(row)}); set text_field")
            text = row[name]
            if text is not None and not isinstance(text, str):
                raise ConfigError(f"field {name!r} in {where} holds {type(text).__name__}, not text")
            if text:
                yield text
                n += 1
                if n == source.max_documents:
                    return


def _local_groups(files: list[Path], source: TextSource) -> Iterator[tuple[str, str, Iterable[dict]]]:
    """(builder, where, rows) per run of consecutive files of one kind, in sorted order. A run shares
    one streamed dataset: one per file would cost ~0.2 s each. `where` names the file when it can."""
    import datasets

    for builder, run in itertools.groupby(files, key=lambda f: _BUILDERS[f.suffix.lower()]):
        run = list(run)
        options = {"sample_by": "document"} if builder == "text" else {}  # a whole .txt file is one document
        rows = datasets.load_dataset(builder, data_files=[str(f) for f in run], split="train", streaming=True,
                                     **options)
        yield builder, str(run[0]) if len(run) == 1 else source.path, rows


def default_cache_dir() -> Path:
    return Path(os.environ.get("COMPOSER_CACHE", "~/.cache/composer")).expanduser() / "text"


def _cache_key(source: TextSource, tokenizer: Tokenizer) -> str:
    if source.hub_name is not None:
        what = {"hub": source.hub_name, "config": source.hub_config, "split": source.split}
    else:
        files = resolve_files(source.path)
        what = {"files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]}
    what |= {"text_field": source.text_field, "max_documents": source.max_documents,
             "tokenizer": tokenizer.identity, "format": _CACHE_FORMAT}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def _build_cache(source: TextSource, tokenizer: Tokenizer, folder: Path) -> None:
    """Tokenise every document once, into a temporary folder renamed into place when complete."""
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    lengths: list[int] = []  # tokens per document, EOS included
    n_bytes: list[int] = []  # UTF-8 bytes per document
    try:
        with open(tmp / "tokens.bin", "wb") as out:
            docs = iter_documents(source)
            while chunk := list(itertools.islice(docs, 1024)):
                ids = [d + [tokenizer.eos_id] for d in tokenizer.encode_batch(chunk)]
                np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype).tofile(out)
                lengths += map(len, ids)
                n_bytes += (len(t.encode("utf-8")) for t in chunk)
        if not lengths:
            raise ConfigError(f"no text in {source.path}: every document is empty")
        np.save(tmp / "doc_tokens.npy", np.asarray(lengths, dtype=np.int64))
        np.save(tmp / "doc_bytes.npy", np.asarray(n_bytes, dtype=np.int64))
        meta = {"source": source.path, "tokenizer": tokenizer.identity, "dtype": np.dtype(dtype).name,
                "n_documents": len(lengths), "n_tokens": sum(lengths)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same cache first; it is identical
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass(frozen=True, kw_only=True, eq=False)
class TokenSplit:
    """Whole documents, each followed by EOS, read in stream order from the cached token file."""

    tokens: np.ndarray  # (N_all,) every document of the corpus, source order (a memmap)
    doc_ids: np.ndarray  # (D,) source-order indices of this split's documents, in stream order
    starts: np.ndarray  # (D,) where each document begins in `tokens`
    lengths: np.ndarray  # (D,) its tokens, EOS included
    n_bytes: int  # UTF-8 bytes of the documents' text (EOS has none)
    eos_id: int
    ends: np.ndarray = field(init=False)  # (D,) where each document ends in this stream

    def __post_init__(self) -> None:
        object.__setattr__(self, "ends", np.cumsum(self.lengths))

    @property
    def n_tokens(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) of the stream, as int64."""
        if start < 0 or n < 0 or start + n > self.n_tokens:
            raise IndexError(f"tokens [{start}, {start + n}) are outside a stream of {self.n_tokens}")
        out = np.empty(n, dtype=np.int64)
        k, done = int(np.searchsorted(self.ends, start, side="right")), 0
        while done < n:
            offset = start + done - (self.ends[k] - self.lengths[k])  # position inside document k
            m = min(int(self.lengths[k] - offset), n - done)
            src = int(self.starts[k] + offset)
            out[done : done + m] = self.tokens[src : src + m]
            done, k = done + m, k + 1
        return out

    def bits_per_byte(self, loss_nats: float) -> float:
        """`loss_nats` is the mean over this split's n_tokens targets (what `val_batches` scores)."""
        return bits_per_byte(loss_nats, n_tokens=self.n_tokens, n_bytes=self.n_bytes)


@dataclass(frozen=True, kw_only=True, eq=False)
class TextCorpus:
    train: TokenSplit
    val: TokenSplit  # empty when val_tokens == 0
    vocab_size: int
    cache_path: Path  # the folder holding the tokenised documents


def load_corpus(source: TextSource, tokenizer: Tokenizer, *, seed: int = 0, val_tokens: int = 0,
                cache_dir: str | Path | None = None) -> TextCorpus:
    """Tokenise `source` (or reuse its cache), shuffle its documents by `seed`, split off validation.

    Keep `seed` fixed across runs that are compared: it chooses the validation documents.
    """
    if val_tokens < 0:
        raise ConfigError(f"val_tokens must be >= 0, got {val_tokens}")
    given = None if source.hub_name else Path(source.path).expanduser()
    if given is not None and (given / "meta.json").is_file() and (given / "tokens.bin").is_file():
        folder = given  # an already tokenised corpus (a cache folder copied here): no `datasets` needed
    else:
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        folder = folder / _cache_key(source, tokenizer)
        if not (folder / "meta.json").is_file():
            _build_cache(source, tokenizer, folder)
    meta = json.loads((folder / "meta.json").read_text())
    if meta["tokenizer"] != tokenizer.identity:
        raise ConfigError(f"{folder} was tokenised with {meta['tokenizer']}, not {tokenizer.identity}: "
                          f"give data.tokenizer the tokenizer it was made with")
    tokens = np.memmap(folder / "tokens.bin", dtype=meta["dtype"], mode="r")  # (N_all,)
    lengths, n_bytes = np.load(folder / "doc_tokens.npy"), np.load(folder / "doc_bytes.npy")  # (D_all,)
    starts = np.cumsum(lengths) - lengths
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).numpy()
    n_val = 0
    if val_tokens > 0:
        n_val = int(np.searchsorted(np.cumsum(lengths[order]), val_tokens, side="left")) + 1  # whole documents
        if n_val >= len(order):
            raise ConfigError(f"val_tokens={val_tokens} leaves no training documents "
                              f"({meta['n_tokens']} tokens in {len(order)} documents of {source.path})")

    def split(ids: np.ndarray) -> TokenSplit:
        return TokenSplit(tokens=tokens, doc_ids=ids, starts=starts[ids], lengths=lengths[ids],
                          n_bytes=int(n_bytes[ids].sum()), eos_id=tokenizer.eos_id)

    return TextCorpus(train=split(order[n_val:]), val=split(order[:n_val]), vocab_size=tokenizer.vocab_size,
                      cache_path=folder)


@dataclass(frozen=True, kw_only=True)
class CorpusConfig:
    """A corpus as a job names it: source, tokenizer and validation size (the `data` config section)."""

    path: str | None = None  # as TextSource.path; None: the Debian docs corpus, fetched on first use
    text_field: str = "text"
    hub_config: str | None = None
    split: str = "train"
    streaming: bool = False
    max_documents: int | None = None
    tokenizer: str = "bytes"  # "bytes", a tokenizer.json path (composer-text train-tokenizer makes one), hub:<repo>
    val_tokens: int = 100_000  # held-out validation tokens (whole documents)
    cache_dir: str | None = None  # token cache; None: $COMPOSER_CACHE/text

    def open(self, *, seed: int = 0) -> TextCorpus:
        from composer.data.corpus import default_corpus

        path = self.path or str(default_corpus(setting="data.path"))
        source = TextSource(path=path, text_field=self.text_field, hub_config=self.hub_config, split=self.split,
                            streaming=self.streaming, max_documents=self.max_documents)
        return load_corpus(source, load_tokenizer(self.tokenizer), seed=seed, val_tokens=self.val_tokens,
                           cache_dir=self.cache_dir)


class TextBatches(EpochOrder):
    """Epochs over the windows of a training split, reshuffled each epoch from (seed, epoch).

    Same contract as `ArrayBatches`: the position is the number of batches served. With
    `world_size` > 1 each rank serves `batch_size` rows; at every step rank r holds rows
    [r * batch_size, (r + 1) * batch_size) of the global batch, which is exactly the batch of a
    single-rank stream with batch_size * world_size. A partial global batch at an epoch's end is dropped.
    """

    def __init__(self, split: TokenSplit, *, batch_size: int, seq_len: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1 or seq_len < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"need batch_size, seq_len, world_size >= 1 and 0 <= rank < world_size, got "
                              f"{batch_size}, {seq_len}, {world_size} and rank {rank}")
        self.split, self.batch_size, self.seq_len = split, batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.n_windows = max(split.n_tokens - 1, 0) // seq_len
        if self.n_windows < batch_size * world_size:
            raise ConfigError(f"the training split holds {self.n_windows} sequences of {seq_len + 1} tokens, "
                              f"fewer than one global batch ({batch_size * world_size})")
        self.per_epoch = self.n_windows // (batch_size * world_size)  # steps
        super().__init__(self.n_windows, seed=seed)  # position and the per-epoch order of windows

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, k = divmod(self.position, self.per_epoch)
        first = (k * self.world_size + self.rank) * self.batch_size
        windows = self.permutation(epoch)[first : first + self.batch_size].tolist()
        rows = torch.from_numpy(np.stack([self.split.read(w * self.seq_len, self.seq_len + 1) for w in windows]))
        self.position += 1
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()  # (B, T), (B, T)


def val_batches(split: TokenSplit, *, batch_size: int, seq_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A split in its fixed order as (inputs, targets) batches in which every token of the stream is a
    target exactly once: the stream is read after one EOS (as if a document had just ended) and the
    last window's tail is IGNORE. So the mean loss is over `split.n_tokens` targets, as
    `bits_per_byte` wants. Empty for an empty split.
    """
    n = split.n_tokens
    if n == 0:
        return []
    n_windows = -(-n // seq_len)
    stream = np.concatenate([[split.eos_id], split.read(0, n)])  # (n + 1,)
    inputs = np.full(n_windows * seq_len + 1, split.eos_id, dtype=np.int64)
    targets = np.full(n_windows * seq_len + 1, IGNORE, dtype=np.int64)
    inputs[: n + 1] = targets[: n + 1] = stream
    x = torch.from_numpy(inputs[:-1].reshape(n_windows, seq_len))  # (W, T)
    y = torch.from_numpy(targets[1:].reshape(n_windows, seq_len))  # (W, T)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n_windows, batch_size)]


def bits_per_byte(loss_nats: float, *, n_tokens: int, n_bytes: int) -> float:
    """Mean token cross-entropy (nats) over n_tokens targets -> bits per UTF-8 byte of their text.

    Total nats = loss * n_tokens; in bits, / ln 2; per byte, / n_bytes. Unlike the loss, it does not
    depend on the tokenizer, so models with different vocabularies compare.
    """
    if n_tokens < 1 or n_bytes < 1:
        raise ValueError(f"n_tokens and n_bytes must be positive, got {n_tokens} and {n_bytes}")
    return loss_nats * n_tokens / (n_bytes * math.log(2))
