"""Long-context probe: synthetic needle-in-a-haystack retrieval at multiples of the training context.

A probe is one token sequence of `length + 1` tokens, built in the tokenizer's own token space:

    [ haystack before | needle | haystack after | query | answer ]

- haystack: a contiguous slice of real text (a validation `TokenSplit` or a token array), or, when
  none is given, of natural-looking filler sentences shuffled by the seed;
- needle: "\\nThe secret code of Ada is 48213.\\n", placed so that its first token sits at
  round(depth * (haystack tokens)), depth 0 at the start, 1 right before the query;
- query: "\\nThe secret code of Ada is"; the answer is the code's tokens (" 48213"), encoded the same
  way in the needle and at the end, so a perfect copier can reproduce it token for token.

The model reads tokens[:-1] (exactly `length` tokens, as a training window of `length` inputs) and is
scored by teacher forcing on the answer tokens: a probe is retrieved when the argmax at every answer
position is the answer token (exact match). Probes are deterministic for (seed, length).

`needle_accuracy(model, tokenizer, seq_len=...)` runs the probe at each multiple of the training
context; `python -m composer.evals.needle MODEL_DIR` runs it on a folder written by composer-export.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from composer.engine.batches import IGNORE
from composer.errors import ConfigError
from composer.data.text import TokenSplit
from composer.data.tokenizer import Tokenizer

SEPARATOR = "\n"  # before the needle, after it, and before the query: the needle reads as its own line
BATCH_TOKENS = 32_768  # default batch: this many input tokens per forward pass (1 sequence at 32K)
NAMES = (
    "Ada", "Alan", "Alice", "Amir", "Anna", "Arjun", "Bao", "Boris", "Carla", "Chen", "Dara", "David", "Elena",
    "Emil", "Farah", "Felix", "Grace", "Hana", "Hugo", "Ines", "Ivan", "Jonas", "Julia", "Kenji", "Lara", "Leon",
    "Lina", "Marco", "Maya", "Nadia", "Nils", "Olga", "Omar", "Paula", "Priya", "Quinn", "Rosa", "Sami", "Sofia",
    "Tariq", "Tomas", "Uma", "Vera", "Victor", "Wanda", "Yusuf", "Zara", "Zoltan",
)
FILLER = (  # bland, digit-free sentences: the default haystack, shuffled by the seed
    "The grass is green and the sky is blue.",
    "A light rain fell over the hills during the night.",
    "The river runs slowly past the old stone bridge.",
    "Most of the shops in the village close early on Sundays.",
    "A cup of tea tastes better after a long walk.",
    "The library keeps its oldest maps in a quiet room upstairs.",
    "Children were playing football in the park until sunset.",
    "The baker opens the door before anyone else is awake.",
    "Clouds gathered in the west as the wind picked up.",
    "The train to the coast was late again this morning.",
    "An old cat sleeps on the warm windowsill most afternoons.",
    "The garden needs water after such a dry week.",
    "Fresh bread and cheese make a simple lunch.",
    "The museum added a new room for paintings of the sea.",
    "Snow covered the mountain roads for most of the winter.",
    "The market sells apples, pears and plums in autumn.",
    "A narrow path leads from the church down to the lake.",
    "The teacher read a short story aloud to the class.",
    "Birds sing loudly in the trees at the start of spring.",
    "The lighthouse keeper writes in his journal every evening.",
    "A small boat drifted along the shore without a sound.",
    "The kitchen smelled of onions, garlic and fresh herbs.",
    "Nobody remembered who had planted the tall oak tree.",
    "The meeting ended when the lights went out in the hall.",
)


@dataclass(frozen=True, kw_only=True)
class NeedleConfig:
    multiples: tuple[float, ...] = (1, 2)  # context lengths, as multiples of the training seq_len
    n_probes: int = 50  # probes per length, spread over `depths` in turn
    depths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)  # where the needle sits: 0 start, 1 just before the query
    seed: int = 0  # probes are a function of (seed, length): names, codes, haystack offsets
    needle: str = "The secret code of {name} is {code}."  # the query is the text before {code}
    digits: int = 5  # length of the secret code; its first digit is never 0

    def __post_init__(self) -> None:
        if not self.multiples or any(not (isinstance(m, (int, float)) and m > 0) for m in self.multiples):
            raise ConfigError(f"multiples must be positive numbers, got {self.multiples!r}")
        if len(set(self.multiples)) != len(self.multiples):
            raise ConfigError(f"multiples must be distinct, got {self.multiples!r}")
        if self.n_probes < 1:
            raise ConfigError(f"n_probes must be >= 1, got {self.n_probes}")
        if not self.depths or any(not 0 <= d <= 1 for d in self.depths):
            raise ConfigError(f"depths must be fractions in [0, 1], got {self.depths!r}")
        if self.digits < 1:
            raise ConfigError(f"digits must be >= 1, got {self.digits}")
        name, code = self.needle.find("{name}"), self.needle.find("{code}")
        if self.needle.count("{name}") != 1 or self.needle.count("{code}") != 1 or not 0 <= name < code:
            raise ConfigError(f"needle must hold {{name}} once, then {{code}} once, got {self.needle!r}")


@dataclass(frozen=True, kw_only=True, eq=False)
class Probe:
    tokens: np.ndarray  # (length + 1,) int64: the model reads tokens[:-1]; the answer ends the sequence
    length: int  # the context: tokens the model reads
    depth: float  # the requested depth of the needle
    needle_start: int  # index of the needle's first token (its leading separator)
    needle_len: int
    query_start: int  # index of the query's first token (its leading separator)
    answer_start: int  # index of the first answer token; the answer is tokens[answer_start:]
    name: str
    code: str

    @property
    def answer(self) -> np.ndarray:
        return self.tokens[self.answer_start :]


def context_length(seq_len: int, multiple: float) -> int:
    """Tokens the model reads at `multiple` × the training context."""
    return max(1, round(seq_len * multiple))


def label(multiple: float) -> str:
    """1 -> '1x', 2.0 -> '2x', 1.5 -> '1.5x': the suffix of the result keys."""
    return f"{multiple:g}x"


def _split_needle(fmt: str, name: str, code: str) -> tuple[str, str, str]:
    """(query text, answer text, text after the answer). Whitespace before {code} goes with the answer,
    as byte-level BPEs attach a space to the word after it: "... is" + " 48213" + "."."""
    before, after = fmt.split("{code}")
    query = before.rstrip()
    return query.replace("{name}", name), before[len(query):] + code, after


def _filler_stream(tokenizer: Tokenizer, n_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """At least `n_tokens` ids of the filler sentences, shuffled anew each pass."""
    chunks, total = [], 0
    while total < n_tokens:
        order = rng.permutation(len(FILLER))
        ids = tokenizer.encode(" ".join(FILLER[i] for i in order) + " ")
        chunks.append(np.asarray(ids, dtype=np.int64))
        total += len(ids)
    return np.concatenate(chunks)


def _read(filler: TokenSplit | np.ndarray, start: int, n: int) -> np.ndarray:
    if isinstance(filler, TokenSplit):
        return filler.read(start, n)
    return np.asarray(filler[start : start + n], dtype=np.int64)


def make_probes(
    tokenizer: Tokenizer, *, length: int, cfg: NeedleConfig, filler: TokenSplit | np.ndarray | None = None,
) -> list[Probe]:
    """cfg.n_probes probes of `length` context tokens, probe i at depth cfg.depths[i % len(depths)].

    filler: real text to hide the needle in (a validation split, or a 1-D array of token ids); each
    probe takes one contiguous slice at a seeded offset. None: the built-in filler sentences.
    """
    if length < 1:
        raise ConfigError(f"length must be >= 1, got {length}")
    rng = np.random.default_rng([cfg.seed, length])

    def encode(text: str) -> np.ndarray:
        return np.asarray(tokenizer.encode(text), dtype=np.int64)

    parts = []  # per probe: name, code, needle ids, query ids, answer ids
    for _ in range(cfg.n_probes):
        name = NAMES[int(rng.integers(len(NAMES)))]
        code = str(int(rng.integers(10 ** (cfg.digits - 1), 10**cfg.digits)))
        query, answer, after = _split_needle(cfg.needle, name, code)
        answer_ids = encode(answer)
        needle_ids = np.concatenate([encode(SEPARATOR + query), answer_ids, encode(after + SEPARATOR)])
        parts.append((name, code, needle_ids, encode(SEPARATOR + query), answer_ids))
    # Haystack tokens per probe: everything that is not needle, query or answer.
    sizes = [length + 1 - len(n) - len(q) - len(a) for _, _, n, q, a in parts]
    if min(sizes) < 0:
        raise ConfigError(f"a context of {length} tokens cannot hold the needle, query and answer: they need "
                          f"{length - min(sizes)} tokens; use a longer seq_len or a shorter needle")
    if filler is None:
        filler = _filler_stream(tokenizer, 2 * max(sizes) + 1, rng)
    n_filler = filler.n_tokens if isinstance(filler, TokenSplit) else len(filler)
    if n_filler < max(sizes):
        raise ConfigError(f"the filler holds {n_filler} tokens; a {length}-token probe needs {max(sizes)}")
    probes = []
    for i, ((name, code, needle, query, answer), size) in enumerate(zip(parts, sizes)):
        depth = cfg.depths[i % len(cfg.depths)]
        hay = _read(filler, int(rng.integers(n_filler - size + 1)), size)
        if len(hay) and (hay.min() < 0 or hay.max() >= tokenizer.vocab_size):
            raise ConfigError(f"filler holds ids outside the tokenizer's vocabulary of {tokenizer.vocab_size}")
        at = round(depth * size)
        tokens = np.concatenate([hay[:at], needle, hay[at:], query, answer])
        probes.append(Probe(tokens=tokens, length=length, depth=depth, needle_start=at, needle_len=len(needle),
                            query_start=length + 1 - len(answer) - len(query), answer_start=length + 1 - len(answer),
                            name=name, code=code))
    return probes


def probe_tensors(probes: Sequence[Probe]) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (N, L), targets (N, L)): targets are IGNORE except at the answer, so the probes can be
    scored by `objective.loss_and_correct` or trained on by the shared trainer."""
    tokens = torch.from_numpy(np.stack([p.tokens for p in probes]))  # (N, L + 1)
    targets = tokens[:, 1:].clone()
    for row, p in enumerate(probes):
        targets[row, : p.answer_start - 1] = IGNORE
    return tokens[:, :-1].contiguous(), targets


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def score_probes(
    model: nn.Module, probes: Sequence[Probe], *, device: torch.device, batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(answer tokens right, answer tokens) per probe, by teacher forcing: argmax of the logits at each
    position before an answer token. Probes must share one length. A model with `hidden` and `logits`
    (ComposedModel) projects only the answer positions, so long contexts never hold (B, T, V) logits."""
    inputs, targets = probe_tensors(probes)  # (N, L), (N, L)
    span = max(len(p.answer) for p in probes)  # the last `span` positions hold every answer
    inputs, targets = inputs.to(device), targets[:, -span:].to(device)  # (N, L), (N, span)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    right = []
    for i in range(0, len(inputs), batch_size):
        x = inputs[i : i + batch_size]  # (B, L)
        with autocast:
            if hasattr(model, "hidden") and hasattr(model, "logits"):
                logits = model.logits(model.hidden(x)[:, -span:])  # (B, span, V)
            else:
                logits = model(x)[:, -span:]  # (B, span, V)
        y = targets[i : i + batch_size]
        right.append(((logits.float().argmax(-1) == y) & (y != IGNORE)).sum(-1))  # (B,)
    counts = np.array([len(p.answer) for p in probes])
    return torch.cat(right).cpu().numpy(), counts


def needle_accuracy(
    model: nn.Module, tokenizer: Tokenizer, *, seq_len: int, cfg: NeedleConfig = NeedleConfig(),
    filler: TokenSplit | np.ndarray | None = None, device: str | torch.device | None = None,
    batch_size: int | None = None,
) -> dict:
    """Needle retrieval at each of cfg.multiples × seq_len (the model's training context).

    Returns, per multiple m (keys '1x', '2x', '1.5x', ...):
      needle@<m>x     fraction of probes whose every answer token is the model's argmax (exact match)
      per_token@<m>x  fraction of all answer tokens predicted right
    and lengths {"<m>x": context tokens}, by_depth {"<m>x": {"<depth>": exact-match fraction}},
    n_probes. device: where to run (the model is moved there); default the model's own device.
    batch_size: sequences per forward pass; default BATCH_TOKENS // length (at least 1). bf16 autocast
    on CUDA, fp32 elsewhere; the model's train/eval mode is restored afterwards.
    """
    if seq_len < 1:
        raise ConfigError(f"seq_len must be >= 1, got {seq_len}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    vocab = getattr(getattr(model, "cfg", None), "vocab_size", None)
    if vocab is not None and vocab < tokenizer.vocab_size:
        raise ConfigError(f"the model's vocabulary ({vocab}) is smaller than the tokenizer's ({tokenizer.vocab_size})")
    device = _model_device(model) if device is None else torch.device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    out: dict = {"lengths": {}, "by_depth": {}, "n_probes": cfg.n_probes}
    try:
        for m in cfg.multiples:
            key, length = label(m), context_length(seq_len, m)
            probes = make_probes(tokenizer, length=length, cfg=cfg, filler=filler)
            right, counts = score_probes(model, probes, device=device,
                                         batch_size=batch_size or max(1, BATCH_TOKENS // length))
            exact = right == counts
            depths = np.array([p.depth for p in probes])
            out[f"needle@{key}"] = float(exact.mean())
            out[f"per_token@{key}"] = float(right.sum() / counts.sum())
            out["lengths"][key] = length
            out["by_depth"][key] = {f"{d:g}": float(exact[depths == d].mean()) for d in sorted(set(depths.tolist()))}
    finally:
        model.train(was_training)
    return out
