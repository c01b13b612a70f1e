"""What `composer-launch` does (composer/apps/launch.py parses its command line): submit a search
(a job array of workers on one study, then a finalize job), a pretraining job or a fidelity study
(one job), write the run folder, wait, and report the state of a run's jobs or cancel them. Each
function takes the parsed arguments of its subcommand and returns the exit code; bad input raises a
ConfigError."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from composer.errors import ComposerError, ConfigError
from launch import cluster, folder as runs
from launch.cluster import Resources

PROG = "composer-launch"


# ----------------------------------------------------------------------------------------- helpers

def resolve(command: str, overrides: list[str], *, config: list[str] = ()) -> tuple[dict[str, Any], str]:
    """The composer command's resolved config for these overrides on top of `config` (Hydra's
    --config-path/--config-name, or nothing); its own validation (unknown keys, bad values), bad input
    coming back as its one-line error."""
    import yaml

    for o in overrides:
        if o.startswith(("hydra.run.dir=", "hydra.sweep.", "-m", "--multirun")):
            raise ConfigError(f"override {o!r}: composer-launch places the run itself (use --dir for the run folder)")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([sys.executable, "-m", f"composer.apps.{command}", *config, *overrides, "--cfg", "job",
                           "--resolve"],
                          capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"composer-{command} exited with {proc.returncode}"]
        raise ConfigError(lines[-1].split(": error: ", 1)[-1])
    return yaml.safe_load(proc.stdout), proc.stdout


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _extra(pairs: list[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--sbatch {pair!r}: expected KEY=VALUE, e.g. --sbatch constraint=h100")
        extra[key.replace("-", "_")] = True if value.lower() == "true" else value
    return extra


def _resources(args: argparse.Namespace, **kw: Any) -> Resources:
    for name in ("timeout_min", "cpus_per_task", "mem_gb"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    return Resources(partition=args.partition, account=args.account, qos=args.qos, timeout_min=args.timeout_min,
                     cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, extra=_extra(args.sbatch), **kw)


def _prepare(args: argparse.Namespace, *, kind: str, name: str, config_text: str) -> tuple[Path, dict[str, Any]]:
    """The run folder, ready for a new submission: refused while earlier jobs of it still run."""
    folder = (args.dir or runs.DEFAULT_ROOT / name).resolve()
    record: dict[str, Any] = {"kind": kind, "name": name, "submissions": []}
    if (folder / runs.LAUNCH_FILE).exists():
        record = runs.load(folder)
        if record.get("kind") != kind:
            raise ConfigError(f"{folder} holds a {record.get('kind')} launch, not a {kind} one; choose another --dir")
        last = record["submissions"][-1] if record["submissions"] else None
        if last:
            live = [i for i, s in _states(folder, last).items() if cluster.active(s)]
            if live:
                raise ConfigError(f"{folder} has jobs still queued or running ({', '.join(live)}); "
                                  f"`{PROG} status {folder}` lists them, `{PROG} cancel {folder}` ends them")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(config_text)
    code = runs.write_code_version(folder)
    record["submissions"].append({"submitted": runs.now(), "argv": [PROG, *sys.argv[1:]], "cwd": os.getcwd(),
                                  "executor": args.executor, "code": code, "jobs": []})
    return folder, record


def _submit_first(folder: Path, record: dict[str, Any], executor, functions: list[Any]) -> list[dict[str, Any]]:
    """A submission's first sbatch; when SLURM refuses it, a run folder this submission created is
    removed again (a folder of earlier submissions keeps everything it had)."""
    try:
        return cluster.submit(executor, functions)
    except ComposerError:
        if len(record["submissions"]) == 1 and not (folder / runs.LAUNCH_FILE).exists():
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _record_jobs(folder: Path, record: dict[str, Any], jobs: list[dict[str, Any]], roles: list[str],
                 argvs: list[list[str]], *, group: str) -> None:
    """Add submitted jobs to launch.json, link their logs, keep the sbatch script submitit wrote."""
    entries = record["submissions"][-1]["jobs"]
    script = None
    if jobs[0]["script"]:
        (folder / "sbatch").mkdir(exist_ok=True)
        script = folder / "sbatch" / f"{group}.{jobs[0]['id'].split('_')[0]}.sh"
        shutil.copyfile(jobs[0]["script"], script)
    for job, role, argv in zip(jobs, roles, argvs):
        runs.link_logs(folder, role, Path(job["stdout"]), Path(job["stderr"]))
        entries.append({"role": role, **{k: v for k, v in job.items() if k != "script"}, "argv": argv,
                        "sbatch": str(script) if script else None})
    runs.save(folder, record)


def _states(folder: Path, submission: dict[str, Any]) -> dict[str, str]:
    return cluster.states(submission["executor"], submission["jobs"], submitit_folder=folder / "submitit")


def _wait(folder: Path, record: dict[str, Any], *, poll_s: float = 2.0) -> dict[str, str]:
    """Block until the jobs of the last submission have ended; their states."""
    started = time.time()
    while True:
        current = _states(folder, record["submissions"][-1])
        unsure = time.time() - started < 30 and "UNKNOWN" in current.values()  # just submitted, not listed yet
        if not unsure and not any(cluster.active(s) for s in current.values()):
            return current
        time.sleep(poll_s)


def _last_error(path: str) -> str:
    """The last `... error: ...` line of a job's log (what composer printed), else its last line."""
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "error:" in line or "Error" in line]
    return (errors or lines or [""])[-1][:300]


