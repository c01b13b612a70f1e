"""The CUDA-graph training step (`trainer.cuda_graph`) and threaded runs (`evaluator.parallel`)
against the eager step on one GPU (collected only where a GPU is present).

Tolerances, after 24 steps of a hybrid proxy (the graph starts at step 1):
  fp32, TF32 off: losses 1e-4 relative, weights 1e-4 norm-relative. The graph replays the eager
  step's own kernels; what differs is AdamW's learning rate (an fp32 tensor instead of a Python
  float) and the order SDPA's backward accumulates in.
  bf16 autocast (with and without torch.compile): losses 2e-2, weights 2e-2 (bf16 rounding
  compounds over steps; as test_fused_loss_parity.py through a whole model).
Threaded evaluations on their own streams: every task's accuracy within 0.02 of one at a time.
"""

import gzip
import json

import pytest
import torch

from composer.engine.batches import ArrayBatches
from search.evaluator import Evaluator, evaluator_config_from_mapping
from tests.gpu.parity import no_tf32, norm_err, train_recall  # noqa: F401  (no_tf32: an autouse fixture)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PATTERN = "*-M-*M-M"


class _StopsAt12(ArrayBatches):
    """Ctrl-C as the 13th step asks for its batch, after step 12's checkpoint."""

    def next_batch(self):
        if self.position == 12:
            raise KeyboardInterrupt
        return super().next_batch()


def _train(tmp_path, name, batches=ArrayBatches, **trainer):
    return train_recall(tmp_path, name, pattern=PATTERN, steps=24, n_examples=512, batches=batches, **trainer)


@pytest.mark.parametrize("precision, compile, tol", [("fp32", False, 1e-4), ("bf16", False, 2e-2), ("bf16", True, 2e-2)])
def test_the_graphed_step_trains_as_the_eager_step(tmp_path, precision, compile, tol):
    eager, eager_losses, eager_weights = _train(tmp_path, "eager", precision=precision)
    graph, graph_losses, graph_weights = _train(tmp_path, "graph", precision=precision, compile=compile, cuda_graph=True)
    assert eager["impl"]["step"] == "eager" and graph["impl"]["step"] == "cuda_graph"
    assert "capture" not in eager["seconds"] and 0 < graph["seconds"]["capture"] < graph["seconds"]["to_graph"]
    assert len(graph_losses) == len(eager_losses) == 24
    err = ((graph_losses - eager_losses).abs() / eager_losses.abs()).max().item()
    print(f"{precision} compile={compile}: loss max rel err {err:.2e}, weights {norm_err(graph_weights, eager_weights):.2e}")
    assert err < tol
    assert norm_err(graph_weights, eager_weights) < tol


def test_the_mamba_kernels_run_inside_the_captured_graph(tmp_path):
    """mamba-ssm's Triton kernels and causal-conv1d are captured with the rest of the step: in the profiled
    steps after the capture every kernel of the step is launched by cudaGraphLaunch, none one by one."""
    from primitives.nn.mamba2 import _load_kernels

    if isinstance(_load_kernels(), str):
        pytest.skip(_load_kernels())
    summary, _, _ = _train(tmp_path, "graph", precision="bf16", cuda_graph=True, mamba2_impl="kernels", profile_steps=2)
    assert summary["impl"]["step"] == "cuda_graph" and summary["profile"]["events"] > 0
    with gzip.open(tmp_path / "graph" / "profile" / "rank0.trace.json.gz") as f:
        events = json.load(f)["traceEvents"]
    launcher = {e["args"]["correlation"]: e["name"] for e in events
                if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})}
    kernels = [e for e in events if e.get("cat") == "kernel"]
    by = {}
    for e in kernels:
        by.setdefault(launcher.get(e["args"].get("correlation"), "?"), []).append(e["name"])
    mamba = [name for name in by.get("cudaGraphLaunch", []) if "chunk" in name or "causal_conv1d" in name]
    alone = [name for how, names in by.items() if how != "cudaGraphLaunch" for name in names]
    print(f"graphed step, profile {summary['profile']}: {len(by.get('cudaGraphLaunch', []))} kernels from the graph "
          f"({len(mamba)} mamba-ssm/causal-conv1d), {len(alone)} launched alone: {sorted(set(alone))[:8]}")
    assert mamba, "no mamba-ssm kernel was launched from the graph"
    assert not [name for name in alone if "chunk" in name or "causal_conv1d" in name]
    assert len(alone) <= 8 * summary["profile"]["steps"]  # outside the graph: at most the step's few host-side fills


