"""`composer-pretrain` as a user runs it: real `torchrun` processes, FSDP2 over gloo on the CPU, real
distributed checkpoints, real signals.

The reference is a 2-rank run that reaches its global batch of 8 sequences through micro-batches of 2
(2 ranks x 2 micro-batches) with activation checkpointing; it must trace the same loss curve as one
process taking the 8 sequences at once. Killed or preempted 2-rank runs must end bit-identical to
the reference.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from composer.engine import checkpoint as ckpt
from composer.engine.graphs import GRAPH_WARMUP
from tests.conftest import cli_env

MODEL = ["model.pattern=*-M-", "model.d_model=32", "model.attention.n_heads=2", "model.mamba2.head_dim=16",
         "model.mamba2.d_state=16", "model.mamba2.chunk_size=32"]
STEPS = 30
TOLERANCE = 1e-5  # relative, per step: 1 and 2 ranks differ only in the order of float sums


def make_corpus(folder: Path) -> Path:
    rng = random.Random(0)
    words = ("the model reads text and attention recalls earlier tokens while the state space layer "
             "compresses history into a fixed state so long contexts cost little memory").split()
    folder.mkdir(parents=True)
    for d in range(40):
        (folder / f"doc{d:02d}.txt").write_text(" ".join(rng.choice(words) for _ in range(600)) + "\n")
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("pretrain") / "corpus")


def args(corpus: Path, run_dir: Path, *extra: str) -> list[str]:
    return [*MODEL, f"data.path={corpus}", "data.val_tokens=4000", f"data.cache_dir={corpus.parent / 'cache'}",
            "seq_len=32", "trainer.batch_size=8", f"trainer.max_tokens={STEPS * 8 * 32}", "trainer.log_every=1",
            "trainer.eval_every=10", "trainer.ckpt_every=10", "trainer.progress=false", "export=false", "needle=false",
            "leaderboard=null", f"hydra.run.dir={run_dir}", *extra]


TWO_RANKS = ["trainer.micro_batch_size=2", "trainer.activation_checkpointing=true", "trainer.peak_tflops=1.0"]


def torchrun(*overrides: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "composer.apps.pretrain", *overrides]


def run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=cli_env())


def curve(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(corpus) -> Path:
    """The uninterrupted 2-rank run."""
    run_dir = corpus.parent / "reference"
    proc = run(torchrun(*args(corpus, run_dir, *TWO_RANKS)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_two_ranks_with_accumulation_match_one_process(corpus, reference):
    one = corpus.parent / "one"
    proc = run([sys.executable, "-m", "composer.apps.pretrain", *args(corpus, one)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = curve(one), curve(reference)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    assert a[STEPS] < a[1] - 1.0  # it learns
    assert max(abs(a[s] - b[s]) / a[s] for s in a) < TOLERANCE
    s1, s2 = summary(one), summary(reference)
    assert s1["world_size"] == 1 and s2["world_size"] == 2 and s1["step"] == s2["step"] == STEPS
    assert abs(s1["final"]["loss"] - s2["final"]["loss"]) / s1["final"]["loss"] < TOLERANCE
    # validation covers the whole held-out split on either side: bits per byte from the same loss
    assert abs(s1["final"]["bits_per_byte"] - s2["final"]["bits_per_byte"]) < 1e-4
    # MFU = tokens/s x training FLOPs per token / (ranks x peak), the peak given as 1 TFLOP/s here
    assert s2["mfu"] == pytest.approx(s2["tokens_per_s"] * s2["train_flops_per_token"] / 2e12, rel=1e-6)


def _start(command: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=cli_env(),
                            start_new_session=True)


def _wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, *, checkpointed: bool) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        done = max(curve(run_dir), default=0) if (run_dir / "metrics.jsonl").exists() else 0
        state = run_dir / ckpt.FOLDER / "state.json"
        saved = json.loads(state.read_text())["step"] if state.exists() else 0
        if done >= step and (saved >= step or not checkpointed):
            return
        time.sleep(0.2)
    raise AssertionError(f"the run did not reach step {step} (exit code {proc.poll()})")


def test_two_ranks_profile_their_steps(corpus, tmp_path):
    """trainer.profile_steps: each rank's shares of the profiled steps, rank 0's trace and summary."""
    run_dir = tmp_path / "profiled"
    proc = run(torchrun(*args(corpus, run_dir, *TWO_RANKS, "trainer.profile_steps=2", "trainer.max_tokens=2560")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((run_dir / "profile" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, shares in enumerate(ranks):
        assert shares["rank"] == r and shares["device"] == "cpu" and shares["steps"] == 2
        assert shares["first_step"] == GRAPH_WARMUP + 1  # past the warm-up and the step a graph would be captured at
        assert 0 < shares["comm"] < 1 and shares["comm"] == shares["exposed_comm"]  # gloo's collectives, seen
        assert shares["comm"] + shares["compute"] + shares["idle"] == pytest.approx(1, abs=2e-4)
        assert shares["wall_ms_per_step"] > 0 and shares["top"]
    assert summary(run_dir)["profile"] == ranks[0]
    with gzip.open(run_dir / "profile" / "rank0.trace.json.gz") as f:
        events = json.load(f)["traceEvents"]  # the Chrome trace, for Perfetto
    steps = [e for e in events if e.get("cat") == "user_annotation" and e.get("name") == "step profiled"]
    assert len(steps) == 2  # each profiled step named by its run (whose kernels are whose, eval_profile.py)
    assert sorted(p.name for p in (run_dir / "profile").iterdir()) == ["rank0.json", "rank0.trace.json.gz", "rank1.json"]


def test_sigterm_checkpoints_stops_and_resumes_exactly(corpus, reference, tmp_path):
    run_dir = tmp_path / "preempted"
    command = torchrun(*args(corpus, run_dir, *TWO_RANKS))
    proc = _start(command, tmp_path / "first.log")
    _wait_for_step(run_dir, proc, 12, checkpointed=False)
    os.kill(proc.pid, signal.SIGTERM)  # to torchrun, which passes it to both ranks, as SLURM preemption does
    proc.wait(timeout=120)
    log = (tmp_path / "first.log").read_text()
    state = summary(run_dir)
    assert state["status"] == "preempted", log[-3000:]
    saved = json.loads((run_dir / ckpt.FOLDER / "state.json").read_text())["step"]
    assert saved == state["step"] and 12 <= saved < STEPS  # saved at the step it stopped, not the last periodic one
    assert log.count("SIGTERM received: checkpointed at step") == 1  # rank 0 speaks for the job
    again = run(command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert curve(run_dir) == curve(reference)  # bit-identical, before and after the stop
    assert summary(run_dir)["final"] == summary(reference)["final"]


def test_torchrun_killed_mid_run_resumes_to_the_same_final_loss(corpus, reference, tmp_path):
    run_dir = tmp_path / "killed"
    command = torchrun(*args(corpus, run_dir, *TWO_RANKS))
    proc = _start(command, tmp_path / "first.log")
    _wait_for_step(run_dir, proc, 13, checkpointed=True)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, with no chance to save
    proc.wait(timeout=60)
    assert not (run_dir / "summary.json").exists() or summary(run_dir)["status"] != "completed"
    again = run(command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary(run_dir)["final"] == summary(reference)["final"]
    assert curve(run_dir) == curve(reference)  # steps redone after the checkpoint are logged once, identically


def test_resume_under_other_settings_is_refused_in_one_line(corpus, reference, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(reference, run_dir)
    proc = run([sys.executable, "-m", "composer.apps.pretrain", *args(corpus, run_dir, "seed=1")])
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("composer-pretrain: error:") and "belongs to another run" in line and "seed: 0 there, 1 here" in line


def test_distributed_checkpoint_loads_without_unpickling(reference, tmp_path):
    folder = reference / ckpt.FOLDER
    weights = ckpt.load_model_weights(folder)  # no process group: what export uses
    assert weights["model.embed.weight"].shape == (320, 32) and weights["model.embed.weight"].dtype == torch.float32

    evil = tmp_path / "evil"
    shutil.copytree(folder, evil)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (evil / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(pickle.UnpicklingError, match="not checkpoint metadata"):
        ckpt.load_model_weights(evil)
    assert not marker.exists()


def test_a_pickled_entry_in_a_checkpoint_is_refused(tmp_path):
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "with-object"
    dcp.save({"w": torch.ones(3), "extra": {"note": "a python object"}}, checkpoint_id=str(folder), no_dist=True)
    state = {"w": torch.zeros(3), "extra": {"note": None}}
    with pytest.raises(dcp.api.CheckpointException) as failed:
        dcp.load(state, storage_reader=ckpt.SafeReader(str(folder)), planner=ckpt.TensorsOnlyPlanner(), no_dist=True)
    (cause,) = failed.value.failures.values()
    assert "extra.note is a pickled object; refusing to load it" in str(cause)
    assert state["extra"]["note"] is None


def test_extrapolated_config_is_a_pretrain_config(tmp_path):
    ex = tmp_path / "ex"
    proc = run([sys.executable, "-m", "composer.apps.extrapolate", "pattern=M-*-M-", "target=350m", "seq_len=2048",
                f"hydra.run.dir={ex}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = run([sys.executable, "-m", "composer.apps.pretrain", "--config-path", str(ex), "--config-name",
                 "pretrain", "--cfg", "job"])
    assert shown.returncode == 0, shown.stderr[-2000:]
    import yaml

    cfg = yaml.safe_load(shown.stdout)
    record = json.loads((ex / "extrapolation.json").read_text())
    assert cfg["model"]["pattern"] == record["pattern"] and cfg["seq_len"] == 2048
    assert cfg["trainer"]["batch_size"] == record["plan"]["batch_sequences"]
    assert cfg["trainer"]["max_tokens"] == record["plan"]["tokens"] and cfg["trainer"]["save_on_signal"] is True


def test_a_distributed_checkpoint_exports_to_safetensors(reference, tmp_path):
    from composer.evals.export import export_checkpoint, load_pretrained

    out = export_checkpoint(reference, tmp_path / "exported")
    model, tokenizer = load_pretrained(out)
    weights = ckpt.load_model_weights(reference / ckpt.FOLDER)
    assert model.cfg.pattern == "*-M-" and tokenizer.vocab_size == 257
    assert all(torch.equal(model.state_dict()[k.removeprefix("model.")], v) for k, v in weights.items())


def test_a_run_ends_exported_probed_and_on_the_leaderboard(corpus, tmp_path):
    run_dir, board = tmp_path / "full", tmp_path / "board.jsonl"
    overrides = args(corpus, run_dir, "seq_len=96", "trainer.max_tokens=3072", "trainer.eval_every=0")
    overrides = [o for o in overrides if not o.startswith(("export=", "needle=", "leaderboard="))]
    proc = run([sys.executable, "-m", "composer.apps.pretrain", *overrides, f"leaderboard={board}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    from composer.evals.export import load_pretrained

    model, _ = load_pretrained(run_dir / "model")
    assert model.cfg.pattern == "*-M-"
    done = summary(run_dir)
    assert {"needle@1x", "needle@2x"} <= set(done["needle"]) and 0 <= done["needle"]["needle@2x"] <= 1
    shown = subprocess.run([sys.executable, "-m", "composer.apps.leaderboard", "--file", str(board)], capture_output=True,
                           text=True, timeout=60, env=cli_env())
    assert shown.returncode == 0, shown.stderr
    table = shown.stdout.split("Full pretraining runs\n")[1].splitlines()
    assert table[0].split()[:3] == ["pattern", "params", "tokens"] and table[2].split()[0] == "*-M-"


def test_a_bad_model_is_refused_before_the_corpus_is_read(tmp_path):
    """The model section is checked first: a typo in the pattern costs no corpus fetch (the default corpus is a
    download) and names the pattern, not the data. The corpus path here does not exist."""
    for bad, named in [("model.pattern=*-Q-", "'Q' at position 2"),
                       ("model.d_model=100", "model.attention: head size 25 (d_model 100 / 4 heads) must be even")]:
        proc = run([sys.executable, "-m", "composer.apps.pretrain", *args(tmp_path / "no-corpus", tmp_path / "run"),
                    "model.attention.n_heads=4", bad])
        assert proc.returncode == 2
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith("composer-pretrain: error:") and named in line, proc.stderr[-2000:]
