"""benchmarks/eval_profile.py (issue 17): the GPU timeline arithmetic by hand, and a CPU run's critical path
read from the evaluation's own run folders, after a warm-up evaluation (structure only: timings are not tested)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env

SCRIPT = Path(__file__).parents[1] / "benchmarks/eval_profile.py"
_spec = importlib.util.spec_from_file_location("eval_profile", SCRIPT)
profile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(profile)


def kernel(ts: float, dur: float, stream: int, name: str = "gemm") -> dict:
    return {"cat": "kernel", "ts": ts, "dur": dur, "name": name, "args": {"stream": stream}}


def test_kernel_timeline_by_hand():
    # stream 7: [0, 40) and [60, 100); stream 9: [20, 50). Window 100 us: idle in [50, 60) only.
    trace = {"traceEvents": [kernel(0, 40, 7), kernel(20, 30, 9, "scan"), kernel(60, 40, 7),
                             {"cat": "cpu_op", "ts": 0, "dur": 500}]}
    t = profile.kernel_timeline(trace, window_us=100)
    assert t["kernels"] == 3 and t["busy"] == pytest.approx(0.9)
    assert t["share_with_k_kernels"] == {0: pytest.approx(0.1), 1: pytest.approx(0.7), 2: pytest.approx(0.2)}
    assert t["stream_busy"] == {"7": pytest.approx(0.8), "9": pytest.approx(0.3)}
    assert [(k["name"], k["count"], k["share"], k["mean_us"]) for k in t["top_kernels"]] == [
        ("gemm", 2, pytest.approx(80 / 110, abs=1e-3), 40), ("scan", 1, pytest.approx(30 / 110, abs=1e-3), 30)]
    assert profile.kernel_timeline({"traceEvents": []}, window_us=10) == {"kernels": 0}


def test_kernels_are_grouped_by_where_they_come_from():
    """Names as the H100 traces of 2026-12-06 show them: inductor's, ATen's eager ones, cuBLAS, cuDNN's attention,
    mamba-ssm's Triton kernels and causal-conv1d; anything else is "other"."""
    names = ["triton_poi_fused__to_copy_0", "triton_red_fused_add_mean_1",
             "void at::native::reduce_kernel<128, 4, at::native::ReduceOp<float>>",
             "nvjet_sm90_tst_64x32_64x16_2x4_h_bz_splitK_NTT",
             "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64",
             "_chunk_state_fwd_kernel", "void causal_conv1d_bwd_kernel<Causal_conv1d_bwd_kernel_traits<128>>",
             "chunk_gated_delta_rule_fwd_kernel_h"]
    trace = {"traceEvents": [kernel(10 * i, 4 + i, 7, name) for i, name in enumerate(names)]}
    families = profile.kernel_timeline(trace, window_us=100)["families"]
    assert {label: f["count"] for label, f in families.items()} == {
        "compiled (inductor)": 2, "Mamba-2 (mamba-ssm, causal-conv1d)": 2, "eager PyTorch": 1, "GEMM (cuBLAS)": 1,
        "attention (cuDNN, flash)": 1, "other": 1}
    assert families["compiled (inductor)"]["mean_us"] == 4.5 and families["compiled (inductor)"]["count_share"] == 0.25
    assert families["other"]["share"] == pytest.approx(11 / sum(4 + i for i in range(8)), abs=1e-3)
    assert "| eager PyTorch | 1 | 12.5% |" in profile.markdown({
        "pattern": "*", "evaluator": "mad", "parallel": 1, "device": "cuda", "score": 0.5,
        "critical_path": {"wall_seconds": 1.0, "busy_streams": 1.0, "longest_over_median": 1.0, "runs": {}},
        "gpu": {**profile.kernel_timeline(trace, window_us=100), "trace_after_s": 1.0}})


def test_a_window_longer_than_its_kernels_is_mostly_idle():
    # the same kernels in a 1,000 us window: 90 us busy, the rest (after the last kernel too) idle
    trace = {"traceEvents": [kernel(0, 40, 7), kernel(20, 30, 9), kernel(60, 40, 7)]}
    t = profile.kernel_timeline(trace, window_us=1000)
    assert t["busy"] == pytest.approx(0.09)
    assert t["share_with_k_kernels"] == {0: pytest.approx(0.91), 1: pytest.approx(0.07), 2: pytest.approx(0.02)}
    assert t["stream_busy"] == {"7": pytest.approx(0.08), "9": pytest.approx(0.03)}


