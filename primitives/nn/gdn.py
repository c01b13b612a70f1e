"""Gated DeltaNet mixer (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks", arXiv 2412.06464),
as Qwen3-Next uses it: the token mixer `G`.

    x -> in_proj -> [q | k | v | z | b | a]
         [q | k | v] -> causal depthwise conv1d -> SiLU;  q, k L2-normalised per head, q scaled by d_k^-1/2
         beta = sigmoid(b)                                        write strength, per value head
         g = -exp(A_log) * softplus(a + dt_bias)                  log-decay (alpha = exp(g)), per value head
         o = gated delta rule(q, k, v, g, beta)
         o = rmsnorm(o) * norm_weight * silu(z)  (per head)  -> out_proj

The gated delta rule, per value head, with a d_k × d_v state S (each group of v_head_ratio value
heads reads one query/key head):
    S_t = alpha_t (I - beta_t k_t k_tᵀ) S_{t-1} + beta_t k_t v_tᵀ        o_t = S_tᵀ q_t
`gated_delta_rule_sequential` runs it step by step (the tests' oracle, and one decoding step);
`gated_delta_rule_chunked` computes it by blocks. Inside a chunk, with Γ_i the decay from the chunk
start to step i and S_0 the state entering it, the writes w_i in S_i = Γ_i S_0 + Σ_{j<=i} (Γ_i/Γ_j) k_j w_jᵀ
solve a unit lower triangular system (the UT transform of the WY representation):
    (I + A) W = βV − (βΓ K) S_0,   A_ij = β_i (Γ_i/Γ_j) k_i·k_j for j < i,
so W = U − W_k S_0 with U = (I + A)⁻¹ βV and W_k = (I + A)⁻¹ βΓK, both computed for every chunk at
once; only the cheap state passing (three d_k × d_v products per step) runs chunk after chunk.

On CUDA, with flash-linear-attention (`fla`) installed, the rule runs through its Triton kernels
instead (its chunked kernel for training and prefill, its recurrent one for single decoding steps
without autograd; its causal_conv1d for the short conv where no state is carried), called as fla's
own layer calls them; which path runs is chosen explicitly (`impl`) and logged. fla's backward computes wrong
gradients on Hopper with Triton 3.4.0 ≤ version < 3.7.1 unless tilelang is installed (fla issue
#640): `impl=auto` falls back to the torch path there and says why, `impl=kernels` refuses. fla
tunes each kernel for every new shape and dtype on first use (on an H200, 1-2 s per configuration
tried, minutes for a first bf16 forward and backward: 2026-12-05); Triton keeps the results on disk
where TRITON_CACHE_AUTOTUNING=1, which composer's entry points set unless it is set already.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from composer.errors import KernelUnavailableError
from primitives.gdn import GatedDeltaNetConfig
from primitives.nn.conv import causal_conv_silu
from primitives.nn.mamba2 import init_decay_, pad_time, scan_dtype, segsum
from primitives.nn.once import load_once, log_impl_once

log = logging.getLogger(__name__)

_NORM_EPS = 1e-5  # the gated RMSNorm
_L2_EPS = 1e-6  # q and k L2 norms, as fla's l2norm (use_qk_l2norm_in_kernel)
_INSTALL_HINT = "pip install 'composer-hybrid[fla]' (or pip install flash-linear-attention)"
_SAFE_TRITON = (3, 7, 1)  # fla #640: Triton 3.4.0 up to here gives wrong gated backward gradients on Hopper
_BAD_TRITON = (3, 4, 0)
_FLA_MIN = (0, 6, 0)  # the fla composer's kernel path is written and checked against (its layer's call convention)


@dataclass
class GatedDeltaNetState:
    """What one Gated DeltaNet layer carries between decoding calls: constant size, whatever the length."""

    conv: Tensor  # (B, conv_dim, d_conv - 1): the last conv inputs
    recurrent: Tensor  # (B, H_v, d_k, d_v): the delta-rule state, float32 or wider


def gated_delta_rule_step(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """One step: q, k (b, h, d_k), v (b, h, d_v), g and beta (b, h), state (b, h, d_k, d_v).

    Returns the output (b, h, d_v) and the new state. Three d_k × d_v products, as counted in
    GatedDeltaNetConfig.inference_flops_per_token: the read Sᵀk, the rank-1 write and the readout Sᵀq.
    """
    state = state * torch.exp(g)[..., None, None]  # (b, h, d_k, d_v): forget
    write = (v - torch.einsum("bhkv,bhk->bhv", state, k)) * beta[..., None]  # (b, h, d_v): the delta
    state = state + k[..., :, None] @ write[..., None, :]  # (b, h, d_k, d_v): rank-1 write, a matmul
    return torch.einsum("bhkv,bhk->bhv", state, q), state


def gated_delta_rule_sequential(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, *, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The rule one step at a time (slow; the tests' oracle). q, k (b, t, h, d_k), v (b, t, h, d_v),
    g and beta (b, t, h). Returns o (b, t, h, d_v) and the final state (b, h, d_k, d_v)."""
    b, t, h, dk = k.shape
    state = k.new_zeros(b, h, dk, v.shape[-1]) if initial_state is None else initial_state
    outs = []
    for i in range(t):
        o, state = gated_delta_rule_step(q[:, i], k[:, i], v[:, i], g[:, i], beta[:, i], state)
        outs.append(o)
    return torch.stack(outs, dim=1), state


