"""The six MAD synthetic tasks, with generators written here from the task definitions.

MAD: "Mechanistic Design and Scaling of Hybrid Architectures", Poli et al., ICML 2024
(arXiv 2403.17844). Baseline settings are the paper's (see shared/reference/mad-tasks.md); the
token layouts below are our own reading of the task definitions, not the paper's code:

- recall tasks are key,value,key,value,... streams with a fresh random key->value map per sequence;
  every key position is a query once its key has appeared earlier in the same sequence (the first
  occurrence is never counted), so chance is 1 / (number of value tokens);
- fuzzy recall: keys and values are motifs of 1..k tokens from disjoint halves of the vocab (so the
  stream parses unambiguously); a sequence is cut to its length; value tokens of a repeated key
  motif are targets, each predicted after the token before it;
- noisy recall: whole pairs stay adjacent; noise tokens from their own ids sit between pairs and are
  never targets;
- selective copying is taught with teacher forcing: after the copy signal the inputs are the
  already-copied tokens;
- memorization draws distinct keys within a sequence, so the context never reveals a value.

A task is `generate(cfg, *, n_examples, seed) -> (inputs, targets)`: `inputs` (N, T_in) and
`targets` (N, T_out) int64, targets IGNORE except at the positions that are scored. For next-token
tasks T_out == T_in and targets[:, t] is what the model should emit after reading inputs[:, :t+1].
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from composer.config import from_mapping
from composer.engine.batches import IGNORE
from composer.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Task:
    name: str
    config_cls: type  # frozen kw_only dataclass; defaults are the MAD baseline setting
    generate: Callable[..., tuple[Tensor, Tensor]]  # generate(cfg, *, n_examples, seed)
    # build_head(cfg, d_model) -> nn.Module, for tasks whose outputs are not next-token logits
    build_head: Callable[..., nn.Module] | None = None


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True, kw_only=True)
class _Sizes:
    n_train: int = 12_800  # MAD's baseline training set
    n_test: int = 1_280  # held-out examples, scored after training

    def __post_init__(self) -> None:
        _require(self.n_train >= 1, f"n_train must be >= 1, got {self.n_train}")
        _require(self.n_test >= 1, f"n_test must be >= 1, got {self.n_test}")


@dataclass(frozen=True, kw_only=True)
class RecallConfig(_Sizes):
    vocab: int = 16  # key tokens + value tokens, half each
    length: int = 128  # tokens per sequence

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.vocab >= 4 and self.vocab % 2 == 0, f"vocab must be even and >= 4, got {self.vocab}")
        _require(self.length >= 4 and self.length % 2 == 0, f"length must be even and >= 4, got {self.length}")

    vocab_size = property(lambda self: self.vocab)
    seq_len = property(lambda self: self.length)
    chance_accuracy = property(lambda self: 2 / self.vocab)  # one of the vocab/2 value tokens


@dataclass(frozen=True, kw_only=True)
class FuzzyRecallConfig(RecallConfig):
    k_motif_size: int = 3  # a key is 1..k_motif_size key tokens
    v_motif_size: int = 3  # a value is 1..v_motif_size value tokens
    n_keys: int = 8  # distinct key motifs per sequence (plain recall at vocab 16 has 8 keys)

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.k_motif_size >= 1 and self.v_motif_size >= 1, "motif sizes must be >= 1")
        n_motifs = sum((self.vocab // 2) ** k for k in range(1, self.k_motif_size + 1))
        _require(1 <= self.n_keys <= n_motifs, f"n_keys must be in [1, {n_motifs}] (distinct motifs), got {self.n_keys}")


@dataclass(frozen=True, kw_only=True)
class NoisyRecallConfig(RecallConfig):
    vocab: int = 32  # key + value tokens, half each (MAD's noisy baseline)
    n_noise_tokens: int = 16  # noise ids, after the key and value ids
    noise_frac: float = 0.2  # share of positions that are noise tokens

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.n_noise_tokens >= 1, f"n_noise_tokens must be >= 1, got {self.n_noise_tokens}")
        ok = 0 <= self.noise_frac and self.n_noise <= self.length - 2
        _require(ok, f"noise_frac must be >= 0 and leave room for a pair, got {self.noise_frac}")

    @property
    def n_noise(self) -> int:
        """Noise positions per sequence: rounded, then made to leave an even count for pairs."""
        n = round(self.noise_frac * self.length)
        return n + (self.length - n) % 2

    vocab_size = property(lambda self: self.vocab + self.n_noise_tokens)


@dataclass(frozen=True, kw_only=True)
class CopyConfig(_Sizes):
    vocab: int = 16  # content tokens; a blank and a copy signal come after them
    length: int = 256  # inputs per sequence: context, copy signal, copied tokens but the last
    n_copy: int = 16  # content tokens to find and copy

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.vocab >= 2, f"vocab must be >= 2, got {self.vocab}")
        _require(self.n_copy >= 1, f"n_copy must be >= 1, got {self.n_copy}")
        _require(self.length >= 2 * self.n_copy, f"length must be >= 2 * n_copy = {2 * self.n_copy}, got {self.length}")

    vocab_size = property(lambda self: self.vocab + 2)
    seq_len = property(lambda self: self.length)
    chance_accuracy = property(lambda self: 1 / self.vocab)


@dataclass(frozen=True, kw_only=True)
class CompressionConfig(_Sizes):
    vocab: int = 16  # sequence tokens; the compression token comes after them
    length: int = 32  # tokens to reconstruct from one position

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.vocab >= 2, f"vocab must be >= 2, got {self.vocab}")
        _require(self.length >= 1, f"length must be >= 1, got {self.length}")

    vocab_size = property(lambda self: self.vocab + 1)
    seq_len = property(lambda self: self.length + 1)
    chance_accuracy = property(lambda self: 1 / self.vocab)


@dataclass(frozen=True, kw_only=True)
class MemorizationConfig(RecallConfig):
    n_train: int = 256  # MAD's baseline: each key is seen ~32 times in training
    vocab: int = 256  # key + value tokens, half each
    length: int = 32  # tokens per sequence
    mapping_seed: int = 0  # the one key->value map, shared by train and test

    def __post_init__(self) -> None:
        super().__post_init__()
        # keys are distinct within a sequence, so a sequence holds at most vocab/2 pairs
        _require(self.length <= self.vocab, f"length must be <= vocab = {self.vocab}, got {self.length}")


# -- shared helpers ---------------------------------------------------------------------------


def _first_occurrence(ids: Tensor, n_ids: int) -> Tensor:
    """True where ids[b, p] is the first of its value in row b."""  # (N, P) -> (N, P) bool
    n, p = ids.shape
    pos = torch.arange(p).expand(n, p)
    first = torch.full((n, n_ids), p).scatter_reduce(1, ids, pos, reduce="amin")  # (N, n_ids)
    return first.gather(1, ids) == pos


def _pack(values: Tensor, valid: Tensor, length: int) -> Tensor:
    """Left-pack each row's valid entries (row-major) and cut to `length`; rows must have enough."""
    flat, keep = values.flatten(1), valid.flatten(1)  # (N, S)
    slot = (keep.cumsum(1) - 1).masked_fill(~keep, flat.shape[1])  # invalid entries go to a spare slot
    out = torch.zeros(flat.shape[0], flat.shape[1] + 1, dtype=flat.dtype).scatter_(1, slot, flat)
    return out[:, :length]


