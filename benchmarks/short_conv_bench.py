"""The short causal conv of Mamba-2 and Gated DeltaNet's pure-PyTorch paths: shifted sums against torch's conv1d.

`primitives.nn.conv.causal_conv_silu` computes silu(depthwise causal conv) as K shifted multiply-adds in the (B, T, C)
layout; before, the layers transposed to (B, C, T), prepended the history and called `F.conv1d` (kept here as the
peer, `conv1d_silu`). Timed in one run on this machine, forward and backward (median of `--steps` after `--warmup`):

- the conv alone, at the proxies' shapes: `mad_cpu` (32 sequences of 32 tokens, Mamba-2's conv over 96 channels at
  width 32) and `mad` (32 x 128 tokens, 384 channels at width 128);
- one Mamba-2 layer (torch path) at the same shapes, with its conv swapped for the peer's.

On CUDA each is timed eager and compiled (`torch.compile`, where the shifted sums fuse with the SiLU and the split
around them). Ratios are peer time over ours (above 1: ours is faster).

    python benchmarks/short_conv_bench.py --out /tmp/short_conv.json
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
from primitives.nn.mamba2 import Mamba2

SHAPES = {  # name -> (batch, tokens, d_model, Mamba-2 settings as the evaluator's)
    "mad_cpu": (32, 32, 32, {"head_dim": 16, "d_state": 16, "chunk_size": 32}),
    "mad": (32, 128, 128, {}),
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


def timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Median milliseconds of fn() (forward and backward)."""
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def bench(shape: str, device: torch.device, compiled: bool, steps: int, warmup: int) -> dict:
    batch, tokens, d_model, settings = SHAPES[shape]
    torch.manual_seed(0)
    layer = Mamba2(Mamba2Config(impl="torch", **settings), d_model=d_model).to(device)
    channels = layer.conv1d.in_channels
    x_conv = torch.randn(batch, tokens, channels, device=device, requires_grad=True)
    x_layer = torch.randn(batch, tokens, d_model, device=device, requires_grad=True)
    row = {"shape": shape, "device": str(device), "compiled": compiled, "channels": channels}
    for side, conv in (("ours", causal_conv_silu), ("conv1d", conv1d_silu)):
        run_conv = torch.compile(conv) if compiled else conv
        row[f"conv_{side}_ms"] = timed(lambda: run_conv(x_conv, layer.conv1d.weight, layer.conv1d.bias).sum().backward(),
                                       steps, warmup, device)
        mamba2_module.causal_conv_silu = conv  # the layer's conv, for this side
        torch._dynamo.reset()
        run_layer = torch.compile(layer) if compiled else layer
        row[f"layer_{side}_ms"] = timed(lambda: run_layer(x_layer).sum().backward(), steps, warmup, device)
    mamba2_module.causal_conv_silu = causal_conv_silu
    row["conv_ratio"] = round(row["conv_conv1d_ms"] / row["conv_ours_ms"], 3)
    row["layer_ratio"] = round(row["layer_conv1d_ms"] / row["layer_ours_ms"], 3)
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
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    rows = [bench(shape, device, compiled, args.steps, args.warmup)
            for shape in SHAPES for compiled in ((False, True) if device.type == "cuda" else (False,))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    print(f"{machine}, torch {torch.__version__}; forward + backward, median ms")
    print("| shape | compiled | channels | conv: conv1d | conv: shifted sums | ratio | Mamba-2 layer: conv1d | "
          "layer: shifted sums | ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['shape']} | {r['compiled']} | {r['channels']} | {r['conv_conv1d_ms']:.3f} | {r['conv_ours_ms']:.3f} | "
              f"{r['conv_ratio']:.2f}x | {r['layer_conv1d_ms']:.3f} | {r['layer_ours_ms']:.3f} | {r['layer_ratio']:.2f}x |")


if __name__ == "__main__":
    main()
