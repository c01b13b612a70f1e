"""Causal grouped-query self-attention `*` (the module; its config is primitives/attention.py): RoPE or NoPE, optional sliding window and QK-norm.

Computed with `scaled_dot_product_attention`; on CUDA its backend is selectable (cuDNN measured
1.5–1.8× faster than the default flash backend on H200), and the `flash-attn` package is used when
asked for. The `math` backend is the reference path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from composer.errors import KernelUnavailableError
from primitives.attention import AttentionConfig

log = logging.getLogger(__name__)

@dataclass
class KVCache:
    k: torch.Tensor  # (B, S, Hkv, hd): S = max_len, or min(max_len, window) with a sliding window
    v: torch.Tensor  # (B, S, Hkv, hd)
    length: int = 0  # tokens written so far (the next token's position); stale once `position` is set
    ring: bool = False  # sliding window: the last S tokens' keys, oldest first; else positions 0..length-1
    # (1,) int64 on the cache's device once `use_device_position` was called: the next token's position,
    # read and advanced by the device, so that a captured CUDA graph replays each step at its own position
    # (a Python int would be baked into the graph). Then a ring holds position p at slot p mod S.
    position: torch.Tensor | None = None

    def use_device_position(self) -> None:
        """From here on keep the position on the device and decode one token per call (composer-bench's
        graph-captured decode step). A ring is rotated from its oldest-first layout to slot = position
        mod S, which a step can address without the host."""
        if self.position is not None:
            return
        if self.ring:
            shift = self.length % self.k.shape[1]
            self.k.copy_(torch.roll(self.k, shift, dims=1))
            self.v.copy_(torch.roll(self.v, shift, dims=1))
        self.position = torch.tensor([self.length], dtype=torch.long, device=self.k.device)


def rope_tables(length: int, head_dim: int, *, start: int | torch.Tensor, theta: float,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (1, T, 1, hd/2) of the rotary embedding (Su et al. 2021) at positions start..start+T
    (`start` an int, or a (1,) tensor on the device: a KV cache's device position). Made once per call
    and shared by q and k: each decode step replays them, so fewer kernels is faster decoding."""
    inv_freq = theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / -head_dim)  # (hd/2,)
    pos = torch.arange(length, device=device, dtype=torch.float32) + start  # (T,)
    angles = torch.outer(pos, inv_freq)[None, :, None, :]  # (1, T, 1, hd/2)
    return angles.cos(), angles.sin()


