"""Results computed once per process, kept in a plain dict instead of functools.cache.

torch.compile (Dynamo) ignores a functools.cache wrapper and traces the wrapped function, re-running
e.g. an optional kernel import inside tracing; an entry filled here it reads as a constant. So fill
entries eagerly, outside compiled code (the mixers do at construction).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any

import torch

_RESULTS: dict[Hashable, Any] = {}


def load_once(key: Hashable, load: Callable[[], Any]) -> Any:
    """load(), called the first time `key` is asked for; its result from then on."""
    if key not in _RESULTS:
        _RESULTS[key] = load()
    return _RESULTS[key]


def log_once(log: logging.Logger, message: str, *args: object) -> None:
    """log.info(message, *args) the first time this message with these arguments comes up in the process
    (a mixer's implementation choice: once per process and choice, not once per layer)."""
    load_once(("log", log.name, message, *args), lambda: log.info(message, *args))


def log_impl_once(module: torch.nn.Module, log: logging.Logger, message: str, *args: object) -> None:
    """log_once from a mixer's forward, at its first call, skipped where torch.compile traces it. There, reading the
    module's flag would guard on it, so setting it would recompile the layer, and the logging call breaks the graph:
    a compiled proxy compiled each Mamba-2 shape twice (CPU, 2026-12-06). A compiled layer's choice is in the run
    folder (`describe_impl`)."""
    if torch.compiler.is_compiling() or getattr(module, "_impl_logged", False):
        return
    log_once(log, message, *args)
    module._impl_logged = True
