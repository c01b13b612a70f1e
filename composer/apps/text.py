"""`composer-text`: text data tools.

    composer-text train-tokenizer --input DIR --vocab-size 4096 --output tokenizer.json
    composer-text fetch-corpus --output data/docs        # the default corpus: Debian documentation
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from composer.apps.common import run_command
from composer.errors import ConfigError

PROG = "composer-text"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Text data tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("train-tokenizer", help="fit a byte-level BPE on a corpus and save tokenizer.json")
    fit.add_argument("--input", required=True, help="a file, folder, glob or hub:<name> (as TextSource.path)")
    fit.add_argument("--text-field", default="text", help="record field with the text (json, jsonl, parquet, hub)")
    fit.add_argument("--vocab-size", type=int, required=True, help="at most this many ids, EOS included")
    fit.add_argument("--output", required=True, help="where to write tokenizer.json")
    fit.add_argument("--max-documents", type=int, default=None, help="fit on the first N documents only")
    fetch = commands.add_parser("fetch-corpus", help="the default corpus: Debian documentation packages as text files")
    fetch.add_argument("--output", required=True, help="folder to write <package>/... text files into")
    fetch.add_argument("--package", action="append",
                       help="a Debian package, or name=version to pin one (repeatable; default python3.11-doc)")
    return parser


def _fetch_corpus(args: argparse.Namespace) -> None:
    from composer.data.corpus import DEFAULT_PACKAGES, VERSIONS, fetch_debian_docs

    copied = fetch_debian_docs(args.output, tuple(args.package or DEFAULT_PACKAGES))
    for package, (version, n) in copied.items():
        print(f"{package} {version}: {n} files -> {Path(args.output) / package}")
    print(f"versions in {Path(args.output) / VERSIONS} (pin one with --package name=version)")


def _train_tokenizer(args: argparse.Namespace) -> None:
    from composer.data.text import TextSource, iter_documents
    from composer.data.tokenizer import load_tokenizer, train_bpe

    source = TextSource(path=args.input, text_field=args.text_field, max_documents=args.max_documents)
    docs = iter_documents(source)
    first = list(itertools.islice(docs, 1))  # report a bad source here, not from inside the Rust trainer
    if not first:
        raise ConfigError(f"no text in {args.input}: every document is empty")
    path = train_bpe(itertools.chain(first, docs), vocab_size=args.vocab_size, out_path=args.output)
    print(f"wrote {path} ({load_tokenizer(str(path)).vocab_size} ids)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    work = _fetch_corpus if args.command == "fetch-corpus" else _train_tokenizer
    return run_command(PROG, lambda: work(args))


if __name__ == "__main__":
    sys.exit(main())