def _announce_and_wait(args: argparse.Namespace, folder: Path, record: dict[str, Any], what: str) -> int | None:
    """Say what was submitted (or is running here) and what to do next; then wait for the jobs and
    return the exit code, or None when SLURM runs them and --wait was not given."""
    slurm = args.executor == "slurm"
    print(f"{PROG}: {'submitted' if slurm else 'running'} {what}\n{_next_steps(folder)}", flush=True)
    if slurm and not args.wait:
        return None
    return _report_failures(record, _wait(folder, record))


def _report_failures(record: dict[str, Any], current: dict[str, str]) -> int:
    failed = 0
    for job in record["submissions"][-1]["jobs"]:
        state = current.get(job["id"])
        if state is not None and state != "COMPLETED":
            failed += 1
            reason = _last_error(job["stderr"]) or _last_error(job["stdout"])
            print(f"{PROG}: {job['role']} (job {job['id']}) {state}" + (f": {reason}" if reason else "")
                  + f"; log: {job['stderr']}", file=sys.stderr)
    return 1 if failed else 0


def _next_steps(folder: Path) -> str:
    return f"  run folder  {folder}\n  status      {PROG} status {folder}\n  cancel      {PROG} cancel {folder}"


# ----------------------------------------------------------------------------------------- commands

def launch_search(args: argparse.Namespace) -> int:
    from search.runner import search_config_from_mapping
    from launch.jobs import Command

    if args.workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {args.workers}")
    overrides = list(args.overrides)
    if any(_key(o) in ("phase", "worker") for o in overrides):
        raise ConfigError("phase= and worker= are composer-launch's to set (work for the array, finalize after it)")
    cfg, text = resolve("search", overrides)
    search_config_from_mapping(cfg)  # bad values fail here, in one line, before anything is queued
    name = cfg["name"]
    folder, record = _prepare(args, kind="search", name=name, config_text=text)
    storage = cfg.get("storage") or str(folder / "study.journal")
    pinned = {"name": name, "storage": storage, "hydra.run.dir": str(folder / "search")}
    if not any(_key(o) == "workers" for o in overrides):
        pinned["workers"] = 1  # one process per array task; workers=K runs K on each
    base = [sys.executable, "-m", "composer.apps.search",
            *(o for o in overrides if _key(o) not in pinned), *(f"{k}={v}" for k, v in pinned.items())]
    workers = [[*base, "++phase=work", f"++worker={i}"] for i in range(args.workers)]
    final = [*base, "++phase=finalize"]
    cwd = os.getcwd()
    env = {}
    if args.executor == "local" and "OMP_NUM_THREADS" not in os.environ:  # the workers share this machine's cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.workers))
    res = _resources(args, gpus_per_node=args.gpus_per_node)
    executor = cluster.make_executor(args.executor, folder=folder / "submitit", name=f"{name}-work", resources=res)
    jobs = _submit_first(folder, record, executor, [Command(argv, cwd, env) for argv in workers])
    _record_jobs(folder, record, jobs, [f"worker {i}" for i in range(args.workers)], workers, group="workers")
    after = jobs[0]["id"].split("_")[0]
    if args.executor == "local":  # no scheduler to wait for the array: this process does
        print(f"{PROG}: search {name!r}: {args.workers} worker(s) running here (logs in {folder / 'logs'})", flush=True)
        _wait(folder, record)
    finalize = dataclasses.replace(res, dependency=f"afterany:{after}" if args.executor == "slurm" else None)
    executor = cluster.make_executor(args.executor, folder=folder / "submitit", name=f"{name}-finalize",
                                     resources=finalize)
    try:
        fin = cluster.submit(executor, [Command(final, cwd)])
    except ComposerError:
        if args.executor == "slurm":
            cluster.cancel("slurm", record["submissions"][-1]["jobs"], submitit_folder=folder / "submitit")
        raise
    _record_jobs(folder, record, fin, ["finalize"], [final], group="finalize")
    if args.executor == "slurm":
        print(f"{PROG}: submitted search {name!r}: array {after} of {args.workers} worker(s), "
              f"then finalize job {fin[0]['id']} after it (storage {storage})\n{_next_steps(folder)}", flush=True)
        if not args.wait:
            return 0
    code = _report_failures(record, _wait(folder, record))
    result = folder / "search" / "result.json"
    if result.exists():
        import json

        r = json.loads(result.read_text())
        print(f"{PROG}: search {name!r}: {r['n_evaluations']} evaluations ({r['n_failed']} failed); "
              f"architecture {r['architecture']}, best single {r['best_single']}; {result}")
    return code