def gated_delta_rule_chunked(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, *, chunk_size: int, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The rule by blocks (see the module docstring). Shapes and results as `gated_delta_rule_sequential`."""
    b, t, h, dk = k.shape
    dv = v.shape[-1]
    pad = -t % chunk_size  # padded steps have g = 0 and beta = 0: no decay, no write, so the final state is exact
    q, k, v, g, beta = (pad_time(x, pad) for x in (q, k, v, g, beta))
    c, L = (t + pad) // chunk_size, chunk_size
    q, k, v = (x.reshape(b, c, L, h, -1).permute(0, 3, 1, 2, 4) for x in (q, k, v))  # (b, h, c, L, ·)
    g, beta = (x.reshape(b, c, L, h).permute(0, 3, 1, 2) for x in (g, beta))  # (b, h, c, L)

    seg = segsum(g)  # (b, h, c, L, L): log-decay from step j to step i
    decay = torch.exp(seg)  # (b, h, c, L, L): Γ_i / Γ_j on and below the diagonal, 0 above
    into = torch.exp(g.cumsum(dim=-1))  # (b, h, c, L): Γ_i, decay from the chunk start through step i

    # 1. Every chunk at once: the UT transform. A is strictly lower; the solve takes its diagonal as 1.
    kk = torch.einsum("bhcid,bhcjd->bhcij", k, k)  # (b, h, c, L, L)
    A = (kk * decay * beta[..., None]).tril(-1)  # (b, h, c, L, L)
    rhs = torch.cat([v * beta[..., None], k * (beta * into)[..., None]], dim=-1)  # (b, h, c, L, d_v + d_k)
    u, w_k = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True).split([dv, dk], dim=-1)
    scores = torch.einsum("bhcid,bhcjd->bhcij", q, k) * decay  # (b, h, c, L, L): causal, decayed
    q_in = q * into[..., None]  # (b, h, c, L, d_k): queries reading the entering state
    k_out = k * decay[..., -1, :, None]  # (b, h, c, L, d_k): keys decayed to the chunk end
    chunk_decay = into[..., -1]  # (b, h, c): Γ_L

    # 2. Chunk after chunk: the state passing. Without an initial state nothing enters the first chunk: its terms of
    # the entering state are left out (they are zeros: the same results bit for bit, in fewer kernels).
    state = None if initial_state is None else initial_state.to(k.dtype)
    outs = []
    for i in range(c):
        w = u[:, :, i] if state is None else u[:, :, i] - w_k[:, :, i] @ state  # (b, h, L, d_v): the chunk's writes
        within = scores[:, :, i] @ w  # (b, h, L, d_v)
        outs.append(within if state is None else q_in[:, :, i] @ state + within)
        written = k_out[:, :, i].transpose(-1, -2) @ w  # (b, h, d_k, d_v)
        state = written if state is None else state * chunk_decay[:, :, i, None, None] + written
    o = torch.stack(outs, dim=2)  # (b, h, c, L, d_v)
    return o.permute(0, 2, 3, 1, 4).reshape(b, c * L, h, dv)[:, :t], state


def _version_tuple(version: str) -> tuple[int, ...]:
    """'3.6.0' -> (3, 6, 0); '3.7.1+git1234' -> (3, 7, 1); missing parts count as 0."""
    match = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part or 0) for part in match.groups())


def gdn_kernels_unsafe(capability: tuple[int, int], triton_version: str, has_tilelang: bool) -> str | None:
    """Why fla's Gated DeltaNet kernels would compute wrong gradients here, or None when they are safe.

    fla issue #640: on Hopper (compute capability 9.x), Triton 3.4.0 up to (not including) 3.7.1
    miscompiles the gated chunk backward (chunk_bwd_dqkwg); fla then needs its tilelang backend.
    """
    if capability[0] != 9 or has_tilelang:
        return None
    if _BAD_TRITON <= _version_tuple(triton_version) < _SAFE_TRITON:
        return (
            f"fla's backward gives wrong gradients on Hopper (sm_{capability[0]}{capability[1]}) with triton "
            f"{triton_version} < 3.7.1 (fla #640); install tilelang or triton >= 3.7.1"
        )
    return None


def _import_kernels() -> tuple[Callable, Callable, Callable] | str:
    try:
        import fla

        # Older fla takes the raw gates (use_gate_in_kernel, ...) into **kwargs or not at all: it would read
        # them as decays, silently. The pyproject extra asks for 0.6; checked here for any other install.
        if _version_tuple(fla.__version__) < _FLA_MIN:
            return (f"fla {fla.__version__} is older than {'.'.join(map(str, _FLA_MIN))} (composer calls fla's "
                    "kernels as fla 0.6's own layer does)")
        from fla.modules.causal_conv1d import causal_conv1d
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    except (ImportError, OSError, RuntimeError) as exc:  # RuntimeError: fla's import-time device checks
        return f"fla not installed: {exc}"
    return chunk_gated_delta_rule, fused_recurrent_gated_delta_rule, causal_conv1d


def _load_kernels() -> tuple[Callable, Callable, Callable] | str:
    """(chunk_gated_delta_rule, fused_recurrent_gated_delta_rule, causal_conv1d), or why they cannot be
    imported; imported once."""
    return load_once("gdn.fla", _import_kernels)


def _check_unsafe_on(device_index: int) -> str | None:
    import triton  # fla depends on it: present once _load_kernels succeeded

    has_tilelang = importlib.util.find_spec("tilelang") is not None
    return gdn_kernels_unsafe(torch.cuda.get_device_capability(device_index), triton.__version__, has_tilelang)


def _kernels_unsafe_on(device_index: int) -> str | None:
    """Why fla's backward is unsafe on that GPU, or None; checked once."""
    return load_once(("gdn.unsafe", device_index), lambda: _check_unsafe_on(device_index))


class GatedDeltaNet(nn.Module):
    """The Gated DeltaNet mixer: (B, T, d_model) -> (B, T, d_model); see the module docstring."""

    def __init__(self, cfg: GatedDeltaNetConfig, *, d_model: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_heads, self.n_v_heads = cfg.n_qk_heads(d_model), cfg.n_v_heads(d_model)
        self.key_dim, self.value_dim, conv_dim = cfg.key_dim(d_model), cfg.value_dim(d_model), cfg.conv_dim(d_model)
        # Import and check here, outside compiled code: forward under torch.compile only reads the results.
        if cfg.impl != "torch" and torch.cuda.is_available() and not isinstance(_load_kernels(), str):
            _kernels_unsafe_on(torch.cuda.current_device())
        if cfg.impl == "kernels" and isinstance(reason := _load_kernels(), str):
            raise KernelUnavailableError(f"gdn.impl='kernels' but {reason}; install with {_INSTALL_HINT}")
        self.in_proj = nn.Linear(d_model, cfg.proj_dim(d_model), bias=False)  # q, k, v, z, b, a
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, cfg.d_conv, groups=conv_dim, bias=False)  # depthwise, causal by padding
        self.A_log = nn.Parameter(torch.empty(self.n_v_heads))  # A = -exp(A_log) < 0: the state always decays
        self.dt_bias = nn.Parameter(torch.empty(self.n_v_heads))
        for p in (self.A_log, self.dt_bias):
            p._no_weight_decay = True  # decaying them would pull the dynamics towards A = -1, dt = log 2
        self.norm_weight = nn.Parameter(torch.empty(cfg.head_v_dim))  # one per channel, shared by the heads
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)
        self.init_weights(std=0.02, out_std=0.02)

    def init_weights(self, *, std: float, out_std: float) -> None:
        cfg = self.cfg
        nn.init.normal_(self.in_proj.weight, std=std)
        nn.init.normal_(self.out_proj.weight, std=out_std)
        self.conv1d.reset_parameters()  # kaiming uniform
        with torch.no_grad():
            init_decay_(self.A_log, self.dt_bias, cfg)
            self.norm_weight.fill_(1.0)

    def _resolve(self, device: torch.device, *, grad: bool = True) -> tuple[bool, str]:
        """(run the fla kernels?, a description for the logs and the run folder), with autograd on or off:
        where fla's backward is wrong (fla #640) its forward is right, so `auto` takes it without autograd
        (evaluation, prefill, decoding) and trains on the torch path."""
        if self.cfg.impl == "torch":
            return False, "torch (impl='torch')"
        if self.cfg.impl == "auto":
            if device.type != "cuda":
                return False, f"torch ({device.type})"
            if isinstance(reason := _load_kernels(), str):
                return False, f"torch ({reason})"
        if device.type == "cuda" and (reason := _kernels_unsafe_on(device.index or 0)) is not None:
            if self.cfg.impl == "kernels":
                raise KernelUnavailableError(f"gdn.impl='kernels' refused: {reason}")
            return (False, f"torch ({reason})") if grad else (True, "fla (without autograd; training runs torch)")
        return True, "fla"  # impl='kernels' off CUDA fails at forward

    def describe_impl(self, device: torch.device | str) -> str:
        """What training runs on `device`, and what runs without autograd where that differs."""
        device = torch.device(device)
        train, inference = self._resolve(device)[1], self._resolve(device, grad=False)[1]
        return train if inference == train else f"{train}; without autograd: fla"

    def allocate_state(
        self, *, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> GatedDeltaNetState:
        # max_len is unused: the state has the same size at any length.
        conv_dim, width = self.conv1d.in_channels, self.cfg.d_conv - 1
        dk, dv = self.cfg.head_dim, self.cfg.head_v_dim
        return GatedDeltaNetState(
            conv=torch.zeros(batch_size, conv_dim, width, device=device, dtype=dtype),
            recurrent=torch.zeros(batch_size, self.n_v_heads, dk, dv, device=device, dtype=scan_dtype(dtype)),
        )

    def forward(self, x: Tensor, state: GatedDeltaNetState | None = None) -> Tensor:
        device = self.in_proj.weight.device
        use_kernels, description = self._resolve(device, grad=torch.is_grad_enabled())
        log_impl_once(self, log, "gdn mixer runs %s", description)
        # Decoding with a state takes the kernels only without autograd: fla's recurrent kernel has no backward.
        if use_kernels and (state is None or not torch.is_grad_enabled()):
            if device.type != "cuda":
                raise KernelUnavailableError(f"gdn.impl='kernels' runs on CUDA only, parameters are on {device}")
            return self._forward_kernels(x, state)
        return self._forward_torch(x, state)

    def _project(
        self, x: Tensor, state: GatedDeltaNetState | None, conv: Callable | None = None
    ) -> tuple[Tensor, ...]:
        """in_proj and the short conv: q, k (B, T, H, d_k), v (B, T, H_v, d_v), z (B, T, V), b and a (B, T, H_v).
        `conv`: fla's causal_conv1d, which runs it on (B, T, C) with the SiLU fused (without a state only)."""
        cfg, (bsz, t, _) = self.cfg, x.shape
        qkv, z, b, a = self.in_proj(x).split([self.conv1d.in_channels, self.value_dim, self.n_v_heads, self.n_v_heads], dim=-1)
        if conv is not None and state is None:
            qkv = conv(x=qkv, weight=self.conv1d.weight.squeeze(1), activation="silu")[0]  # (B, T, conv_dim)
        else:
            qkv = causal_conv_silu(qkv, self.conv1d.weight, None, None if state is None else state.conv)  # (B, T, conv_dim)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q, k = (y.reshape(bsz, t, self.n_heads, cfg.head_dim) for y in (q, k))  # (B, T, H, d_k)
        return q, k, v.reshape(bsz, t, self.n_v_heads, cfg.head_v_dim), z, b, a

    def _gates(self, b: Tensor, a: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """beta (write strength) and g (log-decay), (B, T, H_v), in `dtype`."""
        beta = torch.sigmoid(b.to(dtype))
        g = -torch.exp(self.A_log.to(dtype)) * F.softplus(a.to(dtype) + self.dt_bias.to(dtype))
        return beta, g

    def _gated_norm_out(self, o: Tensor, z: Tensor, dtype: torch.dtype) -> Tensor:
        """o (B, T, H_v, d_v): per-head RMSNorm, then the SiLU output gate, then out_proj."""
        bsz, t = o.shape[:2]
        sdtype = scan_dtype(dtype)
        o = o.to(sdtype)
        o = o * torch.rsqrt(o.pow(2).mean(dim=-1, keepdim=True) + _NORM_EPS) * self.norm_weight.to(sdtype)
        o = o * F.silu(z.to(sdtype).reshape(o.shape))  # (B, T, H_v, d_v)
        return self.out_proj(o.reshape(bsz, t, self.value_dim).to(dtype))  # (B, T, D)

    def _forward_torch(self, x: Tensor, state: GatedDeltaNetState | None) -> Tensor:
        cfg, t = self.cfg, x.shape[1]
        q, k, v, z, b, a = self._project(x, state)
        sdtype = scan_dtype(x.dtype)  # the rule in float32 at least: decays compound over thousands of steps
        with torch.autocast(x.device.type, enabled=False):
            q, k, v = q.to(sdtype), k.to(sdtype), v.to(sdtype)
            q = q * torch.rsqrt(q.pow(2).sum(dim=-1, keepdim=True) + _L2_EPS) * cfg.head_dim**-0.5
            k = k * torch.rsqrt(k.pow(2).sum(dim=-1, keepdim=True) + _L2_EPS)
            q, k = (y.repeat_interleave(cfg.v_head_ratio, dim=2) for y in (q, k))  # (B, T, H_v, d_k)
            beta, g = self._gates(b, a, sdtype)  # (B, T, H_v)
            initial = None if state is None else state.recurrent.to(sdtype)
            if state is not None and t == 1:  # a decoding step: the recurrence itself
                o, final = gated_delta_rule_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], initial)
                o = o[:, None]  # (B, 1, H_v, d_v)
            else:
                o, final = gated_delta_rule_chunked(
                    q, k, v, g, beta, chunk_size=min(cfg.chunk_size, t), initial_state=initial
                )  # (B, T, H_v, d_v)
        if state is not None:
            state.recurrent.copy_(final.detach())
        return self._gated_norm_out(o, z, x.dtype)

    def _forward_kernels(self, x: Tensor, state: GatedDeltaNetState | None = None) -> Tensor:
        """fla's chunked kernel (training, prefill), or its recurrent one for single decoding steps; as fla's
        own layer calls them (fla 0.6, layers/gated_deltanet.py): the short conv as its Triton causal_conv1d,
        the gates and q, k's L2 norms inside the kernel, the state stored value-major."""
        chunk_gated_delta_rule, fused_recurrent_gated_delta_rule, causal_conv1d = _load_kernels()
        cfg, t = self.cfg, x.shape[1]
        q, k, v, z, b, a = self._project(x, state, conv=causal_conv1d)
        # q, k (B, T, H, d_k) as they are: fla reads qk head h // (H_v / H) for value head h (its "GVA"), the
        # torch path's repeat_interleave, without the copies
        rule = fused_recurrent_gated_delta_rule if state is not None and t == 1 else chunk_gated_delta_rule
        o, final = rule(
            q.contiguous(), k.contiguous(), v.contiguous(),  # one dtype: bf16 under autocast
            g=a,  # raw: the kernel computes g = -exp(A_log) * softplus(a + dt_bias) in fp32, as _gates
            beta=b,  # raw: sigmoid in the kernel
            scale=cfg.head_dim**-0.5,
            initial_state=None if state is None else state.recurrent.float().transpose(-1, -2).contiguous(),
            output_final_state=state is not None,
            use_qk_l2norm_in_kernel=True,
            use_gate_in_kernel=True,
            A_log=self.A_log,
            dt_bias=self.dt_bias,
            use_beta_sigmoid_in_kernel=True,
            state_v_first=True,  # (B, H_v, d_v, d_k): fla's layout; composer's state is (B, H_v, d_k, d_v)
        )  # (B, T, H_v, d_v)
        if state is not None:
            state.recurrent.copy_(final.detach().transpose(-1, -2))
        return self._gated_norm_out(o, z, x.dtype)
