"""Parameters, FLOPs and inference state of a pattern at a width: pure arithmetic, no torch.

Every term comes from the primitive's own config class (`n_params`, `forward_flops_per_token`,
`inference_flops_per_token`, `state_bytes`), looked up by letter through the registry, so a new
primitive is accounted for the moment it is registered. The model adds what surrounds the layers:
one pre-norm per layer, the final norm, the embedding and the LM head (see composer/model.py).

FLOP conventions: matmul and conv FLOPs, 2 per multiply-add; elementwise work (norms, softmax,
activations, RoPE) is left out, as torch's FlopCounterMode leaves it out. Attention's QKᵀ and AV
count the full square, not halved for causality (PaLM, Chinchilla). Training = 3 × forward
(backward costs twice the forward). The LM head (2 · d_model · vocab per token) is included; the
embedding lookup is not (a gather, not a matmul). A mixture of experts costs its active weights
per token (router, its top-k experts, shared experts: `n_active_params`), while its parameters
count every expert; `n_active_params` is the model's total as one token sees it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from composer.config import ModelConfig
from composer.errors import ConfigError
from primitives import REGISTRY, by_name

TRAIN_TO_FORWARD = 3  # forward + backward (grads of activations and of weights): 1 + 2


@dataclass(frozen=True, kw_only=True)
class Accounting:
    """What one model costs: parameters, training and decoding FLOPs, and inference state."""

    pattern: str
    d_model: int
    vocab_size: int
    n_layers: int
    counts: dict[str, int]  # layers per primitive letter, every registered letter present
    attention_share: float  # attention layers / all layers
    n_params: int  # total, with the embedding (and the untied head)
    n_non_embedding_params: int  # layers, their norms and the final norm
    n_active_params: int  # what one token runs through: n_params less the experts it is not routed to (MoE)
    params_by_primitive: dict[str, int]  # per letter: mixers and their pre-norms
    seq_len: int  # training sequence length the FLOPs are for
    forward_flops_per_token: int  # layers + LM head
    train_flops_per_token: int  # 3 × forward
    train_flops_by_primitive: dict[str, int]  # per letter, 3 × forward; the head is the rest
    dtype_bytes: int  # of the inference state
    inference_flops_per_token: dict[int, int]  # context -> FLOPs to decode one token at it
    state_bytes: dict[int, int]  # context -> inference state of one sequence
    state_bytes_per_token: dict[int, float]  # context -> state_bytes / context


def _letters(cfg: ModelConfig) -> Counter:
    return Counter(cfg.pattern)


def count_parameters(cfg: ModelConfig) -> dict[str, int]:
    """{'n_params', 'n_non_embedding_params', 'n_embedding_params', 'n_active_params'} of the model
    `cfg` builds, analytically (no torch). The untied head counts as embedding. `n_active_params`
    is what one token runs through: equal to n_params unless a primitive routes tokens to some of
    its weights (MoE: `n_active_params` on its config)."""
    d = cfg.d_model
    layers = sum(k * (cfg.primitive_config(c).n_params(d) + d) for c, k in _letters(cfg).items())  # + pre-norms
    inactive = sum(k * (cfg.primitive_config(c).n_params(d) - _active_params(cfg.primitive_config(c), d))
                   for c, k in _letters(cfg).items())
    non_embedding = layers + d  # + final norm
    embedding = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return {
        "n_params": non_embedding + embedding,
        "n_non_embedding_params": non_embedding,
        "n_embedding_params": embedding,
        "n_active_params": non_embedding + embedding - inactive,
    }


def _active_params(primitive_cfg: object, d_model: int) -> int:
    """A primitive's parameters one token runs through: its `n_active_params` where it has one, else all."""
    active = getattr(primitive_cfg, "n_active_params", None)
    return active(d_model) if active is not None else primitive_cfg.n_params(d_model)