def _check_pretrain(cfg: dict[str, Any]) -> None:
    """What composer-pretrain would refuse at start, refused before the job waits in a queue."""
    from composer.config import model_config_from_mapping
    from composer.runs.pretrain import pretrain_config_from_mapping

    _, trainer = pretrain_config_from_mapping(cfg)
    model_config_from_mapping(cfg["model"], vocab_size=256)  # the tokenizer's size is known only in the job
    if not trainer.save_on_signal:
        print(f"{PROG}: warning: trainer.save_on_signal=false: a preempted job keeps only its last periodic "
              f"checkpoint and is not requeued", file=sys.stderr)


def launch_pretrain(args: argparse.Namespace) -> int:
    from launch.jobs import Pretrain

    for flag in ("nodes", "procs_per_node", "max_requeues", "gpus_per_node", "signal_delay_s"):
        value = getattr(args, flag)
        if value is not None and value < (1 if flag in ("nodes", "procs_per_node") else 0):
            raise ConfigError(f"--{flag.replace('_', '-')} must be {'positive' if flag in ('nodes', 'procs_per_node') else 'non-negative'}, got {value}")
    if args.executor == "local" and args.nodes > 1:
        raise ConfigError(f"--executor local runs on this machine only: --nodes must be 1, got {args.nodes}")
    overrides = list(args.overrides)
    config: list[str] = []
    if args.config is not None:
        path = args.config.resolve()
        if not path.is_file() or path.suffix not in (".yaml", ".yml"):
            raise ConfigError(f"--config {args.config}: no such YAML file")
        config = ["--config-path", str(path.parent), "--config-name", path.stem]
    cfg, text = resolve("pretrain", overrides, config=config)
    _check_pretrain(cfg)
    name = cfg["name"]
    folder, record = _prepare(args, kind="pretrain", name=name, config_text=text)
    run_dir = folder / "pretrain"
    procs = args.procs_per_node or max(1, args.gpus_per_node)
    job = Pretrain(overrides=[*config, *overrides, f"hydra.run.dir={run_dir}"], run_dir=str(run_dir), cwd=os.getcwd(),
                   nodes=args.nodes, procs_per_node=procs, cpus_per_task=args.cpus_per_task, port=args.port,
                   max_requeues=args.max_requeues, shutdown_timeout_s=max(30, args.signal_delay_s))
    res = _resources(args, nodes=args.nodes, gpus_per_node=args.gpus_per_node, signal_delay_s=args.signal_delay_s,
                     preemptible=True)
    executor = cluster.make_executor(args.executor, folder=folder / "submitit", name=name, resources=res)
    jobs = _submit_first(folder, record, executor, [job])
    described = (f"{args.nodes} node(s) x {procs} rank(s)" if args.executor == "slurm"
                 else f"{procs} rank(s) here")
    planned = job.command(slurm=args.executor == "slurm", endpoint="<first node>:<port>", job=jobs[0]["id"])
    _record_jobs(folder, record, jobs, ["pretrain"], [planned], group="pretrain")
    code = _announce_and_wait(args, folder, record, f"pretraining {name!r} as job {jobs[0]['id']}: {described}")
    if code is None:
        return 0
    summary = run_dir / "summary.json"
    if summary.exists():
        import json

        s = json.loads(summary.read_text())
        if s.get("status") == "completed":
            print(f"{PROG}: pretraining {name!r}: step {s['step']}, val loss {s['final']['loss']:.4f}; {summary}")
    return code


