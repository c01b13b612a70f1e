"""The step profile's shares (composer/engine/profile.py) on hand-made traces, where each share is known."""

from __future__ import annotations

import pytest

from composer.engine.profile import intersection, shares, union


def kernel(name: str, start: float, end: float) -> dict:
    return {"ph": "X", "cat": "kernel", "name": name, "ts": start, "dur": end - start}


def op(name: str, start: float, end: float) -> dict:
    return {"ph": "X", "cat": "cpu_op", "name": name, "ts": start, "dur": end - start}


def test_union_and_intersection_count_overlaps_once():
    assert union([(5, 8), (0, 2), (1, 3), (8, 9)]) == [(0, 3), (5, 9)]
    assert intersection([(0, 3), (5, 9)], [(2, 6), (8, 20)]) == 1 + 1 + 1


def test_cuda_shares_split_communication_hidden_behind_compute_from_exposed():
    trace = {"traceEvents": [
        op("ProfilerStep", 0, 30),  # the host: the wall spans it
        kernel("sm90_xmma_gemm_bf16", 0, 10), kernel("ncclDevKernel_AllGather_RING_LL", 5, 15),
        kernel("ncclDevKernel_ReduceScatter_Sum", 12, 14), kernel("flash_fwd_kernel", 20, 25),
        {"ph": "i", "name": "marker", "ts": 40}]}  # not a complete event: ignored
    out = shares(trace, steps=3)
    assert out["device"] == "cuda" and out["events"] == 4 and out["wall_ms_per_step"] == pytest.approx(0.01)
    assert out["comm"] == pytest.approx(10 / 30, abs=1e-4)  # [5, 15]: the two NCCL kernels, counted once
    assert out["compute"] == pytest.approx(15 / 30, abs=1e-4)
    assert out["exposed_comm"] == pytest.approx(5 / 30, abs=1e-4)  # [10, 15]: no other kernel runs
    assert out["idle"] == pytest.approx(10 / 30, abs=1e-4)  # [15, 20] and [25, 30]
    assert out["exposed_comm"] + out["compute"] + out["idle"] == pytest.approx(1, abs=2e-4)
    assert [t["name"] for t in out["top"]][:2] == ["sm90_xmma_gemm_bf16", "ncclDevKernel_AllGather_RING_LL"]


def test_cpu_shares_take_collectives_out_of_the_operators_that_hold_them():
    trace = {"traceEvents": [op("aten::mm", 0, 10), op("FSDP::pre_forward", 8, 16), op("c10d::allgather_", 10, 14),
                             op("aten::add", 18, 20)]}
    out = shares(trace, steps=1)
    assert out["device"] == "cpu"
    assert out["comm"] == out["exposed_comm"] == pytest.approx(4 / 20)
    assert out["compute"] == pytest.approx(14 / 20)  # [0, 10], [14, 16], [18, 20]
    assert out["idle"] == pytest.approx(2 / 20)
    assert shares({"traceEvents": []}, steps=2) == {"device": "cpu", "steps": 2, "events": 0}


def test_runs_of_one_process_take_turns_and_a_run_ended_early_releases_its_turn(tmp_path, caplog):
    import torch

    from composer.engine.profile import StepProfiler

    def work() -> None:
        torch.randn(64, 64) @ torch.randn(64, 64)

    first = StepProfiler(first=0, n=1, run_dir=tmp_path / "a", rank=0, cuda=False)
    second = StepProfiler(first=0, n=1, run_dir=tmp_path / "b", rank=0, cuda=False)
    first.before(0)
    second.before(0)  # the first holds the process's profiler: this run goes unprofiled, and says so
    work()
    assert second.after(1) is None and "another run of this process is being profiled" in caplog.text
    out = first.after(1)
    assert out["device"] == "cpu" and out["events"] > 0 and (tmp_path / "a/profile/rank0.json").exists()
    assert not (tmp_path / "b/profile").exists()
    cut = StepProfiler(first=0, n=5, run_dir=tmp_path / "c", rank=0, cuda=False)
    cut.before(0)
    cut.close()  # ended inside its window: nothing written, the turn handed back
    again = StepProfiler(first=0, n=1, run_dir=tmp_path / "d", rank=0, cuda=False)
    again.before(0)
    work()
    assert again.after(1)["events"] > 0 and not (tmp_path / "c/profile").exists()
