"""Checkpoints for exact resume, never unpickling arbitrary objects on load.

Two layouts behind one pair of functions, `save` and `load`:

- one process: `checkpoint.pt`, a single `torch.save` file read back with `weights_only=True`;
- distributed (FSDP2, every `composer-pretrain` run): `checkpoint/`, a `torch.distributed.checkpoint`
  folder in which each rank writes its own shards, plus `state.json` (step, data position, run
  signature) and `rng-<rank>.json`. It holds tensors only (model weights, AdamW moments and step
  counts; the optimiser's hyperparameters come from the config), and it is read through a storage
  reader whose metadata unpickler admits nothing but DCP's own metadata classes, so loading it runs
  no code from the file. A new checkpoint is written beside the old one and swapped in by rename, so
  a crash mid-save leaves the previous one intact. On several nodes, `run_dir` must be on a
  filesystem every node sees.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from composer.errors import ConfigError

FILE = "checkpoint.pt"  # one process
FOLDER = "checkpoint"  # distributed


def exists(run_dir: Path) -> bool:
    return (run_dir / FILE).exists() or (run_dir / FOLDER / "state.json").exists() or (run_dir / f"{FOLDER}.old" / "state.json").exists()


# ---- random number generators ---------------------------------------------------------------

def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    random.setstate(state["python"])


def _rng_to_json(state: dict[str, Any]) -> dict[str, Any]:
    out = {k: base64.b64encode(v.numpy().tobytes()).decode() for k, v in state.items() if k != "python"}
    version, internal, gauss = state["python"]
    return {**out, "python": [version, list(internal), gauss]}


def _rng_from_json(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: torch.frombuffer(bytearray(base64.b64decode(v)), dtype=torch.uint8)
                           for k, v in data.items() if k != "python"}
    version, internal, gauss = data["python"]
    return {**out, "python": (version, tuple(internal), gauss)}


# ---- save and load ---------------------------------------------------------------------------

def save(run_dir: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
         device: torch.device, distributed: bool) -> None:
    """Write the checkpoint: model, optimiser, `meta` (JSON-able: step, data, signature) and RNG states."""
    if not distributed:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **meta, "rng": rng_state(device)}
        tmp = run_dir / (FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, run_dir / FILE)
        return
    rank = dist.get_rank()
    tmp, final, old = run_dir / f"{FOLDER}.tmp", run_dir / FOLDER, run_dir / f"{FOLDER}.old"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    tensors = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)["state"]}
    dcp.save(tensors, checkpoint_id=str(tmp))
    (tmp / f"rng-{rank}.json").write_text(json.dumps(_rng_to_json(rng_state(device))))
    dist.barrier()
    if rank == 0:
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def _check(path: Path, saved: dict[str, Any], signature: dict[str, Any]) -> None:
    """A checkpoint resumes only the run it belongs to; the error names every setting that differs."""
    from composer.config import flatten

    saved, now = (flatten(json.loads(json.dumps(s, default=str))) for s in (saved, signature))
    if saved != now:
        diff = ", ".join(f"{k}: {saved.get(k)!r} there, {now.get(k)!r} here"
                         for k in sorted(saved.keys() | now.keys()) if saved.get(k) != now.get(k))
        raise ConfigError(f"{path} belongs to another run ({diff}); use a new run folder")


def load(run_dir: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
         distributed: bool, signature: dict[str, Any]) -> dict[str, Any] | None:
    """Restore model, optimiser and RNG states in place and return `meta`; None without a checkpoint.
    A checkpoint saved under another `signature` is refused before anything is loaded."""
    if not distributed:
        if not (run_dir / FILE).exists():
            return None
        state = torch.load(run_dir / FILE, map_location=device, weights_only=True)  # never unpickles objects
        _check(run_dir / FILE, state["signature"], signature)
        model.load_state_dict(state.pop("model"))
        optimizer.load_state_dict(state.pop("optimizer"))
        set_rng_state(state.pop("rng"), device)
        return state
    folder = next((f for f in (run_dir / FOLDER, run_dir / f"{FOLDER}.old") if (f / "state.json").exists()), None)
    if folder is None:
        return None
    if (run_dir / FILE).exists():
        raise ConfigError(f"{run_dir} holds a single-process {FILE} and a distributed {FOLDER}/; remove one")
    meta = json.loads((folder / "state.json").read_text())
    _check(folder, meta["signature"], signature)
    optim_full = get_optimizer_state_dict(model, optimizer)  # initialises the AdamW state to load into
    tensors = {"model": get_model_state_dict(model), "optim": optim_full["state"]}
    dcp.load(tensors, storage_reader=SafeReader(folder), planner=TensorsOnlyPlanner())
    set_model_state_dict(model, tensors["model"])
    set_optimizer_state_dict(model, optimizer, {"state": tensors["optim"], "param_groups": optim_full["param_groups"]},
                             options=StateDictOptions(strict=True))
    rank = dist.get_rank()
    rng_file = folder / f"rng-{rank}.json"
    if rng_file.exists():  # absent when resuming on more ranks than saved: the order of data does not use it
        set_rng_state(_rng_from_json(json.loads(rng_file.read_text())), device)
    return meta


# ---- reading DCP folders without unpickling --------------------------------------------------

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED = {
    (_DCP_METADATA, name) for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "TensorProperties",
                                       "ChunkStorageMetadata", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
     ("pathlib", "WindowsPath"), ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, which is not checkpoint metadata")


class SafeReader(FileSystemReader):
    """A DCP FileSystemReader whose `.metadata` is read by an allow-list unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class TensorsOnlyPlanner(DefaultLoadPlanner):
    """DCP stores non-tensor values as pickled bytes; composer never writes them and never reads them."""

    def load_bytes(self, read_item: Any, value: Any) -> None:
        raise pickle.UnpicklingError(f"checkpoint entry {read_item.dest_index.fqn} is a pickled object; refusing to load it")


def load_model_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The full (unsharded) model weights of a distributed checkpoint folder, on the CPU, in one
    process with no process group: what export reads. Keys as the trained module's state dict."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = Path(folder)
    if not (folder / ".metadata").is_file():
        raise ConfigError(f"{folder} is not a distributed checkpoint (no .metadata file)")
    metadata = SafeReader(str(folder)).read_metadata()
    state = {fqn: torch.empty(meta.size, dtype=meta.properties.dtype)
             for fqn, meta in metadata.state_dict_metadata.items()
             if fqn.startswith("model.") and isinstance(meta, TensorStorageMetadata)}
    with warnings.catch_warnings():  # "no process group: loading in a single process", which is the intent
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, storage_reader=SafeReader(str(folder)), planner=TensorsOnlyPlanner(), no_dist=True)
    return {fqn.removeprefix("model."): tensor for fqn, tensor in state.items()}
