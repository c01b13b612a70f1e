"""What runs inside a submitted job: callables that submitit pickles and calls on the node.

Each runs one of composer's own commands as a child process, its output streamed into the job's
log, so a job does exactly what the same command does on a workstation:

    Command(argv, cwd)   a search worker or the finalize job: `python -m composer.apps.search ...`
    Pretrain(...)        the pretraining job: on SLURM one `srun` step of one torchrun per node,
                         locally one `torchrun --standalone`
    Resumable(argv, cwd) a command that resumes when rerun (composer-fidelity): on SLURM one `srun`
                         step on one node, locally the command itself

Preemption (pretraining, fidelity). SLURM sends `--signal=USR1@<delay>` to the steps before the
time limit (not to this process, which runs in the batch step) and SIGTERM when it preempts,
requeues or cancels the job. torchrun is told to pass SIGUSR1 on to its ranks (besides SIGTERM);
the trainer checkpoints at the end of the step on either and the command exits 128 + signal
(composer-pretrain with `status: preempted` in its summary). When the run stopped on SIGUSR1 and
SLURM is not already ending the job (no SIGTERM here), this job requeues itself with `scontrol
requeue`; the requeued job runs the same command in the same run folder, which resumes.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

# torchrun passes these on to its ranks (as the signal it got) instead of dying on SIGUSR1/2;
# the variables are read by torch >= 2.7 (older torchruns ignore them).
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"


class JobFailed(RuntimeError):
    """The job's command failed; the message names it and its exit code."""


def _run_forwarding(argv: list[str], *, cwd: str, env: dict[str, str], preemptible: bool) -> tuple[int, list[int]]:
    """Run argv, passing SIGTERM and SIGINT that reach this process on to it (and, when `preemptible`,
    SIGUSR1/SIGUSR2 as SIGUSR1, the one composer checkpoints on; otherwise they are ignored here);
    its exit code and the signals that arrived."""
    received: list[int] = []
    child = subprocess.Popen(argv, cwd=cwd, env=env)

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        if signum in (signal.SIGUSR1, signal.SIGUSR2) and not preemptible:
            return
        try:
            child.send_signal(signal.SIGUSR1 if signum == signal.SIGUSR2 else signum)
        except ProcessLookupError:
            pass

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        return child.wait(), received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass
class Command:
    """One composer command in a job; fails the job (JobFailed) on a non-zero exit."""

    argv: list[str]
    cwd: str
    env: dict[str, str] = field(default_factory=dict)  # added to the job's environment

    def __call__(self) -> dict[str, Any]:
        print(f"composer-launch: running {shlex.join(self.argv)}", flush=True)
        code, _ = _run_forwarding(self.argv, cwd=self.cwd, env={**os.environ, **self.env}, preemptible=False)
        if code != 0:
            raise JobFailed(f"{shlex.join(self.argv[:4])} ... exited with {code}")
        return {"returncode": 0}


def _restarts() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def _stopped(code: int, received: list[int], *, max_requeues: int) -> NoReturn:
    """The run checkpointed and stopped on a signal: end the job, and requeue it first when the
    signal was the time-limit warning (no SIGTERM: SLURM is not ending the job itself)."""
    if signal.SIGTERM in received or "SLURM_JOB_ID" not in os.environ:
        # SLURM is ending the job (preemption, requeue, cancel; it requeues by itself where it
        # should), or there is no SLURM to requeue with: end here, the checkpoint is kept.
        print(f"composer-launch: the run checkpointed and stopped (exit {code}); the same command resumes it",
              flush=True)
        sys.exit(code)
    restarts = _restarts()
    if restarts >= max_requeues:
        raise JobFailed(f"preempted again after {restarts} requeue(s) (max_requeues={max_requeues})")
    job = os.environ["SLURM_JOB_ID"]
    print(f"composer-launch: the run checkpointed before the time limit; requeueing job {job}", flush=True)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
    time.sleep(1)
    sys.exit(code)  # SystemExit, not an error: the requeued job writes the result


def first_node_address() -> str:
    """The address torchrun reaches the job's first node at (`scontrol show hostnames
    $SLURM_JOB_NODELIST`, then that node's NodeAddr, which is usually the same name)."""
    hosts = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]], capture_output=True,
                           text=True, check=True, timeout=60).stdout.split()
    head = hosts[0]
    shown = subprocess.run(["scontrol", "show", "node", "--oneliner", head], capture_output=True, text=True, timeout=60)
    for word in shown.stdout.split():
        if word.startswith("NodeAddr="):
            return word.split("=", 1)[1]
    return head