def test_a_graphed_run_resumes_from_its_checkpoint(tmp_path):
    """Stopped after 12 of 24 steps and resumed (a new capture): the same weights as uninterrupted."""
    _, _, whole = _train(tmp_path, "whole", precision="fp32", cuda_graph=True, ckpt_every=12)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "split", _StopsAt12, precision="fp32", cuda_graph=True, ckpt_every=12)
    _, _, resumed = _train(tmp_path, "split", precision="fp32", cuda_graph=True, ckpt_every=12)
    assert norm_err(resumed, whole) < 1e-4


EVAL = {"name": "gpu", "model": {"d_model": 64, "mamba2": {"impl": "torch", "head_dim": 16}},
        "tasks": {"in_context_recall": {"length": 64, "n_train": 1024, "n_test": 128},
                  "selective_copying": {"length": 64, "n_copy": 8, "n_train": 1024, "n_test": 128},
                  "memorization": {"n_test": 128}},
        "trainer": {"max_tokens": 200_000, "cuda_graph": True, "device": DEVICE.type}}


def test_threaded_runs_on_streams_score_as_one_at_a_time(tmp_path):
    one = Evaluator(evaluator_config_from_mapping(EVAL), run_dir=tmp_path / "one")(PATTERN)
    threads = Evaluator(evaluator_config_from_mapping({**EVAL, "parallel": 3}), run_dir=tmp_path / "threads")(PATTERN)
    print("one at a time", one["tasks"], f"{one['seconds']} s; 3 threads", threads["tasks"], f"{threads['seconds']} s")
    for task, accuracy in one["tasks"].items():
        assert abs(threads["tasks"][task] - accuracy) <= 0.02, task


def test_two_evaluations_in_one_process_score_as_one_at_a_time(tmp_path):
    """evaluations_per_worker=2: two evaluations of one process at once, each with its runs on their own streams."""
    import threading

    patterns = (PATTERN, "M-*-M-*-")
    alone = {p: Evaluator(evaluator_config_from_mapping(EVAL), run_dir=tmp_path / f"alone{i}")(p)
             for i, p in enumerate(patterns)}
    together: dict[str, dict] = {}
    cfg = evaluator_config_from_mapping({**EVAL, "parallel": 3})
    threads = [threading.Thread(target=lambda i=i, p=p: together.__setitem__(p, Evaluator(cfg, run_dir=tmp_path / f"t{i}")(p)))
               for i, p in enumerate(patterns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for p in patterns:
        print(p, "alone", alone[p]["tasks"], f"{alone[p]['seconds']} s; together", together[p]["tasks"],
              f"{together[p]['seconds']} s")
        for task, accuracy in alone[p]["tasks"].items():
            assert abs(together[p]["tasks"][task] - accuracy) <= 0.02, (p, task)


def test_forty_runs_at_once_never_share_a_stream():
    """torch's pool holds 32 streams per device: forty threads in `own_stream` hold distinct ones (the
    rest wait), where `torch.cuda.Stream()` alone hands the 33rd thread the first one's stream."""
    import threading
    import time

    from composer.engine.graphs import own_stream

    pool = [torch.cuda.Stream(DEVICE).stream_id for _ in range(33)]
    assert pool[32] == pool[0], "torch's pool is not 32 round robin: this test checks nothing"
    holding, clashes, lock = {}, [], threading.Lock()

    def run(i):
        with own_stream(DEVICE):
            stream = torch.cuda.current_stream(DEVICE).stream_id
            with lock:
                clashes.extend([i] if stream in holding.values() else [])
                holding[i] = stream
            torch.ones(1000, device=DEVICE).sum().item()
            time.sleep(0.1)
            with lock:
                del holding[i]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clashes == []
