"""Mamba-2's pure-PyTorch path against an earlier version of it, timed side by side in one run.

The earlier version is `primitives/nn/mamba2.py` of another tree: `--before REV` (a git revision of this checkout,
default 4f96129, the last before the path was reworked for compiled layers) or `--before PATH` (the file itself,
e.g. `.device/before/primitives/nn/mamba2.py` on a machine without the git history). The rework:

1. the short causal conv as K shifted multiply-adds in (B, T, C) (`primitives.nn.conv`), not a channel-first copy
   through torch's depthwise `F.conv1d`, which compiled stays a library call;
2. the scan of one chunk from no state returns after the chunk's own terms (the same outputs bit for bit);
3. C.B computed once per group of heads, not once per head over copies of B and C.

Timed at the proxies' shapes, forward and backward, median of `--steps` after `--warmup`, the two versions called in
turn (so the machine's noise weighs on both alike): `mad_cpu` (32 sequences of 32 tokens, width 32: one chunk),
`mad` at 32 tokens (compression and memorization: one chunk) and at 128 (the recall tasks: two chunks). Rows: the
scan alone (`ssd_chunked`) and one Mamba-2 layer (the same weights in both). On CUDA each is timed eager and
compiled (`torch.compile`). Ratios are before over after (above 1: faster now).

    python benchmarks/mamba2_torch_bench.py --out /tmp/mamba2_torch.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

from primitives.mamba2 import Mamba2Config
from primitives.nn import mamba2 as now

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # name -> (batch, tokens, d_model, Mamba-2 settings as the evaluator's)
    "mad_cpu": (32, 32, 32, {"head_dim": 16, "d_state": 16, "chunk_size": 32}),
    "mad, 32 tokens": (32, 32, 128, {}),
    "mad, 128 tokens": (32, 128, 128, {}),
}


def load_before(before: str) -> tuple[ModuleType, str]:
    """The earlier primitives/nn/mamba2.py as a module, and what it is (a path, or a revision and its commit)."""
    path = Path(before)
    if not path.is_file():
        show = subprocess.run(["git", "show", f"{before}:primitives/nn/mamba2.py"], cwd=REPO, capture_output=True,
                              text=True)
        if show.returncode != 0:
            raise SystemExit(f"mamba2_torch_bench.py: --before {before!r} is neither a file nor a revision of "
                             f"{REPO}: {show.stderr.strip()}")
        path = Path(tempfile.mkdtemp()) / "mamba2_before.py"
        path.write_text(show.stdout)
        commit = subprocess.run(["git", "rev-parse", "--short", before], cwd=REPO, capture_output=True, text=True)
        before = f"{before} ({commit.stdout.strip()})"
    spec = importlib.util.spec_from_file_location("mamba2_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module, before


def timed_pair(before, after, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Median milliseconds of before() and of after(), called in turn."""
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


def bench(old: ModuleType, shape: str, device: torch.device, compiled: bool, steps: int, warmup: int) -> dict:
    batch, tokens, d_model, settings = SHAPES[shape]
    cfg = Mamba2Config(impl="torch", **settings)
    torch.manual_seed(0)
    layers = {"before": old.Mamba2(cfg, d_model=d_model).to(device), "after": now.Mamba2(cfg, d_model=d_model).to(device)}
    layers["after"].load_state_dict(layers["before"].state_dict())
    heads, chunk = layers["after"].n_heads, min(cfg.chunk_size, tokens)
    leaf = lambda *shape: torch.randn(*shape, device=device, requires_grad=True)  # noqa: E731
    x = leaf(batch, tokens, d_model)
    scan_in = (leaf(batch, tokens, heads, cfg.head_dim), torch.rand(batch, tokens, heads, device=device) * 0.1,
               -torch.rand(heads, device=device) - 0.5, leaf(batch, tokens, cfg.n_groups, cfg.d_state),
               leaf(batch, tokens, cfg.n_groups, cfg.d_state))
    torch._dynamo.reset()
    wrap = torch.compile if compiled else (lambda f: f)
    scans = {"before": wrap(old.ssd_chunked), "after": wrap(now.ssd_chunked)}
    runs = {"scan": {side: (lambda f=f: f(*scan_in, chunk_size=chunk)[0].sum().backward()) for side, f in scans.items()},
            "layer": {side: (lambda f=wrap(m): f(x).sum().backward()) for side, m in layers.items()}}
    with torch.no_grad():  # the same layer: outputs within rounding
        differs = (layers["before"](x) - layers["after"](x)).abs().max().item()
    row = {"shape": shape, "device": str(device), "compiled": compiled, "chunks": -(-tokens // chunk),
           "max_abs_difference": differs}
    for part, pair in runs.items():
        row[f"{part}_before_ms"], row[f"{part}_after_ms"] = timed_pair(pair["before"], pair["after"], steps, warmup, device)
        row[f"{part}_ratio"] = round(row[f"{part}_before_ms"] / row[f"{part}_after_ms"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="4f96129", help="a git revision, or the path of an earlier mamba2.py")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    old, before = load_before(args.before)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = (torch.cuda.get_device_name() if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    rows = [bench(old, shape, device, compiled, args.steps, args.warmup)
            for shape in SHAPES for compiled in ((False, True) if device.type == "cuda" else (False,))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "torch": torch.__version__, "before": before, "rows": rows},
                                   indent=2) + "\n")
    print(f"{machine}, torch {torch.__version__}; before: {before}; forward + backward, median ms, before / after")
    print("| shape | compiled | chunks | scan | ratio | Mamba-2 layer | ratio | outputs differ by |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        cells = " | ".join(f"{r[f'{p}_before_ms']:.3f} / {r[f'{p}_after_ms']:.3f} | {r[f'{p}_ratio']:.2f}x"
                           for p in ("scan", "layer"))
        print(f"| {r['shape']} | {r['compiled']} | {r['chunks']} | {cells} | {r['max_abs_difference']:.1e} |")


if __name__ == "__main__":
    main()
