"""Where a training step's time goes: torch.profiler over a few steps, reduced to shares of their wall time.

`trainer.profile_steps=n` profiles n steps once the run is warm (after the CUDA-graph capture and the first
compiled steps) and writes, per rank, `profile/rank<r>.json` (the shares below) and, on rank 0, the Chrome
trace `profile/rank0.trace.json.gz` (open it in Perfetto or chrome://tracing). summary.json gets rank 0's
shares under `profile`.

Shares of the profiled wall time (the span of everything traced), from intervals, so overlapping work is
counted once:
- on CUDA, from the GPU's kernels: `comm` (NCCL kernels), `compute` (every other kernel), `exposed_comm`
  (NCCL running while no other kernel runs: what overlap failed to hide, the figure that limits scaling)
  and `idle` (no kernel at all: the host, the data, launch gaps);
- on the CPU (gloo), from the host's operators: `comm` is the time inside collectives (c10d/gloo ops),
  `compute` the time in other operators and not in a collective, `exposed_comm` equals `comm`.
`comm + compute + idle` is 1 on the CPU; on CUDA compute and communication kernels may overlap, and
`exposed_comm + compute + idle` is 1. `top` lists the ten kernels (CUDA) or operators (CPU: inclusive of
the operators they call) with the most time.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
_ONE_AT_A_TIME = threading.Lock()  # torch.profiler is per process: runs in threads (an evaluation's) take turns
COMM_KERNEL = ("nccl",)  # NCCL's kernels: ncclDevKernel_AllGather_RING_LL, ncclKernel_ReduceScatter_...
COMM_OP = ("c10d::", "gloo:", "nccl:", "record_param_comms")  # collectives as host operators


def union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Merged, sorted, disjoint (start, end) intervals covering the same time."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def length(intervals: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in intervals)


def intersection(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total time in both of two unions (each disjoint and sorted)."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def shares(trace: dict[str, Any], steps: int) -> dict[str, Any]:
    """The shares of a Chrome trace's wall time (see the module docstring), per-step wall, the top kernels."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e and "ts" in e]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    device = "cuda" if kernels else "cpu"
    if kernels:
        work = kernels
        is_comm = [e["name"].lower().startswith(COMM_KERNEL) for e in kernels]
    else:
        work = [e for e in events if e.get("cat") == "cpu_op"]
        is_comm = [e["name"].startswith(COMM_OP) for e in work]
    if not work:
        return {"device": device, "steps": steps, "events": 0}
    comm = union((e["ts"], e["ts"] + e["dur"]) for e, c in zip(work, is_comm) if c)
    other = union((e["ts"], e["ts"] + e["dur"]) for e, c in zip(work, is_comm) if not c)
    wall = max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)
    busy = length(union(comm + other))
    comm_t, both = length(comm), intersection(comm, other)
    compute_t = length(other) if kernels else length(other) - both  # host ops that hold a collective are comm
    totals: dict[str, float] = {}
    for e in work:
        totals[e["name"]] = totals.get(e["name"], 0.0) + e["dur"]
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:10]
    return {"device": device, "steps": steps, "events": len(work), "wall_ms_per_step": round(wall / 1e3 / max(steps, 1), 3),
            "comm": round(comm_t / wall, 4), "compute": round(compute_t / wall, 4),
            "exposed_comm": round((comm_t - both) / wall if kernels else comm_t / wall, 4),
            "idle": round(1 - busy / wall, 4),
            "top": [{"name": name[:120], "share": round(t / wall, 4)} for name, t in top]}


class StepProfiler:
    """Profiles `n` steps from step `first` (steps done so far) of a run; see the module docstring."""

    def __init__(self, *, first: int, n: int, run_dir: Path, rank: int, cuda: bool) -> None:
        self.first, self.n, self.dir, self.rank, self.cuda = first, n, run_dir / "profile", rank, cuda
        self.prof: Any = None
        self.result: dict[str, Any] | None = None

    def before(self, step: int) -> None:
        """Before a step, with the number of steps done: starts the profiler at `first`."""
        if self.prof is None and self.result is None and step == self.first:
            if not _ONE_AT_A_TIME.acquire(blocking=False):
                self.result = {}
                log.warning("profile_steps: another run of this process is being profiled; %s is not", self.dir.parent)
                return
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            prof = torch.profiler.profile(activities=activities)
            try:
                prof.__enter__()
            except BaseException:
                _ONE_AT_A_TIME.release()
                raise
            self.prof = prof

    def after(self, step: int) -> dict[str, Any] | None:
        """After a step, with the number of steps done: stops at `first + n` and returns the shares."""
        if self.prof is None or step < self.first + self.n:
            return None
        if self.cuda:
            torch.cuda.synchronize()
        prof, self.prof = self.prof, None
        try:
            prof.__exit__(None, None, None)
        finally:
            _ONE_AT_A_TIME.release()
        self.result = self._write(prof)
        return self.result

    def close(self) -> None:
        """A run that ends inside the window (an error, a signal): the profiler stops, nothing is written."""
        if self.prof is not None:
            prof, self.prof = self.prof, None
            try:
                prof.__exit__(None, None, None)
            finally:
                _ONE_AT_A_TIME.release()

    def _write(self, prof: Any) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        raw = self.dir / f"rank{self.rank}.trace.json"
        prof.export_chrome_trace(str(raw))
        result = {"rank": self.rank, "first_step": self.first, **shares(json.loads(raw.read_text()), self.n)}
        (self.dir / f"rank{self.rank}.json").write_text(json.dumps(result, indent=1) + "\n")
        if self.rank == 0:
            with raw.open("rb") as src, gzip.open(f"{raw}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
        raw.unlink()
        return result