@dataclass
class Pretrain:
    """`composer-pretrain` over torchrun: one torchrun per node, `procs_per_node` ranks each."""

    overrides: list[str]  # composer-pretrain arguments: --config-path/--config-name if any, overrides, hydra.run.dir
    run_dir: str  # the pretraining run folder (summary.json tells a preempted run)
    cwd: str
    nodes: int = 1
    procs_per_node: int = 1
    cpus_per_task: int | None = None  # for the srun step: SLURM does not pass sbatch's on to srun
    port: int | None = None  # rendezvous port on the first node; None: 20000 + job id mod 20000
    max_requeues: int = 10  # self-requeues after a time-limit signal, counted by SLURM_RESTART_COUNT
    shutdown_timeout_s: int = 120  # how long torchrun waits for ranks to checkpoint after a signal

    def torchrun(self, *, rendezvous: list[str]) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", *rendezvous, "--nproc_per_node", str(self.procs_per_node),
                "-m", "composer.apps.pretrain", *self.overrides]

    def command(self, *, slurm: bool | None = None, endpoint: str | None = None, job: str | None = None) -> list[str]:
        """On SLURM: srun, one task (one torchrun) per node, rendezvous on the first node (found now
        unless `endpoint` is given). Elsewhere: torchrun --standalone."""
        if not (("SLURM_JOB_ID" in os.environ) if slurm is None else slurm):
            return self.torchrun(rendezvous=["--standalone", "--nnodes", "1"])
        job = job or os.environ["SLURM_JOB_ID"]
        if endpoint is None:
            endpoint = f"{first_node_address()}:{self.port or 20000 + int(job) % 20000}"
        srun = ["srun", f"--nodes={self.nodes}", f"--ntasks={self.nodes}", "--ntasks-per-node=1",
                "--kill-on-bad-exit=1", "--unbuffered"]
        if self.cpus_per_task:
            srun.append(f"--cpus-per-task={self.cpus_per_task}")
        return srun + self.torchrun(rendezvous=["--nnodes", str(self.nodes), "--rdzv-backend", "c10d",
                                                "--rdzv-endpoint", endpoint, "--rdzv-id", job])

    def status(self) -> str | None:
        try:
            return json.loads((Path(self.run_dir) / "summary.json").read_text()).get("status")
        except (OSError, ValueError):
            return None

    def __call__(self) -> dict[str, Any]:
        argv = self.command()
        env = {**os.environ, "PET_SIGNALS_TO_HANDLE": TORCHRUN_SIGNALS, "TORCHELASTIC_SIGNALS_TO_HANDLE": TORCHRUN_SIGNALS,
               "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(self.shutdown_timeout_s),
               "PET_SHUTDOWN_TIMEOUT": str(self.shutdown_timeout_s)}
        restarts = _restarts()
        print(f"composer-launch: running {shlex.join(argv)}" + (f" (restart {restarts})" if restarts else ""), flush=True)
        code, received = _run_forwarding(argv, cwd=self.cwd, env=env, preemptible=True)
        if code == 0:
            return {"returncode": 0, "restarts": restarts}
        status = self.status()
        if status != "preempted":
            raise JobFailed(f"torchrun exited with {code} (the run's status: {status or 'none'})")
        _stopped(code, received, max_requeues=self.max_requeues)


@dataclass
class Resumable(Command):
    """A command that resumes when rerun (composer-fidelity: finished runs are read back, the others
    resume from their checkpoints), in a job that requeues itself before its time limit. On SLURM it
    runs as one `srun` step, so that the time-limit signal reaches it."""

    cpus_per_task: int | None = None  # for the srun step: SLURM does not pass sbatch's on to srun
    max_requeues: int = 10  # self-requeues after a time-limit signal, counted by SLURM_RESTART_COUNT

    def command(self, *, slurm: bool | None = None) -> list[str]:
        if not (("SLURM_JOB_ID" in os.environ) if slurm is None else slurm):
            return list(self.argv)
        srun = ["srun", "--nodes=1", "--ntasks=1", "--unbuffered"]
        if self.cpus_per_task:
            srun.append(f"--cpus-per-task={self.cpus_per_task}")
        return [*srun, *self.argv]

    def __call__(self) -> dict[str, Any]:
        argv, restarts = self.command(), _restarts()
        print(f"composer-launch: running {shlex.join(argv)}" + (f" (restart {restarts})" if restarts else ""), flush=True)
        code, received = _run_forwarding(argv, cwd=self.cwd, env={**os.environ, **self.env}, preemptible=False)
        if code == 0:
            return {"returncode": 0, "restarts": restarts}
        if code != 128 + signal.SIGUSR1 and signal.SIGTERM not in received:
            raise JobFailed(f"{shlex.join(self.argv[:4])} ... exited with {code}")
        _stopped(code, received, max_requeues=self.max_requeues)