def _sample_distinct_motifs(
    g: torch.Generator, n: int, count: int, max_len: int, low: int, high: int
) -> tuple[Tensor, Tensor]:
    """`count` distinct motifs per row: tokens (N, count, max_len) in [low, high) and lengths (N, count)."""
    tokens = torch.randint(low, high, (n, count, max_len), generator=g)
    lengths = torch.randint(1, max_len + 1, (n, count), generator=g)
    earlier = torch.ones(count, count, dtype=torch.bool).tril(-1)  # [i, j]: j comes before i
    rows = torch.arange(n)  # rows still to check
    while len(rows):
        tok, length = tokens[rows], lengths[rows]
        padded = tok.masked_fill(torch.arange(max_len) >= length[..., None], -1)
        same = (padded[:, :, None] == padded[:, None, :]).all(-1)  # (R, count, count)
        dup = (same & earlier).any(-1)  # a motif equal to an earlier one in its row: redraw it
        k = int(dup.sum())
        tok[dup] = torch.randint(low, high, (k, max_len), generator=g)
        length[dup] = torch.randint(1, max_len + 1, (k,), generator=g)
        tokens[rows], lengths[rows] = tok, length
        rows = rows[dup.any(-1)]
    return tokens, lengths


# -- generators -------------------------------------------------------------------------------


