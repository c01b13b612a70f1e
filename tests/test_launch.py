"""`composer-launch` as a user runs it: real subprocesses through submitit, first with the local
executor, then on a real single-node SLURM cluster (tests/slurm.py): a job array of search workers
and the finalize job after it, a pretraining job requeued twice (by SLURM, and by itself after the
time-limit signal) that ends where an uninterrupted run ends, a fidelity study that requeues itself
and resumes, refusals in one line, cancelling, and the hydra-submitit-launcher presets.

Tiny settings throughout: 3-layer, 16-wide search proxies (~1 s a trial), a 4-layer, 32-wide
pretraining run of 40 steps over 2 CPU ranks, and a fidelity study of 3 patterns at one 32-wide rung.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tests.conftest import app_argv, cli_env
from tests.test_evaluator_lm import write_corpus
from tests.test_pretrain import MODEL, make_corpus
from tests.test_search_cli import TINY_SEARCH

optuna.logging.set_verbosity(optuna.logging.WARNING)

STEPS = 40
SEARCH = [*TINY_SEARCH, "n_trials=6", "strategy=random", "evaluator.top_k=0",
          "evaluator.trainer.max_tokens=8192"]  # 2x the tiny budget: both workers get to train
FIDELITY = ["patterns=['----','M---','*-*-']", "random=0", "baselines=[]", "space.length=4", "evaluator=lm",
            "evaluator.seq_len=32", "evaluator.val_tokens=4096", "evaluator.trainer.max_tokens=20000",
            "evaluator.model.d_model=16", "data.val_tokens=4096", "seq_len=32", "rungs.0.d_model=32",
            "rungs.0.n_blocks=4", "rungs.0.tokens_per_param=1", "rungs.0.n_heads=2", "rungs.0.mamba_head_dim=8",
            "rungs.0.mamba_d_state=8", "rungs.0.mamba_chunk_size=8", "rungs.0.seeds=[0]", "leaderboard=null",
            "bootstrap=200"]  # 3 rung runs of ~65K tokens: ~20 s on one CPU


def launch(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "composer.apps.launch", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env or cli_env())


def slurm_env(cluster) -> dict[str, str]:
    return {k: v for k, v in cluster.env.items() if k != "HYDRA_FULL_ERROR"} | {"OMP_NUM_THREADS": "1"}


def journal(path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))))


def assert_every_trial_accounted_for(study: optuna.Study, n: int) -> None:
    """n evaluations, no pattern trained twice, nothing left RUNNING, every trial with a role."""
    trials = study.get_trials()
    trained = [t.user_attrs["pattern"] for t in trials if t.user_attrs.get("role") == "evaluate"
               and (t.state == TrialState.COMPLETE or t.user_attrs.get("failure") == "error")]
    assert len(trained) == n and max(Counter(trained).values()) == 1, trained
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all("role" in t.user_attrs for t in trials)


def states(run: Path, *, cwd: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    proc = launch("status", "--json", str(run), cwd=cwd, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return {j["role"]: j["state"] for j in map(json.loads, proc.stdout.splitlines())}


def curve(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def wait_for(condition, *, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ----------------------------------------------------------------------------------------- local executor

def test_local_search_end_to_end_and_its_run_folder(tmp_path):
    proc = launch("search", "--executor", "local", "--workers", "2", *SEARCH, "name=t",
                  f"leaderboard={tmp_path / 'board.jsonl'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "outputs" / "launch" / "t"
    assert "6 evaluations (0 failed)" in proc.stdout and str(run / "search" / "result.json") in proc.stdout

    study = journal(run / "study.journal", "t")
    assert_every_trial_accounted_for(study, 6)
    workers = {t.user_attrs["worker"] for t in study.get_trials() if t.user_attrs.get("role") == "evaluate"}
    assert len(workers) == 2  # both array workers trained
    result = json.loads((run / "search" / "result.json").read_text())
    assert result["n_evaluations"] == 6 and len(result["architecture"]) == 3
    assert any(json.loads(line)["kind"] == "search" for line in (tmp_path / "board.jsonl").read_text().splitlines())

    record = json.loads((run / "launch.json").read_text())
    jobs = record["submissions"][-1]["jobs"]
    assert [j["role"] for j in jobs] == ["worker 0", "worker 1", "finalize"]
    assert [a for a in jobs[0]["argv"] if "phase" in a or "worker=" in a] == ["++phase=work", "++worker=0"]
    assert "++phase=finalize" in jobs[2]["argv"]
    assert "name: t" in (run / "config.yaml").read_text()
    commit = (run / "code" / "commit.txt").read_text()
    assert len(commit.split()[0]) == 40 or commit.startswith("unknown")
    assert (run / "code" / "diff.patch").exists()
    assert "phase work, worker 1" in (run / "logs" / "worker1.out").read_text()
    assert "wrote" in (run / "logs" / "finalize.out").read_text()
    assert states(run, cwd=tmp_path) == {"worker 0": "COMPLETED", "worker 1": "COMPLETED", "finalize": "COMPLETED"}
    shown = launch("status", cwd=tmp_path)  # the last run folder by default
    assert shown.returncode == 0 and "search 't' on local" in shown.stdout and shown.stdout.count("COMPLETED") == 3


def test_two_work_phases_then_finalize_on_one_journal(tmp_path):
    """What the array runs, without the launcher: phase=work twice at once, then phase=finalize."""
    storage = tmp_path / "study.journal"
    common = ["search", *SEARCH, "name=w", "workers=1", f"storage={storage}", f"hydra.run.dir={tmp_path / 'w'}",
              "leaderboard=null"]
    workers = [subprocess.Popen([*app_argv(*common), "++phase=work", f"++worker={i}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
               for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-3000:]
    assert not (tmp_path / "w" / "result.json").exists()  # workers aggregate nothing
    study = journal(storage, "w")
    assert_every_trial_accounted_for(study, 6)
    n_trials = len(study.get_trials())

    final = subprocess.run([*app_argv(*common), "++phase=finalize"], capture_output=True,
                           text=True, timeout=300, env=cli_env())
    assert final.returncode == 0, final.stderr[-3000:]
    assert "6 evaluations (0 failed)" in final.stdout
    result = json.loads((tmp_path / "w" / "result.json").read_text())
    assert result["n_evaluations"] == 6 and len(result["top"]) == 6
    assert len(journal(storage, "w").get_trials()) == n_trials  # finalize ran no search trial

    empty = subprocess.run([*app_argv(*common), "name=empty", "++phase=finalize"],
                           capture_output=True, text=True, timeout=120, env=cli_env())
    assert empty.returncode == 2 and "no trial completed" in empty.stderr and empty.stderr.strip().count("\n") == 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("launch") / "corpus")


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("fidelity") / "corpus")


def fidelity_args(text: Path, name: str) -> list[str]:
    return [*FIDELITY, f"name={name}", f"evaluator.corpus.path={text}", f"data.path={text}"]


def pretrain_args(corpus: Path, name: str) -> list[str]:
    return [*MODEL, f"name={name}", f"data.path={corpus}", "data.val_tokens=4000",
            f"data.cache_dir={corpus.parent / 'cache'}", "seq_len=32", "trainer.batch_size=8",
            "trainer.micro_batch_size=2", f"trainer.max_tokens={STEPS * 8 * 32}", "trainer.log_every=1",
            "trainer.eval_every=10", "trainer.ckpt_every=10", "trainer.progress=false", "export=false",
            "needle=false", "leaderboard=null"]


@pytest.fixture(scope="module")
def reference(corpus) -> Path:
    """An uninterrupted 2-rank run through the local executor (torchrun --standalone); its run folder."""
    cwd = corpus.parent
    # Launched from a config file (as composer-extrapolate writes one): the SLURM test's overrides
    # must give the same run.
    shown = subprocess.run([sys.executable, "-m", "composer.apps.pretrain", *pretrain_args(corpus, "ref"), "--cfg",
                            "job"], capture_output=True, text=True, timeout=120, env=cli_env())
    assert shown.returncode == 0, shown.stderr
    (cwd / "ref.yaml").write_text(shown.stdout)
    proc = launch("pretrain", "--executor", "local", "--procs-per-node", "2", "--config", str(cwd / "ref.yaml"), cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"step {STEPS}, val loss" in proc.stdout
    return cwd / "outputs" / "launch" / "ref"


def test_local_pretrain_runs_two_ranks_and_keeps_its_folder(reference):
    summary = json.loads((reference / "pretrain" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["step"] == STEPS
    job = json.loads((reference / "launch.json").read_text())["submissions"][-1]["jobs"][0]
    assert job["role"] == "pretrain" and job["argv"][-1] == f"hydra.run.dir={reference / 'pretrain'}"
    assert "--standalone" in job["argv"] and "composer.apps.pretrain" in job["argv"]
    assert job["argv"][job["argv"].index("--config-name") + 1] == "ref"
    log = (reference / "logs" / "pretrain.out").read_text()
    assert "torch.distributed.run --standalone --nnodes 1 --nproc_per_node 2 -m composer.apps.pretrain" in log
    assert states(reference, cwd=reference.parents[2]) == {"pretrain": "COMPLETED"}


def test_bad_input_is_one_line(tmp_path, corpus, text):
    cases = [
        (["search", "--executor", "local", *SEARCH, "bogus=1"], "unknown config key 'bogus'"),
        (["search", "--executor", "local", *SEARCH, "n_trials=0"], "n_trials must be a positive integer"),
        (["search", "--executor", "local", "--workers", "0", *SEARCH], "--workers must be a positive integer"),
        (["search", "--executor", "local", *SEARCH, "phase=work"], "phase= and worker= are composer-launch's"),
        (["search", "--executor", "local", *SEARCH, f"hydra.run.dir={tmp_path}"], "use --dir for the run folder"),
        (["pretrain", "--executor", "local", "--nodes", "2", *pretrain_args(corpus, "x")], "--nodes must be 1"),
        (["pretrain", "--executor", "local", *pretrain_args(corpus, "x"), "model.pattern=*A"],
         "unknown primitive 'A' at position 1"),
        (["pretrain", "--executor", "local", *pretrain_args(corpus, "x"), "model.pattern=*-", "model.d_model=34"],
         "model.attention: head size 17 (d_model 34 / 2 heads) must be even"),  # the width, before the job queues
        (["pretrain", "--executor", "local", "--config", str(tmp_path / "nope.yaml")], "no such YAML file"),
        (["fidelity", *fidelity_args(text, "x"), "rungs.0.widht=64"], "unknown config key 'rungs[0].widht'"),
        (["fidelity", *fidelity_args(text, "x"), "rungs.0.seeds=[]"], "rungs.r1.seeds must be distinct integers"),
        (["fidelity", "--gpus-per-node", "-1", *fidelity_args(text, "x")], "--gpus-per-node must be non-negative"),
        (["status", str(tmp_path)], "is not a composer-launch run folder"),
        (["deploy"], "unknown command 'deploy'"),
    ]
    for args, message in cases:
        proc = launch(*args, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert proc.stderr.startswith("composer-launch: error: ") and message in proc.stderr, (args, proc.stderr)
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not (tmp_path / "outputs").exists()  # nothing was submitted, no run folder written


def test_the_slurm_presets_are_hydra_launchers_of_both_apps(tmp_path):
    for app in (["search"], []):
        proc = subprocess.run([*app_argv(*app), "hydra/launcher=slurm_gpu",
                               "hydra.launcher.partition=gpu", "--cfg", "hydra"], capture_output=True, text=True,
                              timeout=120, env=cli_env())
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "SlurmLauncher" in proc.stdout and "partition: gpu" in proc.stdout and "gpus_per_node: 1" in proc.stdout


# ----------------------------------------------------------------------------------------- SLURM

def test_slurm_search_array_then_finalize(slurm, tmp_path):
    env = slurm_env(slurm)
    proc = launch("search", "--workers", "2", "--partition", slurm.partition, "--cpus-per-task", "1", "--wait",
                  *SEARCH, "name=s", "leaderboard=null", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    run = tmp_path / "outputs" / "launch" / "s"
    assert_every_trial_accounted_for(journal(run / "study.journal", "s"), 6)
    assert json.loads((run / "search" / "result.json").read_text())["n_evaluations"] == 6
    jobs = json.loads((run / "launch.json").read_text())["submissions"][-1]["jobs"]
    array = jobs[0]["id"].split("_")[0]
    assert [j["id"] for j in jobs[:2]] == [f"{array}_0", f"{array}_1"]
    workers = Path(jobs[0]["sbatch"]).read_text()
    finalize = Path(jobs[2]["sbatch"]).read_text()
    assert "#SBATCH --array=0-1%2" in workers and f"#SBATCH --partition={slurm.partition}" in workers
    assert f"#SBATCH --dependency=afterany:{array}" in finalize
    ended = {j["id"]: slurm.job(j["id"]) for j in jobs}
    assert all(info["JobState"] == "COMPLETED" for info in ended.values())
    assert ended[jobs[2]["id"]]["StartTime"] >= max(ended[j["id"]]["EndTime"] for j in jobs[:2])  # after the array
    assert states(run, cwd=tmp_path, env=env) == {"worker 0": "COMPLETED", "worker 1": "COMPLETED",
                                                  "finalize": "COMPLETED"}


def test_slurm_pretrain_requeued_twice_ends_like_an_uninterrupted_run(slurm, corpus, reference):
    """Requeued by itself after the time-limit signal (SIGUSR1 to the job's steps, as `--signal` sends
    it), then by `scontrol requeue`: it resumes each time and ends with the reference's losses."""
    env, cwd = slurm_env(slurm), corpus.parent
    proc = launch("pretrain", "--procs-per-node", "2", "--cpus-per-task", "2", "--partition", slurm.partition,
                  *pretrain_args(corpus, "rq"), cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = cwd / "outputs" / "launch" / "rq"
    job = json.loads((run / "launch.json").read_text())["submissions"][-1]["jobs"][0]["id"]
    script = next((run / "sbatch").glob("pretrain.*.sh")).read_text()
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=USR1@120" in script

    def saved() -> int:
        state = run / "pretrain" / "checkpoint" / "state.json"
        try:
            return json.loads(state.read_text())["step"]
        except (OSError, ValueError):
            return 0

    def restarts() -> int:
        return int(slurm.job(job).get("Restarts", 0))

    # A requeued job waits cred_expire (AuthInfo) before it may start again: up to 121 s by default.
    wait_for(lambda: saved() >= 10, timeout=120, what="the first checkpoint")
    slurm.run("scancel", "--signal=USR1", job)  # the time-limit warning: checkpoint, then `scontrol requeue`
    wait_for(lambda: restarts() == 1, timeout=60, what="the job to requeue itself")
    first = saved()
    wait_for(lambda: saved() >= 20 and saved() > first, timeout=240, what="a checkpoint after the first restart")
    slurm.run("scontrol", "requeue", job)  # as preemption does: SIGTERM, checkpoint, back in the queue
    wait_for(lambda: states(run, cwd=cwd, env=env)["pretrain"] == "COMPLETED", timeout=240, what="the job to end",
             poll=1.0)
    assert restarts() == 2
    done = json.loads((run / "pretrain" / "summary.json").read_text())
    ref = json.loads((reference / "pretrain" / "summary.json").read_text())
    assert done["status"] == "completed" and done["step"] == STEPS
    assert done["final"] == ref["final"]  # the same final loss, to the bit
    assert curve(run / "pretrain") == curve(reference / "pretrain")
    log = (run / "logs" / "pretrain.out").read_text()
    assert "requeueing job" in log and log.count("resumed from") == 2
    assert "--rdzv-backend c10d --rdzv-endpoint" in log and f"--rdzv-id {job}" in log


def test_slurm_fidelity_requeues_itself_and_resumes(slurm, text, tmp_path):
    """One job, one srun step: the time-limit signal (SIGUSR1 to the steps) in its second rung run, the
    job requeues itself, and the rerun reads the finished run back and ends the study."""
    env = slurm_env(slurm) | {"COMPOSER_CACHE": str(tmp_path / "cache")}
    proc = launch("fidelity", "--partition", slurm.partition, "--cpus-per-task", "1", *fidelity_args(text, "f"),
                  cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitted fidelity study 'f' as job" in proc.stdout and "1 worker(s)" in proc.stdout
    run = tmp_path / "outputs" / "launch" / "f"
    (job,) = json.loads((run / "launch.json").read_text())["submissions"][-1]["jobs"]
    assert job["role"] == "fidelity" and job["argv"][:4] == ["srun", "--nodes=1", "--ntasks=1", "--unbuffered"]
    assert "workers=1" in job["argv"] and job["argv"][-1] == f"hydra.run.dir={run / 'fidelity'}"
    script = Path(job["sbatch"]).read_text()
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=USR1@120" in script
    assert "workers: 1" in (run / "config.yaml").read_text()

    wait_for(lambda: list((run / "fidelity" / "rungs").glob("*/*/summary.json")), timeout=120,
             what="the first rung run", poll=0.5)
    slurm.run("scancel", "--signal=USR1", job["id"])  # the time-limit warning
    wait_for(lambda: states(run, cwd=tmp_path, env=env)["fidelity"] == "COMPLETED", timeout=180,
             what="the job to end", poll=1.0)
    assert int(slurm.job(job["id"]).get("Restarts", 0)) == 1
    result = json.loads((run / "fidelity" / "fidelity.json").read_text())
    assert len(result["patterns"]) == 3 and all(p["rungs"]["r1"]["mean"] is not None for p in result["patterns"])
    log = (run / "logs" / "fidelity.out").read_text()
    assert f"requeueing job {job['id']}" in log and "(restart 1)" in log
    to_train = [int(line.split(" to train")[0].rsplit(" ", 1)[1]) for line in log.splitlines() if " to train," in line]
    assert to_train[0] == 3 and 0 < to_train[1] < 3, to_train  # the rerun read the finished run back
    shown = launch("status", str(run), cwd=tmp_path, env=env)
    assert shown.returncode == 0 and "fidelity 'f' on slurm" in shown.stdout and "COMPLETED" in shown.stdout


def test_slurm_refuses_a_partition_that_does_not_exist(slurm, tmp_path):
    proc = launch("search", "--partition", "nope", *SEARCH, "name=p", cwd=tmp_path, env=slurm_env(slurm))
    assert proc.returncode == 2
    listed = ", ".join(sorted(slurm.partitions))
    assert proc.stderr == (f"composer-launch: error: SLURM refused the job: invalid partition 'nope' "
                           f"(sinfo lists: {listed})\n")
    assert not (tmp_path / "outputs" / "launch" / "p").exists()  # no half-made run folder is left


def test_slurm_status_and_cancel(slurm, tmp_path):
    env = slurm_env(slurm)
    proc = launch("search", "--workers", "2", "--partition", slurm.partition, "--sbatch", "hold=true", *SEARCH,
                  "name=c", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "outputs" / "launch" / "c"
    assert set(states(run, cwd=tmp_path, env=env).values()) == {"PENDING"}
    again = launch("search", "--workers", "2", "--partition", slurm.partition, *SEARCH, "name=c", cwd=tmp_path, env=env)
    assert again.returncode == 2 and "jobs still queued or running" in again.stderr
    cancelled = launch("cancel", str(run), cwd=tmp_path, env=env)
    assert cancelled.returncode == 0 and "cancelled 3 job(s)" in cancelled.stdout, cancelled.stderr
    assert set(wait_for(lambda: (s := states(run, cwd=tmp_path, env=env)) and "PENDING" not in s.values() and s,
                        timeout=30, what="the jobs to be cancelled").values()) == {"CANCELLED"}
    assert "nothing to cancel" in launch("cancel", str(run), cwd=tmp_path, env=env).stdout


def test_a_composer_train_sweep_through_the_slurm_preset(slurm, tmp_path, tiny):
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "composer.apps.train", "-m", "hydra/launcher=slurm_cpu",
                           f"hydra.launcher.partition={slurm.partition}", "hydra.launcher.cpus_per_task=1",
                           "hydra.launcher.mem_gb=null", f"hydra.sweep.dir={sweep}", "model.pattern=*-,M-", *tiny,
                           "trainer.max_tokens=20000"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=slurm_env(slurm))
    assert proc.returncode == 0, proc.stderr[-3000:]
    patterns = {json.loads((sweep / n / "summary.json").read_text())["pattern"] for n in ("0", "1")}
    assert patterns == {"*-", "M-"}
    assert list((sweep / ".submitit").glob("*/*_submission.sh"))  # they went through sbatch


def test_a_composer_search_sweep_through_the_slurm_preset(slurm, tmp_path):
    """`composer-search -m hydra/launcher=slurm_cpu`: one SLURM array task per sweep point, each a whole search."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "composer.apps.search", "-m", "hydra/launcher=slurm_cpu",
                           f"hydra.launcher.partition={slurm.partition}", "hydra.launcher.cpus_per_task=1",
                           "hydra.launcher.mem_gb=null", f"hydra.sweep.dir={sweep}", *TINY_SEARCH, "n_trials=3",
                           "workers=1", "evaluator.top_k=0", "strategy=random,tpe", "leaderboard=null"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=slurm_env(slurm))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {n: json.loads((sweep / n / "result.json").read_text()) for n in ("random-mad_cpu-n3-s0",
                                                                              "tpe-mad_cpu-n3-s0")}
    assert all(r["name"] == n and r["n_evaluations"] == 3 for n, r in results.items())
    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")  # one sbatch: an array of both points
    assert "#SBATCH --array=0-1" in script.read_text()