def _head_flops_per_token(cfg: ModelConfig) -> int:
    return 2 * cfg.d_model * cfg.vocab_size  # hidden @ Wᵀ, tied or not


def forward_flops_by_primitive(cfg: ModelConfig, *, seq_len: int) -> dict[str, int]:
    """Forward FLOPs per token of all layers of each letter in the pattern (head excluded)."""
    _check_positive(seq_len=seq_len)
    return {
        c: k * cfg.primitive_config(c).forward_flops_per_token(cfg.d_model, seq_len=seq_len)
        for c, k in _letters(cfg).items()
    }


def forward_flops_per_token(cfg: ModelConfig, *, seq_len: int) -> int:
    """Forward FLOPs per training token at seq_len: every layer's mixer plus the LM head."""
    return sum(forward_flops_by_primitive(cfg, seq_len=seq_len).values()) + _head_flops_per_token(cfg)


def train_flops_per_token(cfg: ModelConfig, *, seq_len: int) -> int:
    """Training FLOPs per token: 3 × forward (6N-style, plus the sequence terms)."""
    return TRAIN_TO_FORWARD * forward_flops_per_token(cfg, seq_len=seq_len)


def inference_flops_per_token(cfg: ModelConfig, *, context: int) -> int:
    """FLOPs to decode one token with `context` tokens in the state (itself included), head included."""
    _check_positive(context=context)
    d = cfg.d_model
    layers = sum(
        k * cfg.primitive_config(c).inference_flops_per_token(d, context=context) for c, k in _letters(cfg).items()
    )
    return layers + _head_flops_per_token(cfg)


def state_bytes(cfg: ModelConfig, *, context: int, dtype_bytes: int = 2) -> int:
    """Inference state of one sequence at `context` tokens: KV caches, SSM and conv states."""
    _check_positive(context=context, dtype_bytes=dtype_bytes)
    d = cfg.d_model
    return sum(
        k * cfg.primitive_config(c).state_bytes(d, context=context, dtype_bytes=dtype_bytes)
        for c, k in _letters(cfg).items()
    )


def state_bytes_per_token(cfg: ModelConfig, *, context: int, dtype_bytes: int = 2) -> float:
    return state_bytes(cfg, context=context, dtype_bytes=dtype_bytes) / context


def account(
    cfg: ModelConfig, *, seq_len: int, contexts: tuple[int, ...] = (4096, 32768), dtype_bytes: int = 2
) -> Accounting:
    """Everything above for one model, at a training seq_len and a few decoding contexts."""
    counts = {letter: cfg.pattern.count(letter) for letter in REGISTRY}
    attention = by_name("attention").letter
    params = count_parameters(cfg)
    d = cfg.d_model
    forward_by = forward_flops_by_primitive(cfg, seq_len=seq_len)
    forward = sum(forward_by.values()) + _head_flops_per_token(cfg)
    states = {c: state_bytes(cfg, context=c, dtype_bytes=dtype_bytes) for c in contexts}
    return Accounting(
        pattern=cfg.pattern,
        d_model=d,
        vocab_size=cfg.vocab_size,
        n_layers=cfg.n_layers,
        counts=counts,
        attention_share=counts[attention] / cfg.n_layers,
        n_params=params["n_params"],
        n_non_embedding_params=params["n_non_embedding_params"],
        n_active_params=params["n_active_params"],
        params_by_primitive={
            c: k * (cfg.primitive_config(c).n_params(d) + d) for c, k in counts.items() if k
        },
        seq_len=seq_len,
        forward_flops_per_token=forward,
        train_flops_per_token=TRAIN_TO_FORWARD * forward,
        train_flops_by_primitive={c: TRAIN_TO_FORWARD * f for c, f in forward_by.items()},
        dtype_bytes=dtype_bytes,
        inference_flops_per_token={c: inference_flops_per_token(cfg, context=c) for c in contexts},
        state_bytes=states,
        state_bytes_per_token={c: states[c] / c for c in contexts},
    )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
