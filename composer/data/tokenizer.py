"""Tokenizers behind one small interface: raw UTF-8 bytes, or a Hugging Face `tokenizer.json`.

`load_tokenizer("bytes")` needs nothing; `load_tokenizer("path/to/tokenizer.json")` needs the
`tokenizers` package and no network. `train_bpe` fits a byte-level BPE on a corpus and saves one.
Every tokenizer has an end-of-document id (`eos_id`) that packing puts after each document; text
that happens to spell the EOS token is encoded as ordinary text, so only packing emits `eos_id`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from composer.errors import ConfigError

EOS_TOKEN = "<|endoftext|>"  # the EOS that train_bpe writes
_EOS_NAMES = (EOS_TOKEN, "<|end_of_text|>", "</s>", "<eos>")  # looked for, in order, in a loaded tokenizer.json


class Tokenizer(Protocol):
    vocab_size: int  # ids are in [0, vocab_size)
    eos_id: int  # ends every packed document
    identity: str  # names the exact vocabulary in cache keys ("bytes", "bpe-<hash of tokenizer.json>")

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...
    def decode(self, ids: Iterable[int]) -> str: ...  # drops eos_id


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, EOS as 256: no vocabulary to fit, nothing unknown."""

    vocab_size = 257
    eos_id = 256
    identity = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i != self.eos_id).decode("utf-8", errors="replace")


class HFTokenizer:
    """A `tokenizers` tokenizer read from a local tokenizer.json."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as _Tok

        try:
            self._tok = _Tok.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception on a malformed file
            raise ConfigError(f"cannot read tokenizer {path}: {' '.join(str(exc).split())}") from None
        self._tok.encode_special_tokens = True  # "<|endoftext|>" inside a document stays text
        eos = next((self._tok.token_to_id(n) for n in _EOS_NAMES if self._tok.token_to_id(n) is not None), None)
        if eos is None:
            raise ConfigError(f"tokenizer {path} has no end-of-document token (looked for {', '.join(_EOS_NAMES)})")
        self.eos_id: int = eos
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)
        self.identity = "bpe-" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]  # parallel in Rust

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def load_tokenizer(spec: str) -> Tokenizer:
    """"bytes", a tokenizer.json file (or a folder holding one), or "hub:<repo id>" (the repo's
    tokenizer.json through the Hugging Face cache: downloaded once, then offline with HF_HUB_OFFLINE=1)."""
    if spec == "bytes":
        return ByteTokenizer()
    if spec.startswith("hub:"):
        return HFTokenizer(_hub_tokenizer_file(spec.removeprefix("hub:")))
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.is_file():
        _require_tokenizers()
        return HFTokenizer(path)
    raise ConfigError(f"unknown tokenizer {spec!r}: use 'bytes', the path of a tokenizer.json, or hub:<repo id>")


def _hub_tokenizer_file(repo_id: str) -> Path:
    _require_tokenizers()
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, "tokenizer.json"))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ConfigError(f"tokenizer hub:{repo_id}: no tokenizer.json could be had from the hub or its cache ({reason})") from None


def train_bpe(texts: Iterable[str], *, vocab_size: int, out_path: str | Path) -> Path:
    """Fit a byte-level BPE (GPT-2 style, EOS = "<|endoftext|>") on `texts`; save it as tokenizer.json.

    The vocabulary is 256 byte symbols + EOS + merges; a small corpus may run out of merges first,
    so the saved vocabulary can be smaller than `vocab_size`, never larger.
    """
    if vocab_size < 257:
        raise ConfigError(f"vocab_size must be >= 257 (256 bytes and EOS) for a byte-level BPE, got {vocab_size}")
    _require_tokenizers()
    from tokenizers import Tokenizer as _Tok, decoders, models, pre_tokenizers, trainers

    tok = _Tok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # keep text exactly: no added space
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return out


def _require_tokenizers() -> None:
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        raise ConfigError("a tokenizer.json needs the `tokenizers` package: pip install tokenizers") from None