def _recall_stream(
    cfg: RecallConfig, n: int, g: torch.Generator, *, n_noise: int, noise_ids: range
) -> tuple[Tensor, Tensor]:
    """key,value pairs with a per-sequence map; `n_noise` noise tokens between pairs."""
    half = cfg.vocab // 2
    n_pairs = (cfg.length - n_noise) // 2
    keys = torch.randint(0, half, (n, n_pairs), generator=g)
    mapping = torch.randint(half, cfg.vocab, (n, half), generator=g)  # this sequence's key -> value
    values = mapping.gather(1, keys)  # (N, P)
    queried = ~_first_occurrence(keys, half)
    pair_tok = torch.stack([keys, values], -1)  # (N, P, 2)
    pair_tgt = torch.stack([values.masked_fill(~queried, IGNORE), torch.full_like(values, IGNORE)], -1)

    # Units are pairs or single noise tokens, in random order; exactly n_noise noise units per row.
    n_units = n_pairs + n_noise
    is_noise = torch.rand(n, n_units, generator=g).argsort(1) < n_noise  # (N, U)
    pair_of_unit = ((~is_noise).cumsum(1) - 1).clamp(min=0)[..., None].expand(-1, -1, 2)
    tok, tgt = pair_tok.gather(1, pair_of_unit), pair_tgt.gather(1, pair_of_unit)  # (N, U, 2)
    if n_noise:
        noise = torch.randint(noise_ids.start, noise_ids.stop, (n, n_units), generator=g)
        tok[..., 0] = torch.where(is_noise, noise, tok[..., 0])
    tgt[..., 0] = tgt[..., 0].masked_fill(is_noise, IGNORE)
    valid = torch.stack([torch.ones_like(is_noise), ~is_noise], -1)  # a noise unit is one token
    return tok[valid].view(n, cfg.length), tgt[valid].view(n, cfg.length)


