"""benchmarks/eval_profile.py on a GPU: a real trace of one `mad_fast` evaluation (its three runs in threads,
graphed steps), in which the kernels are charged to the runs that launched them, by the thread each run's
summary.json names. (The CPU tests build the trace by hand: a CPU profiler records no other thread's ops.)"""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks/eval_profile.py"
_spec = importlib.util.spec_from_file_location("eval_profile", SCRIPT)
eval_profile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_profile)


def test_a_real_trace_charges_its_kernels_to_the_runs(tmp_path):
    # eager (the preset compiles): what is under test is the charging, and a compiling warm-up would take minutes
    overrides = ["evaluator=mad_fast", "space.length=8", "evaluator.trainer.max_tokens=4000000",
                 "evaluator.trainer.compile=false"]
    # 4M tokens: a warm H100 ran 1M in 1.1-2.7 s per run (2026-12-06), over before the window opened at 3 s
    # warm: in a cold process the trace would catch Triton tuning one kernel for all three runs (2026-12-06)
    record = eval_profile.profile("M*-*M-*-", overrides, tmp_path, trace_seconds=1.0, trace_after=3.0, warm=1)
    print(eval_profile.markdown(record))
    assert "gpu" in record, "the evaluation ended before the trace started: raise max_tokens"
    runs = set(record["critical_path"]["runs"])
    charged = record["gpu"]["runs"]
    named = sum(r["ms"] for name, r in charged.items() if name in runs)
    total = sum(r["ms"] for r in charged.values())
    threads = {name: eval_profile.trace_tid(r["thread"]) for name, r in record["critical_path"]["runs"].items()}
    threads["Python threads alive in the window"] = record["gpu"]["threads_alive"]
    print("run threads (as the trace names them):", threads)  # before the asserts: a call cut by its time limit still shows them
    assert len(runs & set(charged)) >= 2, (charged, threads)  # at least two of the three runs were stepping in the window
    assert named >= 0.9 * total, (charged, threads)  # what is not a run's: launches from before the window, none from others


def test_eager_kernels_are_charged_to_the_ops_that_launched_them(tmp_path):
    """--ops: every thread's CPU ops recorded, so the eager kernels of steps launched one by one (no graph) name their
    ops; nearly all of them, since only launches from before the window name none."""
    overrides = ["evaluator=mad_fast", "space.length=8", "evaluator.trainer.max_tokens=4000000",
                 "evaluator.trainer.compile=false", "evaluator.trainer.cuda_graph=false"]
    record = eval_profile.profile("M*-*M-*-", overrides, tmp_path, trace_seconds=1.0, trace_after=3.0, warm=1,
                                  ops=True)
    print(eval_profile.markdown(record))
    assert "gpu" in record, "the evaluation ended before the trace started: raise max_tokens"
    rows = record["gpu"]["eager_ops"]
    unnamed = sum(r["share"] for r in rows if r["op"].startswith("(no op recorded"))
    assert rows and unnamed < 0.1, rows
    assert any(r["op"].startswith("autograd::engine::evaluate_function") for r in rows), rows  # backward's own
