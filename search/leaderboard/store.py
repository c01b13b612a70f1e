"""The leaderboard file: JSON Lines, one record per line, appended with one write() each (O_APPEND),
so concurrent writers never interleave or lose lines; a later line with the same key replaces an
earlier one."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from composer.errors import ConfigError
from search.leaderboard.records import record_key

DEFAULT_PATH = Path("outputs/leaderboard.jsonl")


def append(record: Mapping[str, Any], path: str | Path = DEFAULT_PATH) -> None:
    """Append one record as one line: a single write() with O_APPEND, safe with concurrent writers."""
    record_key(record)
    try:
        line = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"leaderboard record is not JSON-serialisable: {exc}") from None
    data, path = line.encode(), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
    finally:
        os.close(fd)
    if written != len(data):  # a full disk: say so rather than leave half a line unnoticed
        raise OSError(f"{path}: wrote {written} of {len(data)} bytes of a leaderboard record")


def read_records(path: str | Path = DEFAULT_PATH) -> list[dict[str, Any]]:
    """Every record in the file, in file order, versions included; [] when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ConfigError(f"a record is a JSON object, got {type(record).__name__}")
                record_key(record)
            except (ValueError, ConfigError) as exc:  # JSONDecodeError is a ValueError
                raise ConfigError(f"{path} line {number}: malformed leaderboard record: {exc}") from None
            records.append(record)
    return records


def current(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The latest version of each record (by `record_key`), in order of first appearance."""
    latest: dict[tuple[str, ...], dict[str, Any]] = {}
    for record in records:
        latest[record_key(record)] = dict(record)
    return list(latest.values())


def load(path: str | Path = DEFAULT_PATH) -> list[dict[str, Any]]:
    """The current records of the leaderboard at `path`; [] when the file does not exist."""
    return current(read_records(path))