def rope(x: torch.Tensor, *, start: int | torch.Tensor = 0, theta: float = 10_000.0,
         tables: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Rotary embedding of x (B, T, H, hd), rotate-half layout: each pair (i, i + hd/2) turned by its
    angle, at positions start..start+T, or by `tables` (rope_tables)."""
    cos, sin = tables if tables is not None else rope_tables(x.shape[1], x.shape[-1], start=start, theta=theta,
                                                            device=x.device)
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, T, H, hd/2) each
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def causal_mask(n_q: int, n_k: int, *, q_offset: int, window: int | None, device: torch.device) -> torch.Tensor:
    """(n_q, n_k) bool, True where query i (at position q_offset + i) may see key j."""
    qpos = torch.arange(q_offset, q_offset + n_q, device=device)[:, None]
    kpos = torch.arange(n_k, device=device)[None, :]
    allowed = kpos <= qpos
    if window is not None:
        allowed &= kpos > qpos - window
    return allowed


def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except ImportError as exc:
        raise KernelUnavailableError(
            f"attention backend 'flash_attn' needs the flash-attn package ({exc}); install it with "
            "`pip install 'composer-hybrid[cuda]'` or `pip install flash-attn --no-build-isolation`, "
            "or use backend=cudnn|flash|auto"
        ) from None
    return flash_attn_func


class Attention(nn.Module):
    def __init__(self, cfg: AttentionConfig, *, d_model: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.hd = cfg.head_size(d_model)
        self.n_heads, self.n_kv = cfg.n_heads, cfg.kv_heads
        self.qkv = nn.Linear(d_model, (self.n_heads + 2 * self.n_kv) * self.hd, bias=False)
        self.out_proj = nn.Linear(self.n_heads * self.hd, d_model, bias=False)
        self.q_norm = nn.RMSNorm(self.hd) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(self.hd) if cfg.qk_norm else None
        # rope_tables at positions 0..L-1, made eagerly by `reach`: compiled, the layer reads them instead of computing
        # cos and sin per element of every head (7.5% of a compiled mad_fast proxy's kernel time on an H100). Not a
        # buffer: module.to(dtype) would round them to bf16
        self.rope_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        if cfg.backend == "flash_attn":
            _flash_attn_func()  # fail at build time, not mid-run

    def forward(self, x: torch.Tensor, state: KVCache | None = None) -> torch.Tensor:
        return self.out_proj(self.mix(self.qkv(x), state))  # (B, T, D)

    def mix(self, qkv: torch.Tensor, state: KVCache | None = None) -> torch.Tensor:
        """The projected queries, keys and values (B, T, (H + 2 Hkv) hd) -> attention's output (B, T, H hd), before
        out_proj: everything between the two projections, which reads no weight but the q/k norms'."""
        B, T, _ = qkv.shape
        heads = [self.n_heads, self.n_kv]
        qk, v = qkv.split([(self.n_heads + self.n_kv) * self.hd, self.n_kv * self.hd], dim=-1)
        qk = qk.view(B, T, self.n_heads + self.n_kv, self.hd)  # (B, T, H + Hkv, hd): the queries, then the keys
        v = v.view(B, T, self.n_kv, self.hd)  # (B, T, Hkv, hd)
        if self.q_norm is not None:
            q, k = qk.split(heads, dim=2)
            qk = torch.cat([self.q_norm(q), self.k_norm(k)], dim=2)
        on_device = state is not None and state.position is not None
        if on_device and T != 1:
            raise ValueError(f"a KV cache with a device position decodes one token per call, got {T}")
        start = state.position if on_device else state.length if state is not None else 0
        if self.cfg.rope_theta is not None:  # queries and keys turned together: one rotation's kernels, not two
            qk = rope(qk, tables=self._rope_tables(start, T, qkv.device))
        q, k = qk.split(heads, dim=2)  # (B, T, H, hd), (B, T, Hkv, hd)
        if on_device:
            return self._step_on_device(state, q, k, v).reshape(B, T, self.n_heads * self.hd)
        offset = start  # keys before this call's first query, in the keys attended
        if state is not None and state.ring:
            k, v, offset = self._through_ring(state, k, v)
        elif state is not None:
            if start + T > state.k.shape[1]:
                raise ValueError(f"KV cache holds {state.k.shape[1]} tokens, asked to reach {start + T}")
            state.k[:, start : start + T] = k.to(state.k.dtype)
            state.v[:, start : start + T] = v.to(state.v.dtype)
            state.length = start + T
            k, v = state.k[:, : start + T].to(q.dtype), state.v[:, : start + T].to(q.dtype)
        return self._attend(q, k, v, q_offset=offset).reshape(B, T, self.n_heads * self.hd)

    def reach(self, positions: int, device: torch.device, made: dict | None = None) -> None:
        """Make the rotary tables of positions 0..positions-1 on `device` once, outside compiled code (the model
        calls this before its layers; `made` shares them between its layers of one head size and theta). Never
        replaced on the same device, as a captured graph may read them: a later, longer call computes its own
        tables, as without the cache."""
        have, theta = self.rope_cache, self.cfg.rope_theta
        if (theta is None or (have is not None and have[0].device == device) or torch.compiler.is_compiling()
                or (device.type == "cuda" and torch.cuda.is_current_stream_capturing())):
            return
        made = {} if made is None else made
        key = (self.hd, theta)
        if key not in made:
            made[key] = rope_tables(positions, self.hd, start=0, theta=theta, device=device)
        self.rope_cache = made[key]

    def _rope_tables(self, start: int | torch.Tensor, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (1, T, 1, hd/2) at positions start..start+T: sliced from `reach`'s where they cover them
        (the same values: positions are whole numbers, exact in float32), else made here."""
        have = self.rope_cache
        if have is not None and isinstance(start, int) and have[0].device == device and start + T <= have[0].shape[1]:
            return have[0][:, start : start + T], have[1][:, start : start + T]
        return rope_tables(T, self.hd, start=start, theta=self.cfg.rope_theta, device=device)

    @staticmethod
    def _through_ring(state: KVCache, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Sliding window: the cached keys (the last min(length, S) tokens) then this call's k, v
        (B, T, Hkv, hd); the cache keeps the last S of them. Returns the keys, values and how many
        came from the cache (the mask's offset: distances, and so the window, are kept)."""
        size, T = state.k.shape[1], k.shape[1]
        cached = min(state.length, size)
        keys = torch.cat([state.k[:, size - cached :].to(k.dtype), k], dim=1)  # (B, cached + T, Hkv, hd)
        values = torch.cat([state.v[:, size - cached :].to(v.dtype), v], dim=1)
        keep = min(size, cached + T)
        state.k[:, size - keep :] = keys[:, -keep:].to(state.k.dtype)
        state.v[:, size - keep :] = values[:, -keep:].to(state.v.dtype)
        state.length += T
        return keys, values, cached

    def _step_on_device(self, state: KVCache, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One token at the cache's device position, no host value involved: its key and value go to
        slot position (mod S in a ring), and the query attends every slot holding a visible position.
        q (B, 1, H, hd), k and v (B, 1, Hkv, hd) -> (B, 1, H, hd).

        One query token needs no causal order among heads, so the H / Hkv query heads sharing a K/V head
        are laid along SDPA's query axis: grouped-query attention with no copy of the cache, and a mask,
        which SDPA's automatic choice runs (memory-efficient on CUDA) whatever `backend` says."""
        B, size, pos = q.shape[0], state.k.shape[1], state.position  # pos (1,)
        slot = pos % size if state.ring else pos
        state.k.index_copy_(1, slot, k.to(state.k.dtype))
        state.v.index_copy_(1, slot, v.to(state.v.dtype))
        held = torch.arange(size, device=pos.device)  # (S,) the position each slot holds
        if state.ring:
            held = pos - (slot - held) % size  # the last S positions; negative: never written
        visible = (held >= 0) & (held <= pos)  # (S,)
        if self.cfg.window is not None:
            visible &= held > pos - self.cfg.window
        group = self.n_heads // self.n_kv
        y = F.scaled_dot_product_attention(
            q.view(B, self.n_kv, group, self.hd),  # (B, Hkv, H/Hkv, hd): query head h sits with K/V head h // group
            state.k.transpose(1, 2).to(q.dtype), state.v.transpose(1, 2).to(q.dtype),  # (B, Hkv, S, hd)
            attn_mask=visible[None, :],  # (1, S)
        )  # (B, Hkv, H/Hkv, hd)
        state.position.add_(1)
        return y.reshape(B, 1, self.n_heads, self.hd)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, q_offset: int) -> torch.Tensor:
        """q (B, T, H, hd), k and v (B, S, Hkv, hd) with S = q_offset + T -> (B, T, H, hd)."""
        window = self.cfg.window
        if self.cfg.backend == "flash_attn":
            # flash-attn aligns the causal mask bottom-right when S > T, as a KV cache needs.
            size = (window - 1, 0) if window is not None else (-1, -1)
            return _flash_attn_func()(q, k, v, causal=True, window_size=size)
        if window is not None and q_offset == 0 and q.shape[1] >= 2 * window:
            return self._attend_blocks(q, k, v, window)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd)
        mask = None
        if window is not None or q_offset > 0:
            mask = causal_mask(q.shape[2], k.shape[2], q_offset=q_offset, window=window, device=q.device)
        return self._sdpa(q, k, v, mask).transpose(1, 2)  # (B, T, H, hd)

    def _attend_blocks(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
        """Sliding window over a whole sequence in O(T · window): queries in blocks of `window`, each block
        attending its own block and the one before (2 · window keys, the band masked), the blocks laid
        along the batch axis. A dense T × T mask computed every pair (0.45x full attention's prefill at
        32K on the H200). q (B, T, H, hd), k and v (B, T, Hkv, hd) -> (B, T, H, hd)."""
        B, T, H, hd = q.shape
        n = -(-T // window)  # blocks
        pad = n * window - T
        q = F.pad(q, (0, 0, 0, 0, 0, pad)).view(B * n, window, H, hd).transpose(1, 2)  # (B·n, H, w, hd)

        def blocks(x: torch.Tensor) -> torch.Tensor:  # (B, T, Hkv, hd) -> (B·n, Hkv, 2w, hd): previous + own block
            x = F.pad(x, (0, 0, 0, 0, window, pad)).view(B, n + 1, window, *x.shape[2:])  # (B, n+1, w, Hkv, hd)
            return torch.cat([x[:, :-1], x[:, 1:]], dim=2).flatten(0, 1).transpose(1, 2)

        i = torch.arange(window, device=q.device)[:, None]  # query i of a block
        j = torch.arange(2 * window, device=q.device)[None, :]  # key j: the previous block, then its own
        mask = ((j > i) & (j <= i + window)).expand(n, window, 2 * window).clone()  # (n, w, 2w)
        mask[0, :, :window] = False  # the first block has no previous block (padding)
        mask = mask.repeat(B, 1, 1)[:, None]  # (B·n, 1, w, 2w)
        y = self._sdpa(q, blocks(k), blocks(v), mask)  # (B·n, H, w, hd)
        return y.transpose(1, 2).reshape(B, n * window, H, hd)[:, :T]

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """SDPA on the configured backend: q (N, H, T, hd), k and v (N, Hkv, S, hd), mask None (causal) or
        (.., T, S) bool -> (N, H, T, hd)."""
        backend = self.cfg.backend
        gqa = self.n_kv != self.n_heads
        if gqa and backend in ("efficient", "cudnn"):  # backends without native GQA: share K/V heads by copy
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            gqa = False
        kwargs = dict(attn_mask=mask, is_causal=mask is None, enable_gqa=gqa)
        if backend == "auto" or (backend == "math" and q.device.type != "cuda"):
            y = F.scaled_dot_product_attention(q, k, v, **kwargs)
        else:
            if q.device.type != "cuda":
                raise KernelUnavailableError(
                    f"attention backend {backend!r} needs CUDA; on {q.device.type} use backend=auto or math"
                )
            if backend in ("flash", "cudnn") and q.dtype not in (torch.float16, torch.bfloat16):
                raise KernelUnavailableError(
                    f"attention backend {backend!r} takes bf16 or fp16, got {q.dtype} (run under bf16 autocast, "
                    "trainer.precision=bf16, or use backend=auto|efficient|math)"
                )
            from torch.nn.attention import SDPBackend, sdpa_kernel

            chosen = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
                      "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
            with sdpa_kernel([chosen]):
                y = F.scaled_dot_product_attention(q, k, v, **kwargs)
        return y

    def describe_impl(self, device: torch.device) -> str:
        return "flash-attn" if self.cfg.backend == "flash_attn" else f"sdpa:{self.cfg.backend}"

    def allocate_state(self, *, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """The KV cache of `max_len` tokens; with a window shorter than that, a ring of `window` (its
        size no longer grows with the context, as the accounting's state_bytes counts)."""
        window = self.cfg.window
        ring = window is not None and window < max_len
        shape = (batch_size, window if ring else max_len, self.n_kv, self.hd)
        return KVCache(k=torch.zeros(shape, device=device, dtype=dtype), v=torch.zeros(shape, device=device, dtype=dtype),
                       ring=ring)

    def init_weights(self, *, std: float, out_std: float) -> None:
        nn.init.normal_(self.qkv.weight, std=std)
        nn.init.normal_(self.out_proj.weight, std=out_std)
        for norm in (self.q_norm, self.k_norm):
            if norm is not None:
                nn.init.ones_(norm.weight)
