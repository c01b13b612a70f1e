import json
import math
import shlex
import signal
import subprocess
import time

import pytest
import torch

from composer.config import ModelConfig
from composer.model import build_model
from composer.engine.trainer import TrainerConfig, lr_multiplier, param_groups
from conftest import app_argv, cli_env, run_cli


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainerConfig(warmup=0.1, min_lr_ratio=0.1, schedule="cosine")
    lrs = [lr_multiplier(s, total=100, cfg=cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_wsd_schedule_is_flat_then_linear():
    cfg = TrainerConfig(warmup=0.25, decay=0.2, min_lr_ratio=0.0, schedule="wsd")
    lrs = [lr_multiplier(s, total=100, cfg=cfg) for s in range(100)]
    assert lrs[24] == 1.0 and all(v == 1.0 for v in lrs[25:80])
    assert lrs[80] == pytest.approx(0.95) and lrs[99] == pytest.approx(0.0)


def test_no_weight_decay_on_norms_biases_and_ssm_parameters():
    model = build_model(ModelConfig(pattern="*-M", vocab_size=10, d_model=32))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    for needle in ("norm.weight", "A_log", "dt_bias", "mixer.D", "conv1d.bias"):
        assert any(needle in n for n in no_decay_names), needle
    assert all(p.ndim >= 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_config_validation():
    with pytest.raises(ValueError, match="grad_accum"):
        TrainerConfig(batch_size=10, grad_accum=3)
    with pytest.raises(ValueError, match="schedule"):
        TrainerConfig(schedule="linear")


def _losses(run_dir, whole_lines: bool = False) -> dict[int, float]:
    """Train losses by step; `whole_lines`: of a run still writing, only lines already ended (none yet: {})."""
    path = run_dir / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    if whole_lines:
        text = text[:text.rfind("\n") + 1]
    records = [json.loads(line) for line in text.splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def test_killed_run_resumes_exactly(tmp_path, tiny):
    """SIGKILL mid-run, rerun the same command: the same losses, step for step, as an uninterrupted run."""
    args = [*tiny, "model.pattern=*-M-", "trainer.max_tokens=40960", "trainer.log_every=1", "trainer.ckpt_every=10",
            "trainer.eval_every=15"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert run_cli(*args, f"hydra.run.dir={whole}").returncode == 0
    expected = _losses(whole)
    assert len(expected) == 80

    proc = subprocess.Popen([*app_argv(*args), f"hydra.run.dir={broken}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env())
    # Kill it as soon as it has written records past its first checkpoint (step 10), which resuming must drop.
    # Polling for that record rather than sleeping a fixed time: a fast machine finished all 80 steps in 0.5 s.
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (
            (broken / "checkpoint.pt").exists() and max(_losses(broken, whole_lines=True), default=0) > 10):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_losses(broken))
    assert 10 <= killed_at < 80, "the run was not killed mid-way"

    resumed = run_cli(*args, f"hydra.run.dir={broken}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert _losses(broken) == expected  # exact equality, every step
    final = json.loads((broken / "summary.json").read_text())["final"]
    assert final == json.loads((whole / "summary.json").read_text())["final"]


def test_resuming_drops_records_past_the_checkpoint_and_a_cut_line(tmp_path):
    from composer.engine.meter import Records

    lines = "".join(json.dumps({"step": s, "train/loss": 1.0 / s}) + "\n" for s in range(1, 6))
    (tmp_path / "metrics.jsonl").write_text(lines + '{"step": 6, "train/lo')  # killed mid-write
    Records(tmp_path, resume_step=3, cfg=TrainerConfig(), config={})
    assert list(_losses(tmp_path)) == [1, 2, 3]


def test_resuming_another_runs_checkpoint_is_refused(tmp_path, tiny):
    assert run_cli(*tiny, "model.pattern=*-", "trainer.max_tokens=1024", f"hydra.run.dir={tmp_path}").returncode == 0
    other = run_cli(*tiny, "model.pattern=-*", "trainer.max_tokens=1024", f"hydra.run.dir={tmp_path}")
    assert other.returncode == 2 and "belongs to another run (model.pattern: '*-' there, '-*' here" in other.stderr
    wider = run_cli(*tiny, "model.pattern=*-", "model.d_model=48", "trainer.max_tokens=1024", f"hydra.run.dir={tmp_path}")
    assert wider.returncode == 2 and "model.d_model: 32 there, 48 here" in wider.stderr


def test_checkpoints_load_without_unpickling(tmp_path, tiny):
    assert run_cli(*tiny, "model.pattern=*-", "trainer.max_tokens=1024", f"hydra.run.dir={tmp_path}").returncode == 0
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # raises if any object needs pickle
    assert state["step"] == 2 and math.isfinite(state["model"]["model.embed.weight"].sum().item())


def test_torch_compile_trains_like_eager(tmp_path, tiny):
    args = [*tiny, "model.pattern=*-", "trainer.max_tokens=4096", "trainer.log_every=1"]
    assert run_cli(*args, "trainer.compile=true", f"hydra.run.dir={tmp_path / 'compiled'}").returncode == 0
    assert run_cli(*args, f"hydra.run.dir={tmp_path / 'eager'}").returncode == 0
    compiled, eager = _losses(tmp_path / "compiled"), _losses(tmp_path / "eager")
    assert compiled.keys() == eager.keys() and len(eager) == 8
    assert all(abs(compiled[s] - eager[s]) < 1e-4 for s in eager)


def test_compile_also_compiles_the_loss_into_one_graph():
    """trainer.compile: the full loss (casts, cross-entropy, accuracy counts) is one compiled graph, not a dozen eager
    ops, and gives what the eager loss gives (ignored positions included)."""
    from torch._dynamo.utils import counters

    from composer.engine.objective import Objective, loss_and_correct
    from composer.engine.trainer import prepare

    torch.manual_seed(0)
    module = Objective(build_model(ModelConfig(pattern="*-", vocab_size=16, d_model=32)))
    prepare(module, TrainerConfig(compile=True, device="cpu"), torch.device("cpu"))
    logits, targets = torch.randn(4, 9, 16), torch.randint(0, 16, (4, 9))
    targets[0, :3] = -100  # IGNORE
    counters.clear()
    compiled = module.full_loss(logits, targets)
    assert counters["stats"]["unique_graphs"] == 1 and sum(counters["graph_break"].values()) == 0
    eager = loss_and_correct(logits, targets)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-5)
    assert compiled[1:] == eager[1:] and eager[2] == 33
    plain = Objective(build_model(ModelConfig(pattern="*-", vocab_size=16, d_model=32)))
    prepare(plain, TrainerConfig(device="cpu"), torch.device("cpu"))
    assert plain.full_loss is loss_and_correct  # without compile, the eager function itself


def test_ctrl_c_prints_the_command_that_resumes(tmp_path, tiny):
    args = [*tiny, "model.pattern=*-M-", "trainer.max_tokens=40960", "trainer.log_every=1", "trainer.ckpt_every=10"]
    proc = subprocess.Popen([*app_argv(*args), f"hydra.run.dir={tmp_path}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env())
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "checkpoint.pt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    command = shlex.split(stderr.split("Resume with: ")[1])
    assert command[0] == "composer-train" and command[-1] == f"hydra.run.dir={tmp_path}"
    resumed = run_cli(*command[1:])
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout + resumed.stderr
    assert max(_losses(tmp_path)) == 80


def _task_losses(run_dir, **trainer) -> dict[int, float]:
    """train_on_task on a tiny recall task (2-layer proxy, 32 sequences a step): its train losses."""
    from composer.runs.proxy import train_on_task
    from composer.tasks.mad import RecallConfig

    task = RecallConfig(n_train=256, n_test=64, length=32)
    model = ModelConfig(pattern="*-", vocab_size=task.vocab_size, d_model=32)
    cfg = TrainerConfig(max_tokens=3 * 32 * 32, batch_size=32, log_every=1, progress=False, device="cpu",
                        **{"ckpt_every": 0, **trainer})
    train_on_task(model_cfg=model, task_name="in_context_recall", task_cfg=task, trainer_cfg=cfg, seed=0,
                  run_dir=run_dir)
    return _losses(run_dir)


def test_checkpoints_mid_run_change_nothing_of_the_training(tmp_path):
    """A checkpoint every step against none mid-run (the GPU search presets' setting): the same losses, bit for bit."""
    every, none = _task_losses(tmp_path / "every", ckpt_every=1), _task_losses(tmp_path / "none")
    assert len(every) == 3 and every == none
    assert (tmp_path / "none" / "checkpoint.pt").exists()  # ckpt_every=0: the final one is still written


def test_summary_accounts_for_the_time_besides_the_steps(tmp_path):
    """summary.json's `seconds`: setup, mid-run checkpoints (one per step here but the last) and the final
    checkpoint and evaluation, each within the run's wall; no graph on a CPU; no wait without threads."""
    _task_losses(tmp_path / "every", ckpt_every=1)
    _task_losses(tmp_path / "none")
    every, none = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("every", "none"))
    assert set(every["seconds"]) == {"setup", "checkpoints", "final", "waiting"}, every["seconds"]
    assert 0 < every["seconds"]["setup"] and 0 < every["seconds"]["checkpoints"] and 0 < every["seconds"]["final"]
    assert every["seconds"]["checkpoints"] + every["seconds"]["final"] <= every["train_seconds"]
    assert every["seconds"]["waiting"] == 0.0
    assert "checkpoints" not in none["seconds"]  # ckpt_every=0: only the final one


def test_a_wait_for_another_threads_compiled_layers_is_counted():
    """`waited()`: the seconds this thread waited for the lock another thread's compiled layers hold."""
    import threading

    from composer.engine.graphs import compile_guard, waited

    cfg, held, seen = TrainerConfig(compile=True), threading.Event(), []

    def holder():
        with compile_guard(cfg):
            held.set()
            time.sleep(0.3)

    def waiter():
        held.wait()
        before = waited()
        with compile_guard(cfg):
            seen.append(waited() - before)

    threads = [threading.Thread(target=holder), threading.Thread(target=waiter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 0.2 < seen[0] < 5, seen
    before = waited()
    with compile_guard(TrainerConfig(compile=False)):  # eager layers hold no lock
        assert waited() == before


def test_an_evaluation_in_other_batches_scores_the_same(tmp_path):
    """trainer.eval_batch_size: the test set (64 sequences) in one batch, or in 7s with a last of one, scores as in
    the training micro-batch (32): every sequence counted once."""
    finals, batches = {}, {}
    for name, size in (("micro", 0), ("whole", 64), ("sevens", 7)):
        _task_losses(tmp_path / name, eval_batch_size=size)
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        finals[name], batches[name] = summary["final"], summary["eval_batches"]
    assert batches == {"micro": 2, "whole": 1, "sevens": 10}
    for name in ("whole", "sevens"):
        assert finals[name]["accuracy"] == finals["micro"]["accuracy"]
        assert finals[name]["loss"] == pytest.approx(finals["micro"]["loss"], rel=1e-5)


def test_task_micro_batch_size_is_accumulation(tmp_path):
    """micro_batch_size=8 of batch_size=32 is 4 micro-batches of 8 a step: exactly grad_accum=4."""
    micro = _task_losses(tmp_path / "micro", micro_batch_size=8)
    accum = _task_losses(tmp_path / "accum", grad_accum=4)
    assert len(accum) == 3 and micro == accum


@pytest.mark.parametrize("field, value", [
    ("lr", -1.0), ("lr", 0.0), ("min_lr_ratio", 1.5), ("min_lr_ratio", -0.1), ("beta1", 1.0), ("beta2", -0.5),
    ("weight_decay", -0.1), ("grad_clip", -1.0), ("max_tokens", 0), ("batch_tokens", -1), ("micro_batch_size", -2),
    ("eval_every", -1), ("eval_batch_size", -1), ("ckpt_every", -1), ("log_every", 0), ("peak_tflops", -1.0), ("device", "gpu"),
    ("device", "cuda:x"), ("warmup", 2.0),
])
def test_every_trainer_field_is_checked(field, value):
    with pytest.raises(ValueError, match=rf"^{field} "):
        TrainerConfig(**{field: value})


def test_shipped_trainer_configs_pass_the_checks():
    import yaml
    from pathlib import Path

    from composer.config import from_mapping

    configs = Path(__file__).resolve().parents[1] / "configs"
    for path in [*(configs / "trainer").glob("*.yaml"), *(configs / "search" / "evaluator").glob("*.yaml")]:
        data = yaml.safe_load(path.read_text())
        trainer = data if path.parent.name == "trainer" else data.get("trainer") or {}
        from_mapping(TrainerConfig, trainer, where="trainer")
