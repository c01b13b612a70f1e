"""Would K proxies of different patterns train faster as one stacked model than on K streams? (issue 17)

A search's proxies are so small that their steps are bound by the number of kernels, not by FLOPs
(benchmarks/RESULTS.md: about 1% of an H200's bf16 peak). This measures a way to make one kernel serve
several proxies: K candidates of one length, width and task become one model. At each layer position the
candidates are grouped by letter, and a group's layers run as one call vmapped (torch.func) over their
stacked weights; embeddings, the final norm and the tied head are stacked too. Each candidate keeps its own
loss, gradient clipping and AdamW state, so the stack trains every candidate as it would train alone: the
check below compares the loss curves of both from the same initial weights (`build_model(seed=0)` each).

Two runs of the same K patterns, same data (in-context recall at the `mad` setting: width 128, 32 x 128
tokens a step), candidate-steps per second:
- solo: K runs at once, each in its thread on its own CUDA stream with its step captured as a graph (what
  `evaluator.parallel` does in a search), Mamba-2 on mamba-ssm's kernels where installed;
- stacked: one model, one captured step (with `--stack vmap`, its Mamba-2 layers run the pure-PyTorch scan,
  as mamba-ssm's kernels are autograd Functions without a vmap rule, and its attention SDPA's math backend).
On a CPU both run eagerly, one after the other (a smoke run: a CPU is not launch-bound at this size).
Measured on an H100 (2026-12-05, fp32, K = 16): the stack made 0.52x the solo runs' candidate-steps: losing
mamba-ssm's scan and SDPA's efficient kernel under vmap costs more than the fewer launches save (RESULTS.md).
So `--stack fold` (the default) keeps them: a position's attention layers run as one attention over the candidates'
sequences side by side in the batch, its Mamba-2 layers as one layer of K x H heads (one conv, one scan of
mamba-ssm's where the solo runs use it), and only MLP and the other letters vmap (FOLDS). `--stack vmap` is the
2026-12-05 stack. Measured on an H100 (2026-12-06, bf16, K = 16): the fold made 0.86x the solo runs: at this size a
captured step is bound by memory traffic more than by launches (one proxy at 16x the batch makes only 1.75x the
sequences per second, `proxy_bench.py --batch-sizes`), so there is little for any fold to win (RESULTS.md).

    python3 benchmarks/stacked_proxies.py --k 8 --steps 100 --out $OUT/stacked.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import random
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from composer.config import model_config_from_mapping
from composer.engine.graphs import StepGraph, own_stream, thread_safe_autotuners
from composer.engine.trainer import decays, param_groups
from composer.model import ComposedModel, build_model
from composer.tasks.mad import TASKS, task_config_from_mapping

LR, BETAS, WEIGHT_DECAY, CLIP = 3e-3, (0.9, 0.95), 0.1, 1.0  # the `mad` trainer's


class _Group(nn.Module):
    """The layers of one letter at one position, for the candidates `index`: stacked weights, one vmapped call."""

    def __init__(self, layers: list[nn.Module], index: list[int]) -> None:
        super().__init__()
        params, buffers = stack_module_state(layers)  # name -> (n, ...)
        self.names = list(params)
        self.weights = nn.ParameterList(nn.Parameter(params[n]) for n in self.names)
        self.buffers_ = dict(buffers)
        self.register_buffer("index", torch.tensor(index, device=next(iter(params.values())).device), persistent=False)
        self.template = [copy.deepcopy(layers[0]).to("meta")]  # a list: not a submodule, holds no weights
        unstacked = dict(layers[0].named_parameters())
        self.no_decay = [not decays(unstacked[n]) for n in self.names]  # the trainer's rule, on the unstacked weight

    def forward(self, x: Tensor) -> Tensor:  # (n, B, T, D) -> (n, B, T, D)
        template = self.template[0]
        fold = FOLDS.get(template.letter) if STACK[0] == "fold" else None
        if fold is not None and getattr(template.mixer, "q_norm", None) is None:  # q/k norms: per-candidate weights, vmap
            w = dict(zip(self.names, self.weights))
            h = F.rms_norm(x, (x.shape[-1],), eps=template.norm.eps) * w["norm.weight"][:, None, None]
            return x + fold(template.mixer, w, h)

        def layer(weights, buffers, xx):
            return functional_call(template, ({**dict(zip(self.names, weights)), **buffers}), (xx,))

        return vmap(layer)(tuple(self.weights), self.buffers_, x)


def _fold_attention(mixer, w: dict[str, Tensor], h: Tensor) -> Tensor:
    """n candidates' attention layers (same shapes, own weights) as one: their sequences side by side along the batch
    axis, so SDPA's own kernels run once for all of them. h (n, B, T, D) normed -> (n, B, T, D)."""
    n, b = h.shape[:2]
    qkv = torch.einsum("nbtd,nfd->nbtf", h, w["mixer.qkv.weight"])  # (n, B, T, (H + 2 Hkv) hd)
    y = mixer.mix(qkv.flatten(0, 1)).unflatten(0, (n, b))  # (n, B, T, H hd): the template reads no weight here
    return torch.einsum("nbti,ndi->nbtd", y, w["mixer.out_proj.weight"])