def generate_recall(cfg: RecallConfig, *, n_examples: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return _recall_stream(cfg, n_examples, g, n_noise=0, noise_ids=range(0))


def generate_noisy_recall(cfg: NoisyRecallConfig, *, n_examples: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    noise_ids = range(cfg.vocab, cfg.vocab + cfg.n_noise_tokens)
    return _recall_stream(cfg, n_examples, g, n_noise=cfg.n_noise, noise_ids=noise_ids)


def generate_fuzzy_recall(cfg: FuzzyRecallConfig, *, n_examples: int, seed: int) -> tuple[Tensor, Tensor]:
    g, n, half = torch.Generator().manual_seed(seed), n_examples, cfg.vocab // 2
    kk, vv = cfg.k_motif_size, cfg.v_motif_size
    key_tok, key_len = _sample_distinct_motifs(g, n, cfg.n_keys, kk, 0, half)  # (N, K, kk), (N, K)
    val_tok = torch.randint(half, cfg.vocab, (n, cfg.n_keys, vv), generator=g)  # (N, K, vv)
    val_len = torch.randint(1, vv + 1, (n, cfg.n_keys), generator=g)

    n_pairs = cfg.length // 2 + 1  # a pair has >= 2 tokens, so these always fill the length
    which = torch.randint(0, cfg.n_keys, (n, n_pairs), generator=g)  # (N, P) key motif per pair
    queried = ~_first_occurrence(which, cfg.n_keys)
    tok = torch.cat([
        key_tok.gather(1, which[..., None].expand(-1, -1, kk)),
        val_tok.gather(1, which[..., None].expand(-1, -1, vv)),
    ], -1)  # (N, P, kk + vv)
    valid = torch.cat([
        torch.arange(kk) < key_len.gather(1, which)[..., None],
        torch.arange(vv) < val_len.gather(1, which)[..., None],
    ], -1)
    answer = torch.cat([torch.zeros_like(valid[..., :kk]), queried[..., None].expand(-1, -1, vv)], -1)
    packed = _pack(tok + cfg.vocab * answer, valid, cfg.length)  # (N, T): a token and its flag in one id
    inputs, is_answer = packed % cfg.vocab, packed >= cfg.vocab  # is_answer: scored, one position early
    targets = torch.full_like(inputs, IGNORE)
    targets[:, :-1] = inputs[:, 1:].masked_fill(~is_answer[:, 1:], IGNORE)
    return inputs, targets


def generate_selective_copying(cfg: CopyConfig, *, n_examples: int, seed: int) -> tuple[Tensor, Tensor]:
    g, n = torch.Generator().manual_seed(seed), n_examples
    blank, signal, n_context = cfg.vocab, cfg.vocab + 1, cfg.length - cfg.n_copy
    where = torch.rand(n, n_context, generator=g).argsort(1)[:, : cfg.n_copy].sort(1).values  # (N, n_copy)
    content = torch.randint(0, cfg.vocab, (n, cfg.n_copy), generator=g)
    context = torch.full((n, n_context), blank).scatter(1, where, content)
    inputs = torch.cat([context, torch.full((n, 1), signal), content[:, :-1]], 1)  # (N, length)
    targets = torch.full_like(inputs, IGNORE)
    targets[:, n_context:] = content  # from the signal on, emit the next content token
    return inputs, targets


def generate_compression(cfg: CompressionConfig, *, n_examples: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, cfg.vocab, (n_examples, cfg.length), generator=g)
    inputs = torch.cat([seq, torch.full((n_examples, 1), cfg.vocab)], 1)  # (N, length + 1)
    return inputs, seq.clone()  # targets (N, length): every token, from the last position only


class CompressionHead(nn.Module):
    """Decoder of the encoder-decoder setting: the last hidden state -> logits for every position."""

    def __init__(self, *, d_model: int, out_len: int, vocab_size: int) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(out_len, d_model) * 0.02)  # tells output positions apart
        self.mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, vocab_size))

    def forward(self, hidden: Tensor) -> Tensor:
        z = hidden[:, -1, None, :] + self.pos  # (B, T_out, D): the only path from the input
        return self.mlp(z)  # (B, T_out, V)


def build_compression_head(cfg: CompressionConfig, d_model: int) -> nn.Module:
    return CompressionHead(d_model=d_model, out_len=cfg.length, vocab_size=cfg.vocab_size)


def generate_memorization(cfg: MemorizationConfig, *, n_examples: int, seed: int) -> tuple[Tensor, Tensor]:
    half = cfg.vocab // 2
    fixed = torch.Generator().manual_seed(cfg.mapping_seed)  # never the example seed: train and test share it
    mapping = torch.randint(half, cfg.vocab, (half,), generator=fixed)
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(n_examples, half, generator=g).argsort(1)[:, : cfg.length // 2]  # (N, P) distinct
    values = mapping[keys]
    inputs = torch.stack([keys, values], -1).flatten(1)  # (N, length)
    targets = torch.stack([values, torch.full_like(values, IGNORE)], -1).flatten(1)
    return inputs, targets


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(name="in_context_recall", config_cls=RecallConfig, generate=generate_recall),
        Task(name="fuzzy_in_context_recall", config_cls=FuzzyRecallConfig, generate=generate_fuzzy_recall),
        Task(name="noisy_in_context_recall", config_cls=NoisyRecallConfig, generate=generate_noisy_recall),
        Task(name="selective_copying", config_cls=CopyConfig, generate=generate_selective_copying),
        Task(
            name="compression",
            config_cls=CompressionConfig,
            generate=generate_compression,
            build_head=build_compression_head,
        ),
        Task(name="memorization", config_cls=MemorizationConfig, generate=generate_memorization),
    ]
}


def task_config_from_mapping(name: str, data: Mapping[str, Any] | None = None) -> Any:
    """Task `name`'s config: its baseline defaults with `data` applied; bad input raises ConfigError."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r} (valid tasks: {', '.join(TASKS)})")
    return from_mapping(TASKS[name].config_cls, data, where="task")
