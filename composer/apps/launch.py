"""`composer-launch`: composer's jobs on a SLURM cluster (or on this machine), through submitit.

    composer-launch search --workers 8 --partition cpu strategy=tpe n_trials=200
    composer-launch pretrain --nodes 2 --gpus-per-node 8 --partition gpu name=run1 model.pattern='M-M-M*-'
    composer-launch pretrain --config outputs/extrapolate/<time>/pretrain.yaml --nodes 4 --gpus-per-node 8 ...
    composer-launch fidelity --gpus-per-node 4 --partition gpu search_dir=outputs/search/x rungs.0.tokens_per_param=20
    composer-launch status [RUN FOLDER]          # the jobs of a run folder and their states
    composer-launch cancel [RUN FOLDER]

`search` submits a job array of workers that run one study together on shared storage
(`<run>/study.journal` unless `storage=` names one), each `composer-search phase=work`, then one
`composer-search phase=finalize` job after the array (aggregate, evaluate the aggregate, result.json,
leaderboard). `pretrain` submits one job of `--nodes` nodes: srun starts one torchrun per node
(rendezvous on the first node); before the time limit the run checkpoints and the job requeues
itself, and the requeued job resumes. `fidelity` submits one job on one node: composer-fidelity
with `workers=` one process per GPU (--gpus-per-node, or 1), in one srun step that requeues itself
before the time limit like pretraining does; the rerun reads finished runs back and resumes the
others. `--executor local` runs the same jobs here and waits for them. Everything after the options
is an override for composer-search / composer-pretrain / composer-fidelity. Each
submission writes its run folder (launch/folder.py says what is in it; launch/submit.py does the work); submitting again into the
same folder resumes. Bad input prints one line and exits 2; a job that failed (with --wait, or
locally) exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from composer.apps.common import run_command
from launch import cluster
from launch.submit import PROG, cancel, launch_fidelity, launch_pretrain, launch_search, status

COMMANDS = ("search", "pretrain", "fidelity", "status", "cancel")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every composer command
        print(f"{PROG}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=cluster.EXECUTORS, default="slurm",
                        help="slurm (default): sbatch through submitit; local: run the jobs here and wait")
    parser.add_argument("--dir", type=Path, help="run folder (default: outputs/launch/<name>)")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--qos")
    parser.add_argument("--timeout-min", type=int, default=240, help="time limit of each job (default 240)")
    parser.add_argument("--cpus-per-task", type=int, help="CPUs per task (one task per node)")
    parser.add_argument("--mem-gb", type=int, help="memory per node")
    parser.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                        help="any other #SBATCH flag, e.g. --sbatch constraint=h100 (repeatable)")
    parser.add_argument("--wait", action="store_true", help="wait for the jobs to end (always, locally)")
    parser.add_argument("overrides", nargs="*", help="overrides of the composer command (key=value)")


def build_parsers() -> dict[str, argparse.ArgumentParser]:
    search = _Parser(prog=f"{PROG} search", description="a SLURM job array of search workers on one study, "
                     "then an aggregation + leaderboard job after them")
    search.add_argument("--workers", type=int, default=2, help="array tasks, each a worker on the study (default 2)")
    search.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per worker (default 0)")
    _common(search)
    pretrain = _Parser(prog=f"{PROG} pretrain", description="one multi-node composer-pretrain job over torchrun, "
                       "checkpointed and requeued before its time limit")
    pretrain.add_argument("--config", type=Path, metavar="YAML",
                          help="a composer-pretrain config file, e.g. the pretrain.yaml composer-extrapolate writes; "
                               "the overrides apply on top of it")
    pretrain.add_argument("--nodes", type=int, default=1)
    pretrain.add_argument("--gpus-per-node", type=int, default=0)
    pretrain.add_argument("--procs-per-node", type=int, help="ranks per node (default: --gpus-per-node, or 1)")
    pretrain.add_argument("--port", type=int, help="rendezvous port on the first node (default: from the job id)")
    pretrain.add_argument("--max-requeues", type=int, default=10, help="self-requeues before the job gives up")
    pretrain.add_argument("--signal-delay-s", type=int, default=120,
                          help="SIGUSR1 this long before the time limit: checkpoint, then requeue (default 120)")
    _common(pretrain)
    fidelity = _Parser(prog=f"{PROG} fidelity", description="one composer-fidelity job on one node (a rank-fidelity "
                       "study), requeued before its time limit; rerunning resumes it")
    fidelity.add_argument("--gpus-per-node", type=int, default=0,
                          help="GPUs of the node; workers= defaults to one process per GPU (default 0: 1 on CPU)")
    fidelity.add_argument("--max-requeues", type=int, default=10, help="self-requeues before the job gives up")
    fidelity.add_argument("--signal-delay-s", type=int, default=120,
                          help="SIGUSR1 this long before the time limit: checkpoint, then requeue (default 120)")
    _common(fidelity)
    parsers = {"search": search, "pretrain": pretrain, "fidelity": fidelity}
    for command, what in (("status", "list the jobs of a run folder and their states"),
                          ("cancel", "cancel the jobs of a run folder still queued or running")):
        p = _Parser(prog=f"{PROG} {command}", description=what)
        p.add_argument("run", nargs="?", type=Path, help="run folder (default: the last one under outputs/launch)")
        if command == "status":
            p.add_argument("--json", action="store_true", help="one JSON object per job")
        parsers[command] = p
    return parsers


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"{PROG}: error: unknown command {command!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    args = build_parsers()[command].parse_intermixed_args(rest)
    run = {"search": launch_search, "pretrain": launch_pretrain, "fidelity": launch_fidelity, "status": status,
           "cancel": cancel}[command]
    try:
        return run_command(PROG, lambda: run(args))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; `{PROG} status` lists the jobs, `{PROG} cancel` ends those still running",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
