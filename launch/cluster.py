"""Executors (submitit's SLURM and local ones), submission errors, job states and cancelling.

A job is recorded in launch.json by executor and id: a SLURM job id (`123`, or `123_0` for an array
task) or, locally, the pid of submitit's job controller. States come from `scontrol show job`
(queued, running and recently ended jobs), then `sacct` where accounting is on, then the result
file submitit writes when the job's function returns.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from composer.errors import ComposerError, ConfigError

EXECUTORS = ("slurm", "local")
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "COMPLETING", "CONFIGURING", "SUSPENDED",
          "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}


NO_VAL = "4294967294"  # SLURM's "no value", the ArrayTaskId of an array's own record


class SlurmRefused(ComposerError):
    """sbatch refused a job; the message says why in one line."""


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What one job asks SLURM for (the local executor uses timeout_min and gpus_per_node only)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    timeout_min: int = 240
    nodes: int = 1
    cpus_per_task: int | None = None
    gpus_per_node: int = 0
    mem_gb: int | None = None
    signal_delay_s: int = 120  # SIGUSR1 this long before the time limit
    preemptible: bool = False  # #SBATCH --requeue and --signal=USR1@signal_delay_s to the steps (the pretraining job)
    dependency: str | None = None  # e.g. afterany:123
    extra: dict[str, Any] = field(default_factory=dict)  # more #SBATCH flags: {"constraint": "h100"}


def make_executor(kind: str, *, folder: Path, name: str, resources: Resources):
    """A submitit executor writing its scripts, pickles and logs into `folder`."""
    import submitit

    r = resources
    if kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=r.timeout_min, gpus_per_node=r.gpus_per_node, tasks_per_node=1)
        return executor
    if kind != "slurm":
        raise ConfigError(f"unknown executor {kind!r}; valid: {', '.join(EXECUTORS)}")
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise ConfigError("SLURM's sbatch/srun are not on PATH (run this on a login node), or use --executor local")
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
    extra: dict[str, Any] = dict(r.extra)
    if r.preemptible:
        extra["requeue"] = True
        extra["signal"] = f"USR1@{r.signal_delay_s}"  # to the steps: torchrun and its ranks
    else:
        extra.setdefault("signal", f"USR2@{r.signal_delay_s}")  # submitit's default, unused by these jobs
    params: dict[str, Any] = {"job_name": name, "time": r.timeout_min, "nodes": r.nodes, "ntasks_per_node": 1,
                              "use_srun": False, "wckey": None, "additional_parameters": extra}
    for key in ("partition", "account", "qos", "cpus_per_task", "dependency"):
        if getattr(r, key) is not None:
            params[key] = getattr(r, key)
    if r.gpus_per_node:
        params["gpus_per_node"] = r.gpus_per_node
    if r.mem_gb is not None:
        params["mem"] = f"{r.mem_gb}GB"
    executor.update_parameters(**params)
    return executor


def submit(executor, functions: list[Any]) -> list[dict[str, Any]]:
    """Submit `functions` (several: one SLURM job array); each job as {"id", "stdout", "stderr",
    "script"} (and the local controller's "started" time). sbatch's refusals become SlurmRefused."""
    import contextlib
    import io

    import submitit
    from submitit.core.utils import FailedJobError

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's stderr too
            jobs = [executor.submit(functions[0])] if len(functions) == 1 else executor.submit_array(functions)
    except (FailedJobError, subprocess.CalledProcessError) as exc:
        raise SlurmRefused(refusal(str(getattr(exc, "stderr", None) or exc), executor.parameters)) from exc
    # Plain records only: submitit's job objects must not outlive this call (their __del__ fails at exit).
    records = []
    for job in jobs:
        record = {"id": str(job.job_id), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                  "script": str(job.paths.submission_file) if job.paths.submission_file.exists() else None}
        if isinstance(executor, submitit.LocalExecutor):
            record["started"] = _process_start(record["id"])
        records.append(record)
    return records


def _process_start(pid: str) -> str | None:
    """A process's start time (clock ticks since boot), which tells it from a later one with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def partitions() -> list[str]:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(set(out.split()))


def refusal(stderr: str, parameters: dict[str, Any]) -> str:
    """sbatch's error as one line: 'SLURM refused the job: ...'."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    reason = (errors or lines or ["sbatch failed with no message"])[-1]
    reason = re.sub(r"^(sbatch: )?error: (Batch job submission failed: )?", "", reason)
    if "invalid partition" in reason.lower():
        listed = partitions()
        reason = (f"invalid partition {parameters.get('partition')!r}"
                  + (f" (sinfo lists: {', '.join(listed)})" if listed else ""))
    if "fetch config" in reason or "contact slurm controller" in reason.lower():
        return f"cannot reach the SLURM controller ({reason}); is this a login node of the cluster?"
    return f"SLURM refused the job: {reason}"


# ----------------------------------------------------------------------------------------- states

def _result_state(submitit_folder: Path, job_id: str) -> str | None:
    """COMPLETED or FAILED from submitit's result file, None when there is none."""
    from submitit.core.utils import JobPaths, pickle_load

    path = JobPaths(submitit_folder, job_id=job_id, task_id=0).result_pickle
    if not path.exists():
        return None
    try:
        outcome, _ = pickle_load(path)
    except Exception:  # being written
        return None
    return "COMPLETED" if outcome == "success" else "FAILED"


def _scontrol_states(base: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "--oneliner", base], capture_output=True, text=True, timeout=60)
    states: dict[str, str] = {}
    if out.returncode != 0:
        return states
    for line in out.stdout.splitlines():
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        state = fields.get("JobState", "UNKNOWN")
        if "ArrayJobId" in fields and "ArrayTaskId" in fields:
            tasks = re.sub(r"%\d+$", "", fields["ArrayTaskId"])
            if not re.fullmatch(r"[\d,-]+", tasks) or tasks == NO_VAL:
                # The array's own record, left when it ended before any task was split off (a
                # cancelled pending array): it stands for every task not listed on its own.
                states[f"{fields['ArrayJobId']}_*"] = state
                continue
            for part in tasks.split(","):
                low, _, high = part.partition("-")
                for index in range(int(low), int(high or low) + 1):
                    states[f"{fields['ArrayJobId']}_{index}"] = state
        elif "JobId" in fields:
            states[fields["JobId"]] = state
    return states


