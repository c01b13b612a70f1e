"""`composer-eval MODEL_DIR`: downstream tasks of an exported model through lm-evaluation-harness
(composer/evals/harness.py is the adapter; the `eval` extra installs lm-eval)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from composer.apps.common import run_command

PROG = "composer-eval"


def _parser() -> argparse.ArgumentParser:
    from composer.evals.harness import PAPER_SUITE

    parser = argparse.ArgumentParser(prog=PROG, description="Evaluate an exported model (composer-export) with lm-evaluation-harness.")
    parser.add_argument("model_dir", help="a folder written by composer-export")
    parser.add_argument("--tasks", default=",".join(PAPER_SUITE),
                        help=f"comma-separated lm-eval tasks (default: the Composer paper's suite, {','.join(PAPER_SUITE)})")
    parser.add_argument("--include-path", action="append", default=[], metavar="DIR",
                        help="a folder of lm-eval task YAMLs (repeatable)")
    parser.add_argument("--limit", type=float, default=None,
                        help="at most N documents per task (a fraction below 1: that share); for quick checks only")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="context window in tokens (default: the length the model was trained at, else 2048)")
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own, else 0)")
    parser.add_argument("--output", default=None, help="results JSON (default: MODEL_DIR/eval_results.json)")
    parser.add_argument("--verbose", action="store_true", help="lm-eval's own log lines")
    return parser


def _evaluate(args: argparse.Namespace, tasks: list[str]) -> int:
    from composer.evals.harness import evaluate_tasks, format_table

    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    if not args.verbose:
        for name in ("lm_eval", "lm-eval", "datasets", "huggingface_hub", "evaluate"):
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    output = Path(args.output) if args.output else Path(args.model_dir) / "eval_results.json"
    results = evaluate_tasks(args.model_dir, tasks=tasks, include_paths=args.include_path, limit=limit,
                             batch_size=args.batch_size, device=args.device, max_length=args.max_length,
                             num_fewshot=args.num_fewshot, report=lambda line: print(line, file=sys.stderr))
    if not results["results"]:
        hint = "" if os.environ.get("HF_DATASETS_OFFLINE") else " (offline? HF_DATASETS_OFFLINE=1 skips the retries)"
        print(f"{PROG}: no task ran: every dataset was unreachable{hint}", file=sys.stderr)
        return 1
    from lm_eval.utils import handle_non_serializable

    print(format_table(results))
    output.parent.mkdir(parents=True, exist_ok=True)
    record = {"model_dir": str(Path(args.model_dir).resolve()), "tasks": tasks, **results}
    output.write_text(json.dumps(record, indent=2, default=handle_non_serializable) + "\n")
    print(f"wrote {output}" + (f"; skipped {', '.join(results['skipped'])}" if results["skipped"] else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        parser.error("--tasks names no task")
    return run_command(PROG, lambda: _evaluate(args, tasks))


if __name__ == "__main__":
    sys.exit(main())