def _fold_mamba2(mixer, w: dict[str, Tensor], h: Tensor) -> Tensor:
    """n candidates' Mamba-2 layers as one of n x H heads and n x G groups: one causal conv over n x conv_dim channels
    and one scan (mamba-ssm's kernels where the template would run them, else the chunked torch scan), each candidate's
    heads reading only its own B and C. h (n, B, T, D) normed -> (n, B, T, D)."""
    from primitives.nn.mamba2 import _load_kernels, gated_rms_norm, scan_dtype, ssd_chunked

    cfg, (n, b, t, _), sd = mixer.cfg, h.shape, scan_dtype(h.dtype)
    kernels = mixer._resolve(h.device)[0]
    z, xBC, dt = mixer._split(torch.einsum("nbtd,ned->btne", h, w["mixer.in_proj.weight"]))  # (B, T, n, ·) each
    weight, bias = w["mixer.conv1d.weight"].flatten(0, 1), w["mixer.conv1d.bias"].flatten()  # (n C, 1, d_conv), (n C,)
    xBC = xBC.flatten(2).transpose(1, 2)  # (B, n C, T)
    if kernels:
        conv, scan = _load_kernels()
        xBC = conv(xBC.contiguous(), weight.squeeze(1), bias, activation="silu")
    else:
        xBC = F.silu(F.conv1d(F.pad(xBC, (cfg.d_conv - 1, 0)), weight, bias, groups=xBC.shape[1]))
    xs, B, C = mixer._split_xbc(xBC.transpose(1, 2).unflatten(2, (n, -1)))  # (B, T, n, d_inner), (B, T, n, G N) x 2
    heads, groups = n * mixer.n_heads, n * cfg.n_groups  # head j of candidate i reads group i G + j // (H / G)
    xs, B, C = xs.reshape(b, t, heads, cfg.head_dim), B.reshape(b, t, groups, cfg.d_state), C.reshape(b, t, groups, cfg.d_state)
    dt, A_log, dt_bias, D = dt.reshape(b, t, heads), *(w[f"mixer.{k}"].flatten() for k in ("A_log", "dt_bias", "D"))
    if kernels:
        y = scan(xs, dt, -torch.exp(A_log.float()), B, C, chunk_size=cfg.chunk_size, D=D, dt_bias=dt_bias, dt_softplus=True)
    else:
        with torch.autocast(h.device.type, enabled=False):
            xs = xs.to(sd)
            y, _ = ssd_chunked(xs, F.softplus(dt.to(sd) + dt_bias.to(sd)), -torch.exp(A_log.to(sd)), B.to(sd), C.to(sd),
                               chunk_size=min(cfg.chunk_size, t), initial_state=None)
            y = y + D.to(sd)[:, None] * xs  # (B, T, n H, P)
    y = gated_rms_norm(y.reshape(b, t, n, mixer.d_inner), z, w["mixer.norm_weight"])  # each over its own d_inner
    return torch.einsum("btni,ndi->nbtd", y.to(h.dtype), w["mixer.out_proj.weight"])


FOLDS = {"*": _fold_attention, "W": _fold_attention, "M": _fold_mamba2}  # the others vmap (their kernels are few)
STACK = ["fold"]  # --stack: fold (FOLDS where a letter has one) | vmap (every letter, the 2026-12-05 measurement)


