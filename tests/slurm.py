"""A real single-node SLURM cluster on localhost for tests: munged, slurmctld and slurmd.

Every file lives in one folder: munge key and socket, slurm.conf, state, spool, logs and pid files,
so the cluster never touches (or clashes with) a system munged or slurm. Clients find it through
`SLURM_CONF` (in `cluster.env`); slurm.conf's `AuthInfo=socket=...` points slurm at our munged.
The daemons run in the foreground as child processes and are stopped by their pids; whatever they
leave behind (slurmstepd, job processes) is found by the `SLURM_CONF` in its environment and killed.
There is no slurmdbd: `cluster.env`'s PATH starts with a `sacct` that reads the job-completion log
(`sacct --completion`: finished jobs only, array tasks under their own job ids), enough for submitit.

tests/conftest.py registers this module as a plugin, so every test module shares one cluster per
session by asking for the fixture:

    def test_something(slurm):
        job_id = slurm.sbatch("--wrap", "hostname")
        assert slurm.wait_for_job(job_id)["JobState"] == "COMPLETED"

Needs Debian's `slurm-wlm` and `munge` (tests/run.sh installs them) and root.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel", "srun", "sacct")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED"}
KILL_WAIT_S = 2  # slurm's grace between SIGTERM and SIGKILL when it ends a job (KillWait)


@dataclass
class Cluster:
    """A running cluster: `env` for subprocesses, `run`/`sbatch`/`job` helpers, `stop()`."""

    folder: Path
    conf: Path
    munge_socket: Path
    node: str
    partition: str
    partitions: tuple[str, ...]
    env: dict[str, str]
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a slurm command against this cluster; with `check`, a failure raises with its stderr."""
        result = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def sbatch(self, *args: str, cwd: Path | None = None) -> str:
        """Submit with `sbatch --parsable ARGS` (default partition) and return the job id."""
        result = subprocess.run(["sbatch", "--parsable", *args], env=self.env, capture_output=True,
                                text=True, timeout=60, cwd=cwd or self.folder)
        if result.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result.stdout.strip().split(";")[0]

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """`scontrol show job` as dicts, one per job (several for an array); [] if slurm forgot it."""
        result = self.run("scontrol", "show", "job", "--oneliner", job_id, check=False)
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:
                return []
            raise RuntimeError(f"scontrol show job {job_id}: {result.stderr}")
        return [dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
                for line in result.stdout.splitlines() if line.strip()]

    def job(self, job_id: str) -> dict[str, str]:
        (info,) = self.jobs(job_id)
        return info

    def wait_for_jobs(self, job_id: str, *, states: set[str] = FINISHED, timeout: float = 60) -> list[dict[str, str]]:
        """Wait until every job of `job_id` (every task of an array) is in one of `states`."""
        def reached() -> list[dict[str, str]] | None:
            infos = self.jobs(job_id)
            return infos if infos and all(i["JobState"] in states for i in infos) else None
        infos = wait_until(reached, timeout=timeout, what=f"job {job_id} in {sorted(states)}",
                           describe=lambda: f"{self.jobs(job_id)}\n{self.logs()}")
        return infos  # type: ignore[return-value]

    def wait_for_job(self, job_id: str, *, states: set[str] = FINISHED, timeout: float = 60) -> dict[str, str]:
        """Wait until the (single) job `job_id` is in one of `states`; return its `scontrol` record."""
        (info,) = self.wait_for_jobs(job_id, states=states, timeout=timeout)
        return info

    def logs(self, tail: int = 40) -> str:
        """The last lines of every daemon log, for error messages."""
        parts = []
        for path in sorted((self.folder / "log").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {path.name} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(parts)

    def processes(self) -> list[int]:
        """Live pids of this cluster: its daemons and everything started with its SLURM_CONF."""
        pids = {p.pid for p in self.daemons.values() if p.poll() is None}
        return sorted(pids | set(_pids_with_env(f"SLURM_CONF={self.conf}")))

    def stop(self, timeout: float = 30) -> None:
        """Stop slurmctld and slurmd, kill leftover slurmstepd and job processes, then stop munged."""
        for name in ("slurmctld", "slurmd"):
            if name in self.daemons:
                _terminate(self.daemons[name], timeout=timeout)
        deadline = time.monotonic() + timeout
        while leftovers := _pids_with_env(f"SLURM_CONF={self.conf}"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"slurm processes {leftovers} survived SIGKILL")
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        if "munged" in self.daemons:
            _terminate(self.daemons["munged"], timeout=timeout)


def wait_until(condition: Callable[[], object], *, timeout: float, what: str,
               describe: Callable[[], str] = lambda: "", interval: float = 0.1) -> object:
    """Poll `condition` until it returns something truthy, which is returned; raise after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{describe()}")
        time.sleep(interval)


def find_binaries() -> dict[str, str]:
    """Absolute paths of the slurm and munge programs; a clear error if the packages are missing."""
    paths = {name: shutil.which(name, path=SBIN_PATH) for name in BINARIES}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not found: the SLURM tests need Debian's slurm-wlm and munge "
                           "(bash tests/run.sh installs them: apt-get install slurm-wlm munge)")
    return paths  # type: ignore[return-value]


@contextlib.contextmanager
def slurm_cluster(folder: Path, *, start_timeout: float = 60) -> Iterator[Cluster]:
    """Start a single-node cluster whose files all live in `folder`; stop it on exit."""
    cluster = start_cluster(folder, start_timeout=start_timeout)
    try:
        yield cluster
    finally:
        cluster.stop()


def start_cluster(folder: Path, *, start_timeout: float = 60) -> Cluster:
    bins = find_binaries()
    if os.geteuid() != 0:
        raise RuntimeError("the SLURM test cluster runs its daemons as root (SlurmUser=root)")
    folder = Path(folder).resolve()
    for sub in ("munge", "state", "spool", "log", "run", "bin"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub).chmod(0o755)  # munged refuses a group- or world-writable socket directory

    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = folder / "munge" / "munge.socket"
    if len(str(munge_socket)) > 100:
        raise RuntimeError(f"munge socket path too long for a unix socket: {munge_socket}")

    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    partitions = ("debug", "long")
    conf.write_text(_slurm_conf(folder=folder, node=node, munge_socket=munge_socket, partitions=partitions,
                                node_line=_node_resources(bins["slurmd"])))
    (folder / "plugstack.conf").write_text("")  # not /etc/slurm's: nothing of the system's is loaded
    # No slurmdbd here, so plain `sacct` answers "Slurm accounting storage is disabled"; this one
    # reads the job-completion log instead (finished jobs only), which is all submitit's polling needs.
    sacct = folder / "bin" / "sacct"
    sacct.write_text(f'#!/bin/sh\nexec {bins["sacct"]} --completion "$@"\n')
    sacct.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
    env["SLURM_CONF"] = str(conf)
    env["PATH"] = os.pathsep.join([str(folder / "bin"), env.get("PATH", "")])
    cluster = Cluster(folder=folder, conf=conf, munge_socket=munge_socket, node=node, partition=partitions[0],
                      partitions=partitions, env=env)
    try:
        cluster.daemons["munged"] = _spawn(
            [bins["munged"], "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
             f"--log-file={folder / 'log' / 'munged.log'}", f"--pid-file={folder / 'run' / 'munged.pid'}",
             f"--seed-file={folder / 'munge' / 'munged.seed'}"], folder=folder, name="munged",
            env={k: v for k, v in env.items() if k != "SLURM_CONF"})
        wait_until(lambda: munge_socket.exists() or cluster.daemons["munged"].poll() is not None,
                   timeout=start_timeout, what="munged's socket", describe=cluster.logs)
        _check_alive(cluster, "munged")
        cluster.daemons["slurmctld"] = _spawn([bins["slurmctld"], "-D", "-i"], folder=folder, name="slurmctld",
                                              env=env)
        cluster.daemons["slurmd"] = _spawn([bins["slurmd"], "-D", "-N", node], folder=folder, name="slurmd",
                                           env=env)

        def node_idle() -> bool:
            for name in cluster.daemons:
                _check_alive(cluster, name)
            out = cluster.run("sinfo", "--noheader", "--Node", "--format=%N %T", check=False).stdout.split()
            return out[:2] == [node, "idle"]
        wait_until(node_idle, timeout=start_timeout, what=f"node {node} idle in sinfo",
                   describe=lambda: cluster.run("sinfo", "--Node", "--long", check=False).stdout + cluster.logs(),
                   interval=0.2)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _slurm_conf(*, folder: Path, node: str, munge_socket: Path, partitions: tuple[str, ...], node_line: str) -> str:
    ctld_port, slurmd_port = _free_ports(2)
    default, *others = partitions
    lines = [
        "ClusterName=composer-test",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # cred_expire is also how long a requeued job waits before it may start again (default 120 s).
        f"AuthInfo=socket={munge_socket},cred_expire=5",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
        f"PlugStackConfig={folder / 'plugstack.conf'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "MailProg=/bin/true",
        "ProctrackType=proctrack/linuxproc",  # no cgroups: this runs in containers without systemd
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={folder / 'log' / 'jobcomp.txt'}",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        # Schedule at once: on submit, and every second (a requeued job becomes eligible without any event).
        "SchedulerParameters=batch_sched_delay=0,sched_interval=1,sched_min_interval=0,bf_interval=1",
        "PreemptType=preempt/none",
        "ReturnToService=2",
        "JobRequeue=1",
        "MessageTimeout=10",
        f"KillWait={KILL_WAIT_S}",
        "SlurmdTimeout=60",
        "InactiveLimit=0",
        "MinJobAge=3600",  # finished jobs stay visible to scontrol for the whole test session
        node_line,
        f"PartitionName={default} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        *(f"PartitionName={name} Nodes={node} Default=NO MaxTime=INFINITE State=UP" for name in others),
    ]
    return "\n".join(lines) + "\n"


def _node_resources(slurmd: str) -> str:
    """The NodeName line from `slurmd -C` (what slurmd sees), with RealMemory 10% below the total."""
    line = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()[0]
    memory = int(re.search(r"RealMemory=(\d+)", line).group(1))
    return re.sub(r"RealMemory=\d+", f"RealMemory={memory * 9 // 10}", line) + " NodeAddr=127.0.0.1 State=UNKNOWN"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so a killed pytest leaves no daemons."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(cmd: list[str], *, folder: Path, name: str, env: dict[str, str]) -> subprocess.Popen:
    out = open(folder / "log" / f"{name}.out", "ab")  # noqa: SIM115  (the child holds it)
    with out:
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)


def _check_alive(cluster: Cluster, name: str) -> None:
    proc = cluster.daemons[name]
    if proc.poll() is not None:
        raise RuntimeError(f"{name} exited with status {proc.returncode} while starting\n{cluster.logs()}")


def _terminate(proc: subprocess.Popen, *, timeout: float) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def _pids_with_env(marker: str) -> list[int]:
    """Pids of processes (not this one or its ancestors) whose environment holds `marker`."""
    ours = {0, os.getpid()}
    pid = os.getpid()
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        ours.add(pid)
    needle = b"\0" + marker.encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            environ = b"\0" + (entry / "environ").read_bytes() + b"\0"
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in environ:
            found.append(int(entry.name))
    return found


class _Shared:
    """The session's cluster and how many fixture copies use it."""

    cluster: Cluster | None = None
    users = 0


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the whole session, however many test modules import this fixture.

    pytest gives each importing module its own copy of a session fixture, so the copies share one
    cluster through `_Shared` and the last one to finish stops it. Import it as `tests.slurm`
    everywhere: a second import under another name would be a second module and a second cluster.
    """
    if _Shared.cluster is None:
        missing = ""
        try:
            find_binaries()
        except RuntimeError as e:
            missing = str(e)
        if missing:  # a plain failure, not a skip: a skipped test counts as not passing here
            pytest.fail(missing, pytrace=False)
        _Shared.cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    cluster = _Shared.cluster
    _Shared.users += 1
    try:
        yield cluster
    finally:
        _Shared.users -= 1
        if _Shared.users == 0:
            _Shared.cluster = None
            cluster.stop()
