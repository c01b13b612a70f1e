"""Mamba-2's pure-PyTorch path, before and after two changes for compiled layers, timed side by side in one run.

1. The short causal conv (`primitives.nn.conv.causal_conv_silu`): K shifted multiply-adds in (B, T, C), against the
   layers' code before, a channel-first copy through torch's depthwise `F.conv1d` (kept here as `conv1d_silu`).
2. The scan of one chunk from no state (`ssd_chunked` returns after the chunk's own terms), against the general path
   it took before (the across-chunk steps over a zero state: the same outputs bit for bit).

Timed at the proxies' shapes, forward and backward, median of `--steps` after `--warmup`: `mad_cpu` (32 sequences of
32 tokens, width 32: Mamba-2's conv over 96 channels, one chunk) and `mad` at its one-chunk length (compression and
memorization: 32 tokens, width 128, 384 channels) and at 128 tokens (the recall tasks: two chunks, so only the conv
differs). Rows: the conv alone, the scan alone, and one Mamba-2 layer with both (before: both swapped back). On CUDA
each is timed eager and compiled (`torch.compile`). Ratios are before over after (above 1: faster now).

    python benchmarks/mamba2_torch_bench.py --out /tmp/mamba2_torch.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import primitives.nn.mamba2 as mamba2_module
from primitives.mamba2 import Mamba2Config
from primitives.nn.conv import causal_conv_silu
from primitives.nn.mamba2 import Mamba2, ssd_chunked

SHAPES = {  # name -> (batch, tokens, d_model, Mamba-2 settings as the evaluator's)
    "mad_cpu": (32, 32, 32, {"head_dim": 16, "d_state": 16, "chunk_size": 32}),
    "mad, 32 tokens": (32, 32, 128, {}),
    "mad, 128 tokens": (32, 128, 128, {}),
}


def conv1d_silu(x, weight, bias=None, state=None):
    """The layers' conv before: channel-first, history prepended, torch's depthwise conv1d, SiLU, back to (B, T, C)."""
    k = weight.shape[-1]
    xt = x.transpose(1, 2)  # (B, C, T)
    history = xt.new_zeros(xt.shape[0], xt.shape[1], k - 1) if state is None else state.to(xt.dtype)
    xt = torch.cat([history, xt], dim=-1)  # (B, C, K - 1 + T)
    if state is not None:
        state.copy_(xt[..., xt.shape[-1] - (k - 1) :].detach())
    return F.silu(F.conv1d(xt, weight, bias, groups=xt.shape[1])).transpose(1, 2)


def general_scan(x, dt, A, B, C, *, chunk_size, initial_state=None):
    """The scan as it ran before for a sequence without state: the general path, from a zero state."""
    if initial_state is None:
        initial_state = x.new_zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[-1])  # (b, h, p, n)
    return ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, initial_state=initial_state)


def timed_pair(before, after, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Median milliseconds of before() and of after() (each forward and backward), called in turn, so that what the
    machine does meanwhile weighs on both alike."""
    times: dict = {before: [], after: []}
    for i in range(warmup + steps):
        for fn in (before, after):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[fn].append((time.perf_counter() - started) * 1e3)
    return statistics.median(times[before]), statistics.median(times[after])


def bench(shape: str, device: torch.device, compiled: bool, steps: int, warmup: int) -> dict:
    batch, tokens, d_model, settings = SHAPES[shape]
    torch.manual_seed(0)
    layer = Mamba2(Mamba2Config(impl="torch", **settings), d_model=d_model).to(device)
    cfg, channels = layer.cfg, layer.conv1d.in_channels
    chunk = min(cfg.chunk_size, tokens)
    leaf = lambda *shape: torch.randn(*shape, device=device, requires_grad=True)  # noqa: E731
    x_conv, x_layer = leaf(batch, tokens, channels), leaf(batch, tokens, d_model)
    heads, n = layer.n_heads, cfg.d_state
    scan_in = (leaf(batch, tokens, heads, cfg.head_dim), torch.rand(batch, tokens, heads, device=device) * 0.1,
               -torch.rand(heads, device=device) - 0.5, leaf(batch, tokens, 1, n), leaf(batch, tokens, 1, n))
    row = {"shape": shape, "device": str(device), "compiled": compiled, "channels": channels,
           "chunks": -(-tokens // chunk)}
    torch._dynamo.reset()
    wrap = (lambda f: torch.compile(f)) if compiled else (lambda f: f)
    sides = {"before": (conv1d_silu, general_scan), "after": (causal_conv_silu, ssd_chunked)}
    runs: dict = {"conv": {}, "scan": {}, "layer": {}}
    for side, (conv, scan) in sides.items():
        run_conv, run_scan, run_layer = wrap(conv), wrap(scan), wrap(layer)

        def whole_layer(conv=conv, scan=scan, run_layer=run_layer):
            mamba2_module.causal_conv_silu, mamba2_module.ssd_chunked = conv, scan  # what the layer calls, this side
            run_layer(x_layer).sum().backward()

        runs["conv"][side] = lambda run_conv=run_conv: run_conv(x_conv, layer.conv1d.weight, layer.conv1d.bias).sum().backward()
        runs["scan"][side] = lambda run_scan=run_scan: run_scan(*scan_in, chunk_size=chunk)[0].sum().backward()
        runs["layer"][side] = whole_layer
    for part, pair in runs.items():
        row[f"{part}_before_ms"], row[f"{part}_after_ms"] = timed_pair(pair["before"], pair["after"], steps, warmup, device)
        row[f"{part}_ratio"] = round(row[f"{part}_before_ms"] / row[f"{part}_after_ms"], 3)
    mamba2_module.causal_conv_silu, mamba2_module.ssd_chunked = causal_conv_silu, ssd_chunked
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = (torch.cuda.get_device_name() if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    rows = [bench(shape, device, compiled, args.steps, args.warmup)
            for shape in SHAPES for compiled in ((False, True) if device.type == "cuda" else (False,))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    print(f"{machine}, torch {torch.__version__}; forward + backward, median ms, before / after")
    print("| shape | compiled | conv channels | chunks | conv | ratio | scan | ratio | Mamba-2 layer | ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        cells = " | ".join(f"{r[f'{p}_before_ms']:.3f} / {r[f'{p}_after_ms']:.3f} | {r[f'{p}_ratio']:.2f}x"
                           for p in ("conv", "scan", "layer"))
        print(f"| {r['shape']} | {r['compiled']} | {r['channels']} | {r['chunks']} | {cells} |")


if __name__ == "__main__":
    main()