def test_kernels_are_charged_to_the_run_whose_thread_launched_them():
    def launch(tid, ts, corr):
        return {"cat": "cuda_runtime", "name": "cudaGraphLaunch", "tid": tid, "ts": ts, "dur": 2, "args": {"correlation": corr}}

    def kern(corr, dur):
        return {"cat": "kernel", "name": "k", "ts": 0, "dur": dur, "args": {"correlation": corr, "stream": 7}}

    recall, copy = 140417200666304, 140417192273600  # Python thread ids; the trace has their low 32 bits
    # bit 31 of its low 32 set (0x94ff96c0): the trace has 2**32 minus them, 0x6b006940 (an H100's trace, 2026-12-06)
    compression = 0x7F2A94FF96C0
    trace = {"traceEvents": [
        launch(recall & 0xFFFFFFFF, 10, 7), launch(copy & 0xFFFFFFFF, 20, 8), launch(recall & 0xFFFFFFFF, 150, 9),
        launch(103, 210, 10), launch(0x6B006940, 230, 11),
        kern(7, 30), kern(7, 10),  # one graph replay: two kernels, one correlation
        kern(8, 5), kern(9, 4), kern(10, 6), kern(99, 1), kern(11, 2)]}
    trace["traceEvents"][2]["cat"] = "cuda_driver"  # a Triton kernel's launch (cuLaunchKernel)
    threads = {recall: "recall-lr0.003", copy: "copy-lr0.003", compression: "compression-lr0.003"}
    expected = {
        "(launch not traced)": {"kernels": 1, "ms": 0.0, "mean_us": 1.0, "busy": 0.01},
        "(thread 103)": {"kernels": 1, "ms": 0.01, "mean_us": 6.0, "busy": 0.06},
        "compression-lr0.003": {"kernels": 1, "ms": 0.0, "mean_us": 2.0, "busy": 0.02},
        "copy-lr0.003": {"kernels": 1, "ms": 0.01, "mean_us": 5.0, "busy": 0.05},
        "recall-lr0.003": {"kernels": 3, "ms": 0.04, "mean_us": pytest.approx(14.67, abs=0.01), "busy": 0.44}}
    assert profile.kernels_by_run(trace, threads, window_us=100) == expected
    # a thread no run names, but alive in the window, is shown with its name; a run's thread keeps the run's name
    alive = {103: "run_4", recall: "run_0"}
    named = profile.kernels_by_run(trace, threads, window_us=100, alive=alive)
    assert named.pop("(thread 103: run_4)") == expected.pop("(thread 103)") and named == expected


def test_eager_kernels_are_charged_to_the_op_and_scope_that_launched_them():
    """Each eager kernel names its launching op by External id; the row is the nearest enclosing non-ATen op (the
    scope) and the outermost ATen op inside it. Two threads' ops nest independently; kernels of other families and of
    a graph replay (no op) are counted apart or not at all."""
    def op(name, tid, ts, dur, ext):
        return {"cat": "cpu_op", "name": name, "tid": tid, "ts": ts, "dur": dur, "args": {"External id": ext}}

    def kern(ext, dur, name="void at::native::reduce_kernel<128, 4>"):
        return {"cat": "kernel", "name": name, "ts": 0, "dur": dur, "args": {"External id": ext, "stream": 7}}

    scan_bwd = "autograd::engine::evaluate_function: MambaChunkScanCombinedFnBackward"
    trace = {"traceEvents": [
        # thread 1, a backward node: aten::sum calls aten::sum.IntList's kernel; aten::flip inside it too
        op(scan_bwd, 1, 100, 50, 1), op("aten::sum", 1, 110, 10, 2), op("aten::sum", 1, 111, 5, 3),
        op("aten::flip", 1, 130, 10, 4),
        # thread 2 at the same times: the optimizer step, with a kernel launched by the step itself (no ATen op)
        op("Optimizer.step#AdamW.step", 2, 100, 50, 5), op("aten::_foreach_add_", 2, 105, 5, 6),
        # thread 2 later: an ATen op with no scope around it but the trainer's range, which names a run, not a scope
        {**op("step compression-lr0.003", 2, 190, 30, 8), "cat": "user_annotation"}, op("aten::copy_", 2, 200, 5, 7),
        kern(3, 6), kern(3, 4), kern(4, 5), kern(5, 2),
        kern(6, 3, "void at::native::multi_tensor_apply_kernel<Add>"), kern(7, 1, "void at::native::copy_kernel"),
        kern(99, 4),  # a graph replay: its External id names no op
        kern(2, 50, "triton_poi_fused_add_0")]}  # compiled: not an eager kernel
    rows = {r["op"]: (r["kernels"], r["share"], r["mean_us"]) for r in profile.kernels_by_op(trace)}
    eager = 6 + 4 + 5 + 2 + 3 + 1 + 4
    assert rows == {
        f"{scan_bwd} > aten::sum": (2, round(10 / eager, 3), 5.0),
        f"{scan_bwd} > aten::flip": (1, round(5 / eager, 3), 5.0),
        "Optimizer.step#AdamW.step": (1, round(2 / eager, 3), 2.0),
        "Optimizer.step#AdamW.step > aten::_foreach_add_": (1, round(3 / eager, 3), 3.0),
        "(no enclosing op) > aten::copy_": (1, round(1 / eager, 3), 1.0),
        "(no op recorded: a graph replay, or a launch outside the trace)": (1, round(4 / eager, 3), 4.0)}
    assert [r["op"] for r in profile.kernels_by_op(trace, top=2)] == [f"{scan_bwd} > aten::sum",
                                                                     f"{scan_bwd} > aten::flip"]
    record = {"pattern": "*", "evaluator": "mad", "parallel": 1, "device": "cuda", "score": 0.5,
              "critical_path": {"wall_seconds": 1.0, "busy_streams": 1.0, "longest_over_median": 1.0, "runs": {}},
              "gpu": {**profile.kernel_timeline(trace, window_us=100), "trace_after_s": 1.0,
                      "eager_ops": profile.kernels_by_op(trace)}}
    assert f"| {scan_bwd} > aten::sum | 2 | 0.01 | 40.0% | 5.0 |" in profile.markdown(record)


