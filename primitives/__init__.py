"""Primitives, registered by letter. Importing this package registers them all and imports no
torch: the modules live in primitives/nn/ and load when a model is built."""

import importlib
import pkgutil

from primitives.registry import REGISTRY, Primitive, by_name, describe_alphabet, register

for _info in pkgutil.iter_modules(__path__):
    if not _info.ispkg and _info.name != "registry" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["REGISTRY", "Primitive", "by_name", "describe_alphabet", "register"]
