"""Mamba-2 SSD mixer (Dao & Gu 2024, "Transformers are SSMs", arXiv 2405.21060): the token mixer `M`.

    x -> in_proj -> [z | xBC | dt]
         xBC -> causal depthwise conv1d -> SiLU -> [x | B | C]
         y = SSD scan(x, softplus(dt + dt_bias), A = -exp(A_log), B, C) + D * x
         y = rmsnorm(y * silu(z)) * norm_weight -> out_proj

The scan is the selective state-space recurrence, per head h (B and C shared by the heads of a group):
    state_t = exp(dt_t * A_h) * state_{t-1} + dt_t * x_t ⊗ B_t        y_t = C_t · state_t
`ssd_chunked` computes it with the paper's block decomposition (quadratic inside chunks, a linear
recurrence across them) in plain PyTorch; `ssd_sequential` is the step-by-step loop the tests use as
the oracle. On CUDA, with mamba-ssm and causal-conv1d installed, the same parameters run through their
fused kernels instead; which one runs is chosen explicitly (`impl`) and logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from composer.errors import ConfigError, KernelUnavailableError
from primitives.mamba2 import Mamba2Config
from primitives.nn.conv import causal_conv_silu
from primitives.nn.once import load_once, log_impl_once

log = logging.getLogger(__name__)

_NORM_EPS = 1e-5
_INSTALL_HINT = "pip install 'composer-hybrid[cuda]' (or pip install mamba-ssm causal-conv1d --no-build-isolation)"


@dataclass
class Mamba2State:
    """What one Mamba-2 layer carries between decoding calls: constant size, whatever the length."""

    conv: Tensor  # (B, conv_dim, d_conv - 1): the last conv inputs
    ssm: Tensor  # (B, H, P, N): the recurrent state, float32 or wider


def segsum(a: Tensor) -> Tensor:
    """S[..., i, j] = a[..., j+1] + ... + a[..., i] for i >= j, and -inf above the diagonal.

    The terms are summed directly, not as cumsum[i] - cumsum[j], so no large partial sums cancel.
    """
    n = a.shape[-1]
    ones = torch.ones(n, n, dtype=torch.bool, device=a.device)
    terms = a[..., :, None].expand(*a.shape, n)  # (..., n, n): [i, j] = a_i
    sums = terms.masked_fill(~torch.tril(ones, diagonal=-1), 0).cumsum(dim=-2)  # sum over j < k <= i
    return sums.masked_fill(~torch.tril(ones), float("-inf"))


def pad_time(t: Tensor, pad: int) -> Tensor:
    return F.pad(t, (0, 0) * (t.ndim - 2) + (0, pad)) if pad else t  # zeros after the end of dim 1


def ssd_chunked(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, chunk_size: int, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The SSD scan by blocks: x (b, t, h, p), dt (b, t, h) after softplus, A (h,), B and C (b, t, g, n).

    Returns y (b, t, h, p), without the D skip, and the final state (b, h, p, n).
    """
    b, t, h, p = x.shape
    g, n = B.shape[-2:]
    k = h // g  # heads per group: head i reads group i // k
    pad = -t % chunk_size  # padded steps have dt = 0: no decay, no input, so the final state is exact
    x, dt, B, C = (pad_time(v, pad) for v in (x, dt, B, C))
    c, L = (t + pad) // chunk_size, chunk_size
    B, C = (v.reshape(b, c, L, g, n) for v in (B, C))  # (b, c, L, g, n)
    dt = dt.reshape(b, c, L, h)  # (b, c, L, h)
    a = (dt * A).permute(0, 3, 1, 2)  # (b, h, c, L): log-decay of each step, <= 0
    xdt = (x.reshape(b, c, L, h, p) * dt[..., None]).reshape(b, c, L, g, k, p)  # what each step writes into the state

    # 1. Inside each chunk: the masked quadratic form, like causal attention with decaying scores. C.B is the same for
    # the heads of a group: computed once per group, then decayed per head.
    decay = torch.exp(segsum(a)).reshape(b, g, k, c, L, L)  # [.., i, j] = decay from step j to step i
    scores = torch.einsum("bclgn,bcsgn->bgcls", C, B)[:, :, None] * decay  # (b, g, k, c, L, L)
    y = torch.einsum("bgkcls,bcsgkp->bclgkp", scores, xdt)  # (b, c, L, g, k, p)

    # 2. What each chunk alone leaves in the state at its end (the last row of `decay`).
    states = torch.einsum("bgkcl,bclgn,bclgkp->bcgkpn", decay[..., -1, :], B, xdt).reshape(b, c, h, p, n)
    if c == 1 and initial_state is None:  # one chunk from a zero state: nothing enters it; it leaves the final state
        return y.reshape(b, L, h, p)[:, :t], states[:, 0]  # what 3 and 4 give, bit for bit, in fewer kernels

    # 3. Across chunks: the same recurrence at chunk granularity, as one (c+1) x (c+1) decay matrix.
    if initial_state is None:
        initial_state = x.new_zeros(b, h, p, n)
    states = torch.cat([initial_state[:, None].to(states.dtype), states], dim=1)  # (b, c+1, h, p, n)
    chunk_decay = torch.exp(segsum(F.pad(a.sum(dim=-1), (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)  # (b, c+1, h, p, n): entering chunk z

    # 4. The state entering each chunk, decayed to each step and read out by C.
    into_step = torch.exp(a.cumsum(dim=-1)).reshape(b, g, k, c, L)  # decay from the chunk start to step l
    entering = states[:, :-1].reshape(b, c, g, k, p, n)
    y = y + torch.einsum("bclgn,bcgkpn,bgkcl->bclgkp", C, entering, into_step)  # (b, c, L, g, k, p)
    return y.reshape(b, c * L, h, p)[:, :t], states[:, -1]


def ssd_step(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the recurrence: x (b, h, p), dt (b, h), A (h,), B and C (b, h, n) (one group per head),
    state (b, h, p, n) -> (y (b, h, p), the new state). A decoding step takes it: a handful of operations
    where the chunked form at length 1 runs its whole block machinery (each one a kernel in a decode graph)."""
    decay = torch.exp(dt * A)[..., None, None]  # (b, h, 1, 1)
    state = decay * state + (dt[..., None] * x)[..., None] * B[:, :, None, :]  # (b, h, p, n)
    return (state @ C[..., None]).squeeze(-1), state  # (b, h, p)


def ssd_sequential(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The same scan one step at a time (slow; the tests' oracle). Shapes as in `ssd_chunked`."""
    b, t, h, p = x.shape
    g, n = B.shape[-2:]
    B, C = (v.repeat_interleave(h // g, dim=2) for v in (B, C))  # (b, t, h, n)
    state = x.new_zeros(b, h, p, n) if initial_state is None else initial_state
    ys = []
    for i in range(t):
        y, state = ssd_step(x[:, i], dt[:, i], A, B[:, i], C[:, i], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def _import_kernels() -> tuple[Callable, Callable] | str:
    try:
        from causal_conv1d import causal_conv1d_fn
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except (ImportError, OSError) as exc:  # OSError: installed, but its compiled library fails to load
        return f"mamba-ssm not installed: {exc}"
    return causal_conv1d_fn, mamba_chunk_scan_combined


def _load_kernels() -> tuple[Callable, Callable] | str:
    """(causal_conv1d_fn, mamba_chunk_scan_combined), or why they cannot be imported; imported once."""
    return load_once("mamba2.kernels", _import_kernels)


class Mamba2(nn.Module):
    """The Mamba-2 mixer: (B, T, d_model) -> (B, T, d_model); see the module docstring."""

    def __init__(self, cfg: Mamba2Config, *, d_model: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_inner, self.n_heads, conv_dim = cfg.d_inner(d_model), cfg.n_heads(d_model), cfg.conv_dim(d_model)
        if cfg.impl != "torch" and torch.cuda.is_available():
            _load_kernels()  # import here, outside compiled code: forward under torch.compile only reads the result
        if cfg.impl == "kernels":
            if isinstance(reason := _load_kernels(), str):
                raise KernelUnavailableError(f"mamba2.impl='kernels' but {reason}; install with {_INSTALL_HINT}")
            if not 2 <= cfg.d_conv <= 4:
                raise ConfigError(f"mamba2.impl='kernels' needs d_conv in 2..4 (causal-conv1d), got {cfg.d_conv}")
        self.in_proj = nn.Linear(d_model, self.d_inner + conv_dim + self.n_heads, bias=False)  # z, xBC, dt
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, cfg.d_conv, groups=conv_dim)  # depthwise, causal by padding
        self.A_log = nn.Parameter(torch.empty(self.n_heads))  # A = -exp(A_log) < 0: the state always decays
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))  # skip connection around the scan
        for p in (self.A_log, self.dt_bias, self.D):
            p._no_weight_decay = True  # decaying them would pull dynamics towards A = -1, dt = log 2
        self.norm_weight = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.init_weights(std=0.02, out_std=0.02)

    def init_weights(self, *, std: float, out_std: float) -> None:
        cfg = self.cfg
        nn.init.normal_(self.in_proj.weight, std=std)
        nn.init.normal_(self.out_proj.weight, std=out_std)
        self.conv1d.reset_parameters()  # kaiming uniform
        with torch.no_grad():
            init_decay_(self.A_log, self.dt_bias, cfg)
            self.D.fill_(1.0)
            self.norm_weight.fill_(1.0)

    def _resolve(self, device: torch.device) -> tuple[bool, str]:
        """(run the mamba-ssm kernels?, a description for the logs and the run folder)."""
        if self.cfg.impl == "torch":
            return False, "torch (impl='torch')"
        if self.cfg.impl == "kernels":
            return True, "mamba-ssm"  # availability was checked at construction, the device at forward
        if device.type != "cuda":
            return False, f"torch ({device.type})"
        if not 2 <= self.cfg.d_conv <= 4:
            return False, f"torch (causal-conv1d needs d_conv in 2..4, got {self.cfg.d_conv})"
        if isinstance(reason := _load_kernels(), str):
            return False, f"torch ({reason})"
        return True, "mamba-ssm"

    def describe_impl(self, device: torch.device | str) -> str:
        return self._resolve(torch.device(device))[1]

    def allocate_state(
        self, *, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> Mamba2State:
        # max_len is unused: the state has the same size at any length.
        conv_dim, width = self.conv1d.in_channels, self.cfg.d_conv - 1
        n, p = self.cfg.d_state, self.cfg.head_dim
        return Mamba2State(
            conv=torch.zeros(batch_size, conv_dim, width, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.n_heads, p, n, device=device, dtype=scan_dtype(dtype)),
        )

    def forward(self, x: Tensor, state: Mamba2State | None = None) -> Tensor:
        device = self.in_proj.weight.device
        use_kernels, description = self._resolve(device)
        log_impl_once(self, log, "mamba2 mixer runs %s", description)
        if use_kernels and (state is None or x.shape[1] > 1):  # a decoding step (one token) is the torch recurrence
            if device.type != "cuda":
                raise KernelUnavailableError(f"mamba2.impl='kernels' runs on CUDA only, parameters are on {device}")
            return self._forward_kernels(x, state)
        return self._forward_torch(x, state)

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return zxbcdt.split([self.d_inner, self.conv1d.in_channels, self.n_heads], dim=-1)

    def _split_xbc(self, xBC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        bc = self.cfg.n_groups * self.cfg.d_state
        return xBC.split([self.d_inner, bc, bc], dim=-1)

    def _gated_norm_out(self, y: Tensor, z: Tensor, dtype: torch.dtype) -> Tensor:
        return self.out_proj(gated_rms_norm(y, z, self.norm_weight).to(dtype))  # (B, T, D)

    def _forward_torch(self, x: Tensor, state: Mamba2State | None) -> Tensor:
        cfg, (b, t, _) = self.cfg, x.shape
        z, xBC, dt = self._split(self.in_proj(x))  # (B, T, d_inner), (B, T, conv_dim), (B, T, H)

        xBC = causal_conv_silu(xBC, self.conv1d.weight, self.conv1d.bias, None if state is None else state.conv)
        xs, B, C = self._split_xbc(xBC)  # (B, T, d_inner), (B, T, G*N), (B, T, G*N)

        # The scan in float32 at least: decays compound over thousands of steps.
        sdtype = scan_dtype(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            xs = xs.to(sdtype).reshape(b, t, self.n_heads, cfg.head_dim)  # (B, T, H, P)
            dt = F.softplus(dt.to(sdtype) + self.dt_bias.to(sdtype))  # (B, T, H)
            A = -torch.exp(self.A_log.to(sdtype))  # (H,)
            B = B.to(sdtype).reshape(b, t, cfg.n_groups, cfg.d_state)  # (B, T, G, N)
            C = C.to(sdtype).reshape(b, t, cfg.n_groups, cfg.d_state)  # (B, T, G, N)
            initial = None if state is None else state.ssm.to(sdtype)
            if state is not None and t == 1:  # a decoding step: the recurrence itself
                heads = self.n_heads // cfg.n_groups
                B1, C1 = (v[:, 0].repeat_interleave(heads, dim=1) for v in (B, C))  # (B, H, N)
                y, final = ssd_step(xs[:, 0], dt[:, 0], A, B1, C1, initial)
                y = y[:, None]  # (B, 1, H, P)
            else:
                y, final = ssd_chunked(xs, dt, A, B, C, chunk_size=min(cfg.chunk_size, t), initial_state=initial)
            y = y + self.D.to(sdtype)[:, None] * xs  # (B, T, H, P)
        if state is not None:
            state.ssm.copy_(final.detach())
        return self._gated_norm_out(y.reshape(b, t, self.d_inner), z, x.dtype)

    def _forward_kernels(self, x: Tensor, state: Mamba2State | None = None) -> Tensor:
        """mamba-ssm's kernels; with a state (a prefill, or a chunk of one), the conv runs over the state's
        last inputs followed by these and the scan starts from the state's, as the torch path does."""
        causal_conv1d_fn, mamba_chunk_scan_combined = _load_kernels()
        cfg, (b, t, _) = self.cfg, x.shape
        z, xBC, dt = self._split(self.in_proj(x))  # (B, T, d_inner), (B, T, conv_dim), (B, T, H)
        xBC = xBC.transpose(1, 2)  # (B, conv_dim, T)
        if state is not None:
            xBC = torch.cat([state.conv.to(xBC.dtype), xBC], dim=-1)  # (B, conv_dim, d_conv - 1 + T)
            state.conv.copy_(xBC[..., xBC.shape[-1] - (cfg.d_conv - 1) :].detach())
        # Channel-first contiguous input: the channel-last layout would need widths and strides divisible by 8.
        xBC = causal_conv1d_fn(
            xBC.contiguous(),
            self.conv1d.weight.squeeze(1),  # (conv_dim, d_conv)
            self.conv1d.bias,
            activation="silu",
        )  # (B, conv_dim, [d_conv - 1 +] T)
        xs, B, C = self._split_xbc(xBC[..., xBC.shape[-1] - t :].transpose(1, 2))  # (B, T, d_inner), (B, T, G*N) x 2
        out = mamba_chunk_scan_combined(
            xs.reshape(b, t, self.n_heads, cfg.head_dim),  # (B, T, H, P)
            dt,  # (B, T, H): raw; the kernel adds dt_bias and applies softplus
            -torch.exp(self.A_log.float()),  # (H,)
            B.reshape(b, t, cfg.n_groups, cfg.d_state),  # (B, T, G, N)
            C.reshape(b, t, cfg.n_groups, cfg.d_state),  # (B, T, G, N)
            chunk_size=cfg.chunk_size,
            D=self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            initial_states=None if state is None else state.ssm,  # (B, H, P, N), float32 (scan_dtype)
            return_final_states=state is not None,
        )  # (B, T, H, P), D skip included; z=None: the gate goes inside the norm below
        if state is not None:
            out, final = out
            state.ssm.copy_(final.detach())
        return self._gated_norm_out(out.reshape(b, t, self.d_inner), z, x.dtype)


def init_decay_(A_log: Tensor, dt_bias: Tensor, cfg) -> None:
    """-A uniform in [a_init_min, a_init_max]; dt log-uniform in [dt_min, dt_max], clamped at
    dt_init_floor, stored as softplus^-1(dt) so that softplus(dt_bias) = dt (one value per head)."""
    u = torch.rand(A_log.shape, dtype=torch.float64)
    A_log.copy_(torch.log(cfg.a_init_min + u * (cfg.a_init_max - cfg.a_init_min)))
    u = torch.rand(dt_bias.shape, dtype=torch.float64)
    dt = torch.exp(math.log(cfg.dt_min) + u * (math.log(cfg.dt_max) - math.log(cfg.dt_min)))
    dt = dt.clamp(min=cfg.dt_init_floor)
    dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def gated_rms_norm(y: Tensor, z: Tensor, weight: Tensor) -> Tensor:
    """y (.., d_inner) gated by silu(z), then RMS-normalised over its last axis and scaled by weight (d_inner,), in the
    scan's dtype (float32 at least)."""
    sdtype = scan_dtype(y.dtype)
    y = y.to(sdtype) * F.silu(z.to(sdtype))  # gate first, then normalise
    return y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + _NORM_EPS) * weight


def scan_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # float32, or float64 when asked for