def launch_fidelity(args: argparse.Namespace) -> int:
    from launch.jobs import Resumable
    from search.fidelity.study import fidelity_config_from_mapping

    for flag in ("gpus_per_node", "max_requeues", "signal_delay_s"):
        if getattr(args, flag) < 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be non-negative, got {getattr(args, flag)}")
    overrides = list(args.overrides)
    if not any(_key(o) == "workers" for o in overrides):
        overrides.append(f"workers={max(1, args.gpus_per_node)}")  # one process per GPU (GPU i mod n each)
    cfg, text = resolve("fidelity", overrides)
    fidelity_config_from_mapping(cfg)  # bad values fail here, in one line, before anything is queued
    name = cfg["name"]
    folder, record = _prepare(args, kind="fidelity", name=name, config_text=text)
    run_dir = folder / "fidelity"
    argv = [sys.executable, "-m", "composer.apps.fidelity", *overrides, f"hydra.run.dir={run_dir}"]
    env = {}
    if args.executor == "local" and "OMP_NUM_THREADS" not in os.environ:  # the workers share this machine's cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cfg["workers"]))
    job = Resumable(argv=argv, cwd=os.getcwd(), env=env, cpus_per_task=args.cpus_per_task,
                    max_requeues=args.max_requeues)
    res = _resources(args, gpus_per_node=args.gpus_per_node, signal_delay_s=args.signal_delay_s, preemptible=True)
    executor = cluster.make_executor(args.executor, folder=folder / "submitit", name=name, resources=res)
    jobs = _submit_first(folder, record, executor, [job])
    _record_jobs(folder, record, jobs, ["fidelity"], [job.command(slurm=args.executor == "slurm")], group="fidelity")
    code = _announce_and_wait(args, folder, record,
                              f"fidelity study {name!r} as job {jobs[0]['id']}: {cfg['workers']} worker(s)")
    if code is None:
        return 0
    result = run_dir / "fidelity.json"
    if result.exists():
        import json

        r = json.loads(result.read_text())
        first = next((c for c in r["correlations"] if c["x"] == "proxy"), None)
        shown = "" if first is None or first["spearman"]["value"] is None else (
            f"; proxy -> {first['y']} Spearman {first['spearman']['value']:+.2f}")
        print(f"{PROG}: fidelity {name!r}: {len(r['patterns'])} patterns{shown}; {result}")
    return code


def status(args: argparse.Namespace) -> int:
    import json

    folder = args.run or runs.latest()
    record = runs.load(folder)
    submission = record["submissions"][-1]
    current = _states(folder, submission)
    if args.json:
        for job in submission["jobs"]:
            print(json.dumps({"role": job["role"], "id": job["id"], "state": current[job["id"]],
                              "stdout": job["stdout"], "stderr": job["stderr"]}))
        return 0
    earlier = len(record["submissions"]) - 1
    print(f"{folder}: {record['kind']} {record['name']!r} on {submission['executor']}, submitted "
          f"{submission['submitted']}" + (f" ({earlier} earlier submission(s))" if earlier else ""))
    width = max([4, *(len(j["role"]) for j in submission["jobs"])])
    print(f"  {'role':<{width}}  {'job':<12}  {'state':<11}  log")
    for job in submission["jobs"]:
        print(f"  {job['role']:<{width}}  {job['id']:<12}  {current[job['id']]:<11}  {job['stdout']}")
    return 0


def cancel(args: argparse.Namespace) -> int:
    folder = args.run or runs.latest()
    record = runs.load(folder)
    cancelled = []
    for submission in record["submissions"]:
        cancelled += cluster.cancel(submission["executor"], submission["jobs"], submitit_folder=folder / "submitit")
    print(f"{PROG}: cancelled {len(cancelled)} job(s): {', '.join(cancelled)}" if cancelled
          else f"{PROG}: nothing to cancel in {folder}: every job has ended")
    return 0