def test_a_cpu_evaluation_s_critical_path(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--pattern", "M*", "--out", str(tmp_path), "--",
                           "evaluator=mad_cpu", "space.length=2", "evaluator.trainer.max_tokens=4000",
                           "evaluator.parallel=2"], capture_output=True, text=True, timeout=600, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "profile.json").read_text())
    cp = record["critical_path"]
    assert len(cp["runs"]) == 6 and all(r["steps"] > 0 and r["seconds"] > 0 for r in cp["runs"].values())
    # two runs at a time: on average between one and two busy
    assert 0.5 < cp["busy_streams"] <= 2.05 and cp["longest_over_median"] >= 1
    assert record["device"] == "cpu" and "gpu" not in record and "| compression-lr" in proc.stdout
    # one untraced warm-up evaluation first, in its own folder: the profiled one trained its runs again
    assert len(record["warm_up_seconds"]) == 1 and "warm-up evaluation 1/1" in proc.stdout
    assert len(list((tmp_path / "warm0" / "trials").glob("*/*/summary.json"))) == 6
    # each run names the OS thread that stepped it (what a GPU trace's launches are charged by): two at a time
    threads = {r["thread"] for r in cp["runs"].values()}
    assert all(isinstance(t, int) for t in threads) and 1 <= len(threads) <= 2
    # where each run's time went besides its steps (summary.json's `seconds`), in the table too
    assert all(r["phases"]["setup"] > 0 and r["phases"]["final"] > 0 for r in cp["runs"].values())
    assert "| setup s | to graph s | checkpoints s | final s | capture s |" in proc.stdout


def test_compiled_layers_are_counted_per_evaluation_and_compile_once(tmp_path):
    """With compiled layers the record counts what torch.compile did in each evaluation: the warm-up compiles the
    layer types at the task's shapes, in one graph each (no breaks); the profiled evaluation, the same pattern again,
    compiles nothing (what a search worker's later candidates see)."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--pattern", "M-", "--out", str(tmp_path), "--",
                           "evaluator=mad_cpu", "space.length=2", "evaluator.trainer.max_tokens=2000",
                           "evaluator.trainer.compile=true", *(f"evaluator.tasks.{t}=null" for t in (
                               "in_context_recall", "fuzzy_in_context_recall", "noisy_in_context_recall",
                               "compression", "memorization"))],
                          capture_output=True, text=True, timeout=900, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "profile.json").read_text())
    assert list(record["critical_path"]["runs"]) == ["selective_copying-lr0.003"]
    warm, profiled = record["compiles"]
    assert warm["frames"] >= 2 and warm["graph_breaks"] == 0, warm  # Mamba-2's layer and the MLP's, at least
    assert profiled == {"frames": 0, "graphs": 0, "graph_breaks": 0}
    assert "compiled layers, per evaluation" in proc.stdout
