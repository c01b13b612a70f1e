"""Real jobs on the single-node SLURM cluster of tests/slurm.py: what the launcher relies on.

Observed on slurm 22.05 (Debian bookworm), recorded here because the launcher is built on it:
- `scontrol requeue` on a running batch job: the script gets SIGTERM at once (tens of ms), and
  SIGKILL KillWait seconds later; the job is COMPLETING meanwhile, then PENDING (Reason=BeginTime)
  until cred_expire + 1 seconds have passed, then runs again with SLURM_RESTART_COUNT=1.
- A partition that does not exist: sbatch exits 1 with
  "sbatch: error: invalid partition specified: <name>" and
  "sbatch: error: Batch job submission failed: Invalid partition name specified".
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.slurm import KILL_WAIT_S, Cluster, slurm_cluster, wait_until


def test_sbatch_wait_runs_a_job_to_completion(slurm: Cluster, tmp_path: Path) -> None:
    result = slurm.run("sbatch", "--wait", "--parsable", f"--chdir={tmp_path}", "--output=%j.out",
                       "--wrap", "echo written by $SLURM_JOB_ID > out.txt")
    job_id = result.stdout.strip()
    assert (tmp_path / "out.txt").read_text() == f"written by {job_id}\n"
    info = slurm.job(job_id)
    assert (info["JobState"], info["ExitCode"], info["Partition"]) == ("COMPLETED", "0:0", slurm.partition)


def test_job_array_runs_every_task(slurm: Cluster, tmp_path: Path) -> None:
    job_id = slurm.sbatch("--array=0-1", f"--chdir={tmp_path}", "--output=%A_%a.out",
                          "--wrap", "echo $SLURM_ARRAY_JOB_ID > task_$SLURM_ARRAY_TASK_ID.txt")
    tasks = slurm.wait_for_jobs(job_id)
    assert sorted((t["ArrayTaskId"], t["JobState"]) for t in tasks) == [("0", "COMPLETED"), ("1", "COMPLETED")]
    for task in (0, 1):
        assert (tmp_path / f"task_{task}.txt").read_text() == f"{job_id}\n"


def test_dependency_afterok_waits_for_its_dependency(slurm: Cluster, tmp_path: Path) -> None:
    first = slurm.sbatch(f"--chdir={tmp_path}", "--output=first.out", "--wrap", "sleep 2; touch first.done")
    second = slurm.sbatch(f"--dependency=afterok:{first}", f"--chdir={tmp_path}", "--output=second.out",
                          "--wrap", "test -f first.done && echo saw first > second.txt")
    wait_until(lambda: slurm.job(second)["Reason"] == "Dependency", timeout=30,
               what=f"job {second} pending on its dependency", describe=lambda: str(slurm.job(second)))
    assert slurm.job(first)["JobState"] in {"PENDING", "RUNNING"}
    info = slurm.wait_for_job(second)
    assert info["JobState"] == "COMPLETED"
    assert (tmp_path / "second.txt").read_text() == "saw first\n"
    assert info["StartTime"] >= slurm.job(first)["EndTime"]  # ISO timestamps compare as strings


def test_dependency_afterok_on_a_failed_job_is_never_satisfied(slurm: Cluster, tmp_path: Path) -> None:
    first = slurm.sbatch(f"--chdir={tmp_path}", "--output=first.out", "--wrap", "exit 3")
    second = slurm.sbatch(f"--dependency=afterok:{first}", f"--chdir={tmp_path}", "--output=second.out",
                          "--wrap", "touch second.ran")
    assert slurm.wait_for_job(first)["JobState"] == "FAILED"
    wait_until(lambda: slurm.job(second)["Reason"] == "DependencyNeverSatisfied", timeout=30,
               what=f"job {second} to give up on {first}", describe=lambda: str(slurm.job(second)))
    assert slurm.job(second)["JobState"] == "PENDING"  # it stays queued until someone cancels it
    slurm.run("scancel", second)
    assert slurm.wait_for_job(second)["JobState"] == "CANCELLED"
    assert not (tmp_path / "second.ran").exists()


REQUEUE_SCRIPT = """#!/bin/bash
n=${SLURM_RESTART_COUNT:-0}
echo "start $n" >> starts.txt
if [ "$n" = 0 ]; then
  trap 'echo "$(date +%s.%N)" >> sigterm.txt' TERM  # note SIGTERM and carry on, as a slow checkpoint would
  while true; do date +%s.%N >> alive.txt; sleep 0.1; done