class StackedProxies(nn.Module):
    """K ComposedModels of one length, width and vocabulary (tied embeddings) as one model:
    tokens (B, T) -> logits (K, B, T, V)."""

    def __init__(self, models: list[ComposedModel]) -> None:
        super().__init__()
        patterns = [m.cfg.pattern for m in models]
        if len({len(p) for p in patterns}) != 1 or any(m.head is not None for m in models):
            raise ValueError("stacked proxies need patterns of one length and tied embeddings")
        if any("E" in p for p in patterns):  # its routing scatters by data-dependent counts, which vmap cannot batch
            raise ValueError("stacked proxies cannot hold MoE ('E') layers: their routing does not vmap")
        self.cfg = models[0].cfg
        self.embed = nn.Parameter(torch.stack([m.embed.weight.detach() for m in models]))  # (K, V, D)
        self.norm = nn.Parameter(torch.stack([m.norm.weight.detach() for m in models]))  # (K, D)
        self.positions = nn.ModuleList()
        for i in range(len(patterns[0])):
            letters = sorted({p[i] for p in patterns})
            self.positions.append(nn.ModuleList(
                _Group([m.layers[i] for m in models if m.cfg.pattern[i] == c], [k for k, p in enumerate(patterns) if p[i] == c])
                for c in letters))
        self.k = len(models)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed[:, tokens]  # (K, B, T, D)
        if self.cfg.scale_embeddings:
            x = x * self.cfg.d_model**0.5
        for groups in self.positions:
            if len(groups) == 1:
                x = groups[0](x)
            else:  # each letter's candidates through their own layers, written back in place of their rows
                out = x
                for group in groups:
                    out = out.index_copy(0, group.index, group(x.index_select(0, group.index)))
                x = out
        x = F.rms_norm(x, (x.shape[-1],), eps=self.cfg.norm_eps) * self.norm[:, None, None, :]
        return torch.einsum("kbtd,kvd->kbtv", x, self.embed)  # (K, B, T, V)

    def losses(self, tokens: Tensor, targets: Tensor) -> Tensor:
        """Each candidate's mean cross-entropy (K,); their sum's gradient is each candidate's own."""
        logits = self(tokens).float()
        per_token = F.cross_entropy(logits.flatten(0, 2), targets.expand(self.k, *targets.shape).flatten(),
                                    ignore_index=-100, reduction="none").view(self.k, -1)
        counted = (targets != -100).sum().clamp(min=1)
        return per_token.sum(1) / counted

    def stacks(self) -> list[tuple[Tensor, Tensor, bool]]:
        """(candidate rows, stacked weight, without weight decay) of every weight."""
        every = torch.arange(self.k, device=self.embed.device)
        out = [(every, self.embed, False), (every, self.norm, True)]
        for groups in self.positions:
            for g in groups:
                out += [(g.index, w, nd) for w, nd in zip(g.weights, g.no_decay)]
        return out


def clip_per_candidate(stacks: list[tuple[Tensor, Tensor, bool]], k: int, max_norm: float) -> Tensor:
    """clip_grad_norm_ for each candidate alone: its norm over its own rows of every weight (K,)."""
    squares = torch.zeros(k, device=stacks[0][1].device)
    for rows, w, _ in stacks:
        squares.index_add_(0, rows, w.grad.float().pow(2).flatten(1).sum(1))
    norms = squares.sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for rows, w, _ in stacks:
        w.grad.mul_(coef[rows].view(-1, *[1] * (w.ndim - 1)).to(w.grad.dtype))
    return norms


def _adamw(groups: list[dict], device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=LR, betas=BETAS, fused=device.type == "cuda")


def _solo_optimizer(model: nn.Module, device: torch.device) -> torch.optim.AdamW:
    return _adamw(param_groups(model, WEIGHT_DECAY), device)  # the trainer's own grouping


def _stacked_optimizer(model: StackedProxies, device: torch.device) -> torch.optim.AdamW:
    """The trainer's grouping, read from each stacked weight's unstacked shape and flags."""
    stacks = model.stacks()
    return _adamw([{"params": [w for _, w, nd in stacks if not nd], "weight_decay": WEIGHT_DECAY},
                   {"params": [w for _, w, nd in stacks if nd], "weight_decay": 0.0}], device)


def stack_settings(mamba_impl: str) -> tuple[str, str]:
    """(Mamba-2 impl, SDPA backend) of the stack: folded, the solo runs' own; vmapped, the torch scan and SDPA's math
    backend (mamba-ssm's kernels have no vmap rule; build's docstring)."""
    return (mamba_impl, "auto") if STACK[0] == "fold" else ("torch", "math")