def _sacct_states(ids: list[str]) -> dict[str, str]:
    try:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0:
        return {}
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.partition("|")
        if state:
            states[job] = state.split()[0]
    return states


def _local_state(job: dict[str, Any], submitit_folder: Path) -> str:
    started = _process_start(job["id"])
    if started is not None and started == job.get("started"):
        return "RUNNING"
    return _result_state(submitit_folder, job["id"]) or "INTERRUPTED"


def states(executor: str, jobs: list[dict[str, Any]], *, submitit_folder: Path) -> dict[str, str]:
    """Job id -> its state (SLURM's words: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...)."""
    ids = [j["id"] for j in jobs]
    if executor == "local":
        return {j["id"]: _local_state(j, submitit_folder) for j in jobs}
    found: dict[str, str] = {}
    for base in dict.fromkeys(i.split("_")[0] for i in ids):
        found.update(_scontrol_states(base))
    missing = [i for i in ids if i not in found]
    if missing:
        found.update(_sacct_states(missing))
    return {i: found.get(i) or found.get(f"{i.split('_')[0]}_*") or _result_state(submitit_folder, i) or "UNKNOWN"
            for i in ids}


def active(state: str) -> bool:
    return state in ACTIVE


def cancel(executor: str, jobs: list[dict[str, Any]], *, submitit_folder: Path) -> list[str]:
    """Cancel the jobs still queued or running; their ids."""
    current = states(executor, jobs, submitit_folder=submitit_folder)
    live = [i for i, s in current.items() if active(s)]
    if not live:
        return []
    if executor == "local":
        for pid in live:
            try:
                os.kill(int(pid), signal.SIGTERM)  # submitit's controller passes it on to the job
            except ProcessLookupError:
                pass
        return live
    out = subprocess.run(["scancel", *live], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise ComposerError(f"scancel failed: {' '.join(out.stderr.split())}")
    return live
