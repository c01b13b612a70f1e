"""`composer-export RUN OUT`: a training run's checkpoint as model.safetensors + config.json."""

from __future__ import annotations

import argparse
import sys

from composer.apps.common import run_command

PROG = "composer-export"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a training run's checkpoint to model.safetensors + config.json (the pattern included).",
    )
    parser.add_argument("src", help="a run folder (holding checkpoint.pt), or the checkpoint file itself")
    parser.add_argument("out", help="the folder to write model.safetensors, config.json (and tokenizer.json) into")
    parser.add_argument("--tokenizer", default=None,
                        help="'bytes' or a tokenizer.json the model reads text with (default: the run's config; "
                             "none for a MAD proxy)")
    return parser


def _export(args: argparse.Namespace) -> None:
    from composer.evals.export import export_checkpoint, read_config

    out = export_checkpoint(args.src, args.out, tokenizer_spec=args.tokenizer)
    config = read_config(out)
    step = config["extra"].get("step")
    print(f"exported {config['pattern']!r} ({config['n_params']:,} parameters"
          + (f", step {step}" if step is not None else "")
          + f", tokenizer {config['tokenizer'] or 'none'}) to {out}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(PROG, lambda: _export(args))


if __name__ == "__main__":
    sys.exit(main())
