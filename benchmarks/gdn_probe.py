"""Where fla's Gated DeltaNet kernels spend their first bf16 call on this GPU (issue 16).

On an H200 with Triton 3.6 (2026-12-04) two of fla's bf16 calls ran for minutes without finishing (a forward at
head_dim 64, a backward at head_dim 32) while fp32 took seconds. This probe showed why (2026-12-05): fla's
autotuner tries about a hundred configurations for a first bf16 forward and backward, 1-2 s each; nothing hung.
It prints every configuration Triton's autotuner is about to run, and its time once it returns, so a hang would
name its kernel and configuration; every thread's stack is dumped after `--stall-s` seconds without progress (and
again each `--stall-s`). Each call (dtype, head_dim, forward or backward) is timed.

    python3 benchmarks/gdn_probe.py --head-dims 64,32 --backward --stall-s 45 --out $OUT/gdn_probe.json

Needs CUDA and flash-linear-attention; elsewhere it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import sys
import time
from pathlib import Path


def watch_autotuning(log: list[dict], *, stall_s: float) -> bool:
    """Print each configuration before Triton's autotuner benchmarks it and its time after, and re-arm the stack
    dump (a dump then means `stall_s` without progress); False where this Triton's Autotuner has no
    `_bench(self, *args, config, **meta)` to wrap."""
    from triton.runtime.autotuner import Autotuner

    bench = getattr(Autotuner, "_bench", None)
    if bench is None:
        return False

    def _bench(self, *args, config, **meta):
        name = getattr(getattr(self, "base_fn", None), "__name__", None) or getattr(self.fn, "__name__", "?")
        print(f"  tuning {name}: {config} ...", flush=True)
        faulthandler.dump_traceback_later(stall_s, repeat=True)
        started = time.perf_counter()
        result = bench(self, *args, config=config, **meta)
        log.append({"kernel": name, "config": str(config), "seconds": round(time.perf_counter() - started, 3)})
        print(f"  tuning {name}: {config} took {log[-1]['seconds']} s", flush=True)
        return result

    Autotuner._bench = _bench
    return True


def call(head_dim: int, dtype, *, backward: bool, batch: int = 2, length: int = 512, heads: int = 4) -> dict:
    """One chunked gated-delta-rule call of fla at these shapes (and its backward): seconds, outputs finite."""
    import torch
    import torch.nn.functional as F
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    torch.manual_seed(0)
    shape = (batch, length, heads, head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, requires_grad=backward) for _ in range(3))
    g = F.logsigmoid(torch.randn(batch, length, heads, device="cuda", dtype=torch.float32))
    beta = torch.rand(batch, length, heads, device="cuda", dtype=dtype)
    started = time.perf_counter()
    o, _ = chunk_gated_delta_rule(q, k, v, g=g, beta=beta, scale=head_dim**-0.5, use_qk_l2norm_in_kernel=True)
    torch.cuda.synchronize()
    record = {"head_dim": head_dim, "dtype": str(dtype).removeprefix("torch."), "forward_s": round(time.perf_counter() - started, 2),
              "finite": bool(torch.isfinite(o).all())}
    if backward:
        started = time.perf_counter()
        o.float().square().mean().backward()
        torch.cuda.synchronize()
        record["backward_s"] = round(time.perf_counter() - started, 2)
        record["finite"] = record["finite"] and all(bool(torch.isfinite(t.grad).all()) for t in (q, k, v))
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--head-dims", default="64,32", help="comma-separated, in order")
    p.add_argument("--dtypes", default="bf16", help="comma-separated: bf16, fp16, fp32")
    p.add_argument("--backward", action="store_true", help="also each call's backward")
    p.add_argument("--stall-s", type=float, default=45.0, help="dump every thread's stack after this long, and again")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device")
        import fla  # noqa: F401
    except (ImportError, RuntimeError, OSError) as exc:
        print(f"gdn_probe.py: needs CUDA and flash-linear-attention ({exc})", file=sys.stderr)
        return 2
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    tuning: list[dict] = []
    watched = watch_autotuning(tuning, stall_s=a.stall_s)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, autotuning watched: {watched}", flush=True)
    calls = []
    for name in a.dtypes.split(","):
        for head_dim in (int(d) for d in a.head_dims.split(",")):
            print(f"call: {name}, head_dim {head_dim}{', with backward' if a.backward else ''}", flush=True)
            faulthandler.dump_traceback_later(a.stall_s, repeat=True)
            calls.append(call(head_dim, dtypes[name], backward=a.backward))
            print(json.dumps(calls[-1]), flush=True)
            if a.out:  # written after every call: a hang later keeps what came before
                a.out.write_text(json.dumps({"calls": calls, "tuning": tuning}, indent=1) + "\n")
    faulthandler.cancel_dump_traceback_later()
    return 0


if __name__ == "__main__":
    sys.exit(main())