fi
echo "done $n" >> starts.txt
"""


def test_requeue_sends_sigterm_then_runs_the_job_again(slurm: Cluster, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(REQUEUE_SCRIPT)
    job_id = slurm.sbatch(f"--chdir={tmp_path}", "--output=job.out", "--open-mode=append", str(script))
    wait_until(lambda: (tmp_path / "alive.txt").exists(), timeout=30, what="the job to start",
               describe=lambda: str(slurm.jobs(job_id)))
    slurm.run("scontrol", "requeue", job_id)
    info = slurm.wait_for_job(job_id, timeout=90)
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1")
    assert (tmp_path / "starts.txt").read_text() == "start 0\nstart 1\ndone 1\n"
    # SIGTERM first, then SIGKILL after KillWait: the script outlived SIGTERM by about KillWait seconds.
    (sigterm,) = map(float, (tmp_path / "sigterm.txt").read_text().split())
    last_alive = float((tmp_path / "alive.txt").read_text().split()[-1])
    assert KILL_WAIT_S - 0.5 <= last_alive - sigterm <= KILL_WAIT_S + 3
    assert f"*** JOB {job_id} ON {slurm.node} CANCELLED AT" in (tmp_path / "job.out").read_text()
    assert "DUE TO JOB REQUEUE ***" in (tmp_path / "job.out").read_text()


def test_unknown_partition_is_refused(slurm: Cluster) -> None:
    result = slurm.run("sbatch", "--partition=nosuch", "--wrap", "true", check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "sbatch: error: invalid partition specified: nosuch",
        "sbatch: error: Batch job submission failed: Invalid partition name specified",
    ]


def test_submitit_runs_a_function_on_the_cluster(slurm: Cluster, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import submitit

    for name in ("SLURM_CONF", "PATH"):  # PATH: the cluster's sacct, which reads the job-completion log
        monkeypatch.setenv(name, slurm.env[name])
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    assert executor.cluster == "slurm"
    executor.update_parameters(slurm_partition=slurm.partition, timeout_min=5, cpus_per_task=1)

    def where(x: int) -> tuple[int, str, str]:  # a local function: cloudpickle sends it by value
        return 2 * x, os.environ["SLURM_JOB_ID"], os.environ["SLURM_CONF"]

    job = executor.submit(where, 21)
    assert job.result() == (42, job.job_id, str(slurm.conf))
    # The result file can appear before the job's end is logged; sacct then knows nothing yet.
    state = wait_until(lambda: job.get_info(mode="force").get("State"), timeout=30, what="sacct to list the job")
    assert state == "COMPLETED"


def test_submitit_reports_a_cancelled_job_instead_of_waiting_forever(slurm: Cluster, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import submitit

    for name in ("SLURM_CONF", "PATH"):
        monkeypatch.setenv(name, slurm.env[name])
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(slurm_partition=slurm.partition, timeout_min=5)
    job = executor.submit(time.sleep, 300)
    slurm.wait_for_job(job.job_id, states={"RUNNING"})
    slurm.run("scancel", job.job_id)
    # Without the cluster's sacct, submitit's state stays UNKNOWN and job.result() waits forever.
    wait_until(lambda: job.done(force_check=True), timeout=60, what="submitit to see the job end",
               describe=lambda: f"{job.get_info()} {slurm.jobs(job.job_id)}")
    assert job.get_info()["State"] == "CANCELLED"
    job._results_timeout_s = 0  # else it waits 15 s for a result file that a slow shared disk might still show
    with pytest.raises(submitit.core.utils.UncompletedJobError, match="state: CANCELLED"):
        job.result()


def test_stop_leaves_nothing_running(tmp_path: Path) -> None:
    with slurm_cluster(tmp_path / "cluster") as cluster:
        job_id = cluster.sbatch(f"--chdir={tmp_path}", "--output=job.out",
                                "--wrap", "sleep 300 & echo $$ $! > pids.txt; wait")
        wait_until(lambda: (tmp_path / "pids.txt").exists() and (tmp_path / "pids.txt").read_text().strip(),
                   timeout=30, what="the job to start", describe=lambda: str(cluster.jobs(job_id)))
        daemons = dict(cluster.daemons)
        assert set(daemons) == {"munged", "slurmctld", "slurmd"}
        assert cluster.processes()
    assert all(proc.poll() is not None for proc in daemons.values())
    assert cluster.processes() == []
    for pid in map(int, (tmp_path / "pids.txt").read_text().split()):  # the job's shell and its sleep
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not [pid for pid in _pids() if str(cluster.folder) in _cmdline(pid)]


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