BF16 = [False]  # --precision: fp32 (TF32 matmuls), or bf16 autocast on CUDA (the search's; see --help)


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and BF16[0])


def solo_steps(model: ComposedModel, batches: list[tuple[Tensor, Tensor]], device: torch.device) -> list[float]:
    """The reference: one candidate alone, eager, as the trainer steps it (bf16 autocast on CUDA)."""
    opt = _solo_optimizer(model, device)
    losses = []
    for x, y in batches:
        with _autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def stacked_steps(model: StackedProxies, batches: list[tuple[Tensor, Tensor]], device: torch.device) -> list[list[float]]:
    opt = _stacked_optimizer(model, device)
    stacks = model.stacks()
    curves = []
    for x, y in batches:
        with _autocast(device):
            losses = model.losses(x, y)
        losses.sum().backward()
        clip_per_candidate(stacks, model.k, CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        curves.append(losses.tolist())
    return [list(c) for c in zip(*curves)]  # per candidate


def patterns_for(k: int, length: int, seed: int) -> list[str]:
    """k distinct patterns over `*`, `-`, `M` with a sequence mixer and at most half attention (space `long`)."""
    rng, out = random.Random(seed), []
    while len(out) < k:
        p = "".join(rng.choice("*-M") for _ in range(length))
        if p not in out and p.count("*") <= length // 2 and ("*" in p or "M" in p):
            out.append(p)
    return out


def build(patterns: list[str], d_model: int, mamba_impl: str, device: torch.device, backend: str = "auto") -> list[ComposedModel]:
    """The candidates at the `mad` proxy's width; `backend`: SDPA's (the stack takes "math": the efficient kernel's
    backward fails under vmap on an H100, "LSE is not correctly aligned", 2026-12-05)."""
    return [build_model(model_config_from_mapping({"pattern": p, "vocab_size": 16, "d_model": d_model,
                                                   "mamba2": {"impl": mamba_impl}, "attention": {"backend": backend}}),
                        seed=0).to(device) for p in patterns]


def equivalence(patterns: list[str], *, steps: int, d_model: int, data, device: torch.device, mamba_impl: str) -> dict:
    """Loss curves of each candidate alone and in the stack, from the same weights and batches, both on the stack's
    Mamba-2 path (folded: the solo runs' kernels where installed; vmapped: the torch scan)."""
    batches = _batches(data, steps, seed=0)
    impl, backend = stack_settings(mamba_impl)
    solo = [solo_steps(m, batches, device) for m in build(patterns, d_model, impl, device)]
    stacked = stacked_steps(StackedProxies(build(patterns, d_model, impl, device, backend)), batches, device)
    diff = max(abs(a - b) / abs(a) for s, t in zip(solo, stacked) for a, b in zip(s, t))
    return {"steps": steps, "max_relative_loss_difference": diff, "final_losses_solo": [c[-1] for c in solo],
            "final_losses_stacked": [c[-1] for c in stacked]}


def _batches(data, n: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    x, y = data
    g = torch.Generator().manual_seed(seed)
    return [(x[i], y[i]) for i in (torch.randint(0, len(x), (32,), generator=g).to(x.device) for _ in range(n))]


def timing(patterns: list[str], *, steps: int, d_model: int, data, device: torch.device, mamba_impl: str) -> dict:
    """Candidate-steps per second: K solo runs at once on K streams against one stacked model (CUDA graphs)."""
    batches = _batches(data, 16, seed=1)
    k = len(patterns)
    thread_safe_autotuners()  # as the evaluator: K threads tuning mamba-ssm's kernels at once failed at K = 8 without it

    def graphed(opt: torch.optim.Optimizer, losses, update, barrier: threading.Barrier | None = None) -> tuple[float, float]:
        """(start, end) of `steps` replays of the captured step, started together with the other runs' (`barrier`)."""
        def forward_backward(bs):
            (x, y), = bs
            with _autocast(device):
                loss = losses(x, y)
            loss.sum().backward()
            return loss.detach()

        for x, y in batches[:2]:  # eager warm-up: AdamW's state, cuBLAS workspaces
            forward_backward([(x, y)])
            update()
            opt.zero_grad(set_to_none=True)
        graph = StepGraph(opt, batches[:1], forward_backward, update)
        torch.cuda.current_stream().synchronize()
        if barrier is not None:
            barrier.wait()
        start = time.perf_counter()
        for i in range(steps):
            graph.run(LR, [batches[i % len(batches)]])
        torch.cuda.current_stream().synchronize()
        return start, time.perf_counter()

    spans, errors, barrier = [(0.0, 0.0)] * k, [], threading.Barrier(k)

    def one(i: int, model: ComposedModel) -> None:
        try:
            with own_stream(device):
                opt = _solo_optimizer(model, device)

                def update():
                    norm = nn.utils.clip_grad_norm_(model.parameters(), CLIP)
                    opt.step()
                    return norm

                spans[i] = graphed(opt, lambda x, y: F.cross_entropy(model(x).float().flatten(0, 1), y.flatten()),
                                   update, barrier)
        except BaseException as exc:  # noqa: BLE001 (raised below)
            errors.append(exc)
            barrier.abort()  # the others stop waiting

    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i, m)) for i, m in enumerate(build(patterns, d_model, mamba_impl, device))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    window = max(end for _, end in spans) - min(start for start, _ in spans)  # every run's steps, timed together
    solo = {"candidate_steps_per_s": k * steps / window, "wall_s": time.perf_counter() - started,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "mamba_impl": mamba_impl}
    del threads  # the solo models: the stack's peak is its own
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    impl, backend = stack_settings(mamba_impl)
    stacked_model = StackedProxies(build(patterns, d_model, impl, device, backend))
    opt = _stacked_optimizer(stacked_model, device)
    stacks = stacked_model.stacks()

    def update():
        norms = clip_per_candidate(stacks, k, CLIP)
        opt.step()
        return norms

    with own_stream(device):
        start, end = graphed(opt, stacked_model.losses, update)
    rate = steps / (end - start)
    stacked = {"candidate_steps_per_s": rate * k, "steps_per_s": rate, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
               "stack": STACK[0], "mamba_impl": impl}
    return {"solo": solo, "stacked": stacked, "ratio": stacked["candidate_steps_per_s"] / solo["candidate_steps_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8, help="candidates in the stack")
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="timed steps (CUDA)")
    parser.add_argument("--check-steps", type=int, default=20, help="steps of the loss-curve comparison")
    parser.add_argument("--mamba-impl", default="auto", help="the solo runs' Mamba-2 (auto: mamba-ssm where installed)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="fp32",
                        help="fp32: TF32 matmuls; bf16: autocast, as the search trains, which fails in the stack on CUDA "
                             "(conv1d under vmap misses autocast: bf16 input, fp32 bias; torch 2.11, 2026-12-05)")
    parser.add_argument("--stack", choices=("fold", "vmap"), default="fold",
                        help="fold: attention and Mamba-2 layers of a position as one call of their own kernels (the "
                             "candidates side by side in the batch, or as heads), the rest vmapped; vmap: every layer "
                             "vmapped over the torch paths (measured 0.52x on an H100, 2026-12-05)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    BF16[0] = args.precision == "bf16"
    STACK[0] = args.stack
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not BF16[0]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task_cfg = task_config_from_mapping("in_context_recall", {})
    x, y = TASKS["in_context_recall"].generate(task_cfg, n_examples=task_cfg.n_train, seed=0)
    data = (x.to(device), y.to(device))
    patterns = patterns_for(args.k, args.length, seed=0)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
               "precision": args.precision, "stack": args.stack, "k": args.k, "patterns": patterns, "d_model": args.d_model}
    results["equivalence"] = equivalence(patterns, steps=args.check_steps, d_model=args.d_model, data=data, device=device,
                                         mamba_impl=args.mamba_impl)
    print(f"stacked vs alone, {args.check_steps} steps of {args.k} candidates: losses within "
          f"{results['equivalence']['max_relative_loss_difference']:.1e} (relative)", flush=True)
    if device.type == "cuda":
        results["timing"] = timing(patterns, steps=args.steps, d_model=args.d_model, data=data, device=device,
                                   mamba_impl=args.mamba_impl)
        t = results["timing"]
        print(f"solo x{args.k} on streams: {t['solo']['candidate_steps_per_s']:.0f} candidate-steps/s "
              f"({t['solo']['peak_gib']:.1f} GiB); stacked: {t['stacked']['candidate_steps_per_s']:.0f} "
              f"({t['stacked']['peak_gib']:.1f} GiB): {t['ratio']:.2f}x", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
