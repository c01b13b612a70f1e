"""`composer-needle MODEL_DIR`: needle-in-a-haystack retrieval of an exported model
(composer/evals/needle.py is the probe; composer-export writes the folder)."""

from __future__ import annotations

import argparse
import json
import sys

from composer.apps.common import run_command
from composer.errors import ConfigError

PROG = "composer-needle"


def _parser() -> argparse.ArgumentParser:
    from composer.evals.needle import BATCH_TOKENS, NeedleConfig

    parser = argparse.ArgumentParser(prog=PROG, description="Needle-in-a-haystack retrieval of an exported model.")
    parser.add_argument("model_dir", help="a folder written by composer-export (config.json, model.safetensors)")
    parser.add_argument("--seq-len", type=int, help="the training context (default: the export's max_length)")
    parser.add_argument("--multiples", type=float, nargs="+", default=[1, 2], help="context multiples (default: 1 2)")
    parser.add_argument("--n-probes", type=int, default=NeedleConfig.n_probes, help="probes per length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--filler", help="text to hide the needle in (a TextSource path); default: filler sentences")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=int,
                        help=f"sequences per forward pass (default: {BATCH_TOKENS} tokens' worth)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    return parser


def _probe(args: argparse.Namespace) -> None:
    import torch

    from composer.evals.export import load_pretrained, read_config
    from composer.evals.needle import NeedleConfig, label, needle_accuracy

    seq_len = args.seq_len or read_config(args.model_dir).get("max_length")
    if not seq_len:
        raise ConfigError(f"{args.model_dir} does not record its training context (max_length): give --seq-len")
    cfg = NeedleConfig(multiples=tuple(args.multiples), n_probes=args.n_probes, seed=args.seed)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_pretrained(args.model_dir, device=device)
    if tokenizer is None:
        raise ConfigError(f"{args.model_dir} is a model of token ids (no tokenizer): the probe needs text")
    filler = None
    if args.filler is not None:
        from composer.data.text import TextSource, load_corpus

        filler = load_corpus(TextSource(path=args.filler), tokenizer).train
    result = needle_accuracy(model, tokenizer, seq_len=seq_len, cfg=cfg, filler=filler, device=device,
                             batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for m in cfg.multiples:
        key = label(m)
        print(f"needle@{key:<5} {result[f'needle@{key}']:.3f}  per token {result[f'per_token@{key}']:.3f}  "
              f"({result['lengths'][key]} tokens, {cfg.n_probes} probes)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(PROG, lambda: _probe(args))


if __name__ == "__main__":
    sys.exit(main())
