"""Export a model to a self-describing folder, and load it back, without ever unpickling.

An exported folder holds:

- `model.safetensors`: the `ComposedModel` weights under their module names (`embed.weight`,
  `layers.0.mixer...`); a tied LM head is not a tensor of its own, so it is not stored twice;
- `config.json`: the `ModelConfig` (pattern, width, every primitive's settings: all that rebuilds
  the architecture), the tokenizer (`"bytes"`, `"tokenizer.json"` beside it, or null for a MAD
  proxy trained on token ids), the context length the model was trained at, and `extra` (where it
  came from: step, tokens, the run's summary);
- `tokenizer.json`, when the model reads text through a BPE tokenizer.

`load_pretrained` reads only these three files (safetensors and JSON), with a strict key check.
`export_checkpoint` turns a trainer run folder into such a folder: `checkpoint.pt` is read with
`torch.load(weights_only=True)`, so a file holding anything but tensors and plain containers is
refused. `composer-export SRC OUT` is the command.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from composer.config import ModelConfig, flatten, model_config_from_mapping
from composer.errors import ComposerError, ConfigError
from composer.records import write_atomically
from composer.data.tokenizer import Tokenizer, load_tokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
FORMAT = "composer"
FORMAT_VERSION = 1

_RUN_CHECKPOINT = "checkpoint.pt"  # what the single-process trainer writes (composer/engine/checkpoint.py FILE)
_DCP_FOLDERS = ("checkpoint", "checkpoint.old")  # a distributed run's folder, then the one kept mid-swap


# ---- save and load ---------------------------------------------------------------------------

def save_pretrained(
    model: torch.nn.Module | tuple[Mapping[str, torch.Tensor], ModelConfig],
    out_dir: str | Path,
    *,
    tokenizer_spec: str | None,
    max_length: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write `model.safetensors` and `config.json` (and `tokenizer.json`) into `out_dir`; return it.

    `model`: a `ComposedModel`, or `(state_dict, ModelConfig)` with the ComposedModel's key names.
    `tokenizer_spec`: "bytes", a tokenizer.json (or a folder holding one), or None for a model of
    token ids (a MAD proxy). `max_length`: the context length it was trained at, if known.
    `extra`: JSON-able facts to keep with it (step, tokens, training summary).
    """
    if isinstance(model, tuple):
        state, cfg = model
    else:
        state, cfg = model.state_dict(), model.cfg
    if not isinstance(cfg, ModelConfig):
        raise ConfigError(f"save_pretrained needs a ModelConfig, got {type(cfg).__name__}")
    _check_keys(state, cfg, where="the model to save")
    tokenizer_entry, tokenizer_file = _tokenizer_entry(tokenizer_spec, vocab_size=cfg.vocab_size)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ComposerError(f"cannot export into {out}: it is a file")
    out.mkdir(parents=True, exist_ok=True)

    from safetensors.torch import save_file

    tensors = _standalone_tensors(state)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pattern": cfg.pattern,  # also in model; here for a reader that wants only the layout
        "model": dataclasses.asdict(cfg),
        "tokenizer": tokenizer_entry,
        "max_length": max_length,
        "n_params": sum(t.numel() for t in tensors.values()),
        "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()}),
        "extra": dict(extra or {}),
    }
    try:
        text = json.dumps(config, indent=2) + "\n"
    except TypeError as exc:
        raise ComposerError(f"extra must be JSON-serialisable: {exc}") from None
    write_atomically(out / WEIGHTS, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt", "pattern": cfg.pattern}))
    if tokenizer_file is not None:
        write_atomically(out / TOKENIZER, lambda tmp: shutil.copyfile(tokenizer_file, tmp))
    write_atomically(out / CONFIG, lambda tmp: tmp.write_text(text))  # last: its presence marks a whole export
    return out


def read_config(path: str | Path) -> dict[str, Any]:
    """An exported folder's config.json as a dict; a one-line ComposerError when it is not one."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ComposerError(f"no exported model at {folder}: not a folder")
    file = folder / CONFIG
    if not file.is_file():
        raise ComposerError(f"no exported model at {folder}: {CONFIG} is missing (composer-export writes one)")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ComposerError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ComposerError(f"{file} is not a composer export (no \"format\": \"{FORMAT}\")")
    if config.get("format_version") != FORMAT_VERSION:
        raise ComposerError(f"{file} has format_version {config.get('format_version')!r}; this composer reads {FORMAT_VERSION}")
    return config


def model_config_from_export(config: Mapping[str, Any]) -> ModelConfig:
    """The ModelConfig recorded in an export's config.json (or any `asdict(ModelConfig)` mapping)."""
    data = dict(config["model"])
    primitives = data.pop("primitives", None) or {}
    return model_config_from_mapping({**data, **primitives}, where="model")


def load_pretrained(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Tokenizer | None]:
    """Rebuild the model an exported folder describes and load its weights (safetensors only, every key
    checked). Returns (model in eval mode on `device`, its tokenizer or None for a token-id model)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from composer.model import ComposedModel

    folder = Path(path).expanduser()
    config = read_config(folder)
    cfg = model_config_from_export(config)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ComposerError(f"no exported model at {folder}: {WEIGHTS} is missing")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ComposerError(f"cannot read {weights}: {' '.join(str(exc).split())}") from None
    _check_keys(state, cfg, where=str(weights))
    model = ComposedModel(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # a shape mismatch: the weights belong to another configuration
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise ComposerError(f"{weights} does not fit the model in {CONFIG}: {first}") from None
    model.to(torch.device(device)).eval()
    return model, _load_export_tokenizer(folder, config.get("tokenizer"), vocab_size=cfg.vocab_size)


# ---- export from a run folder ----------------------------------------------------------------

def export_checkpoint(src: str | Path, out_dir: str | Path, *, tokenizer_spec: str | None = None) -> Path:
    """Export a trainer run's checkpoint (`<run>/checkpoint.pt`, the file itself, or a distributed
    `checkpoint/` folder) to `out_dir`. The model config comes from the checkpoint's signature,
    else from `<run>/config.yaml`; the tokenizer from `tokenizer_spec`, else from config.yaml."""
    source = Path(src).expanduser()
    if not source.exists():
        raise ComposerError(f"no checkpoint at {source}: it does not exist")
    kind, location = _locate_checkpoint(source)
    if kind == "dcp":
        tensors, meta = read_dcp_checkpoint(location)
    else:
        tensors, meta = _read_torch_checkpoint(location)
    run_dir = location.parent
    run_config = _read_run_config(run_dir)
    signature = meta.get("signature") if isinstance(meta.get("signature"), Mapping) else {}
    cfg = _recover_model_config(signature, run_config, tensors, where=location)
    state, dropped = _model_state(tensors, cfg, where=location)
    if tokenizer_spec is None and (from_run := _find_setting(run_config, "tokenizer")) is not None:
        try:  # a relative tokenizer path in config.yaml is relative to where the run was started
            load_tokenizer(str(from_run))
        except ComposerError as exc:
            raise ComposerError(f"{exc} (named in {run_dir / 'config.yaml'}; pass the tokenizer explicitly)") from None
        tokenizer_spec = str(from_run)
    summary = _read_json(run_dir / "summary.json")
    extra: dict[str, Any] = {
        "source": str(location.resolve()),
        "step": meta.get("step"),
        "signature": {k: v for k, v in signature.items() if k != "model"},
    }
    if summary is not None:
        extra["tokens"] = summary.get("tokens")
        extra["summary"] = {k: v for k, v in summary.items() if k not in ("model", "signature")}
    if dropped:
        extra["dropped"] = dropped  # e.g. a MAD task's own output head: not part of the language model
    max_length = _find_setting(run_config, "seq_len")
    if not isinstance(max_length, int):
        task_length = (signature.get("task_config") or {}).get("length")
        max_length = task_length if isinstance(task_length, int) else None
    return save_pretrained((state, cfg), out_dir, tokenizer_spec=tokenizer_spec, max_length=max_length, extra=extra)


def read_dcp_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """HOOK for distributed checkpoints (`<run>/checkpoint/`, written by torch.distributed.checkpoint
    in composer/engine/checkpoint.py): return (model tensors, meta).

    tensors: the trained module's model state dict, full (unsharded) CPU tensors under the keys
      the trained module gives them (an `Objective`'s `model.` prefix is fine: the caller strips it);
      never the optimiser state.
    meta: the folder's state.json (`step`, `signature` with `signature["model"]` = asdict(ModelConfig)).
    It must read without unpickling anything but DCP's own metadata (checkpoint.SafeReader and
    checkpoint.TensorsOnlyPlanner do that).
    """
    from composer.engine import checkpoint as ckpt

    return ckpt.load_model_weights(folder), json.loads((folder / "state.json").read_text())


def _locate_checkpoint(source: Path) -> tuple[str, Path]:
    """("torch", checkpoint.pt) or ("dcp", folder) for a run folder, a checkpoint file or a DCP folder."""
    if source.is_file():
        return "torch", source
    if (source / "state.json").is_file() and (source / ".metadata").is_file():
        return "dcp", source
    if (source / _RUN_CHECKPOINT).is_file():
        return "torch", source / _RUN_CHECKPOINT
    for name in _DCP_FOLDERS:
        if (source / name / "state.json").is_file():
            return "dcp", source / name
    if (source / CONFIG).is_file() and (source / WEIGHTS).is_file():
        raise ComposerError(f"{source} is already an exported model (load it with composer.evals.export.load_pretrained)")
    raise ComposerError(f"no checkpoint in {source} (looked for {_RUN_CHECKPOINT} and a distributed checkpoint/ folder)")


def _read_torch_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:  # weights_only: tensors and plain containers only; any other object is refused, not built
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise ComposerError(f"{path} holds objects other than tensors and plain containers ({found.group(1)}); "
                                f"refusing to unpickle it") from None
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip().startswith("Unsupported")), "")
        raise ComposerError(f"cannot read {path} as a checkpoint" + (f": {reason}" if reason else "")) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # truncated or not a torch file
        raise ComposerError(f"cannot read {path} as a checkpoint: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), Mapping):
        raise ComposerError(f"{path} is not a composer checkpoint (no \"model\" state dict in it)")
    tensors = dict(state["model"])
    if not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise ComposerError(f"{path}: the \"model\" state dict holds values that are not tensors")
    meta = {k: v for k, v in state.items() if k in ("step", "signature", "data")}
    return tensors, meta


def _read_run_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text())  # safe_load: plain YAML, no object tags
    except yaml.YAMLError as exc:
        raise ComposerError(f"cannot read {path}: {' '.join(str(exc).split())}") from None
    return data if isinstance(data, dict) else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _find_setting(config: Mapping[str, Any] | None, name: str) -> Any:
    """The value of the first key `name` in a run's config.yaml, at any depth (e.g. data.seq_len)."""
    for key, value in flatten(config or {}).items():
        if key.split(".")[-1] == name and value is not None:
            return value
    return None


def _recover_model_config(signature: Mapping[str, Any], run_config: Mapping[str, Any] | None,
                          tensors: Mapping[str, torch.Tensor], *, where: Path) -> ModelConfig:
    if isinstance(signature.get("model"), Mapping):
        return model_config_from_export({"model": signature["model"]})
    if run_config is None or not isinstance(run_config.get("model"), Mapping):
        raise ComposerError(f"{where} does not record its model config and {where.parent / 'config.yaml'} is missing; "
                            f"cannot tell which architecture the weights belong to")
    model = dict(run_config["model"])
    if model.get("vocab_size") is None:  # composer-train takes the task's vocabulary: read it off the embedding
        embed = next((t for k, t in tensors.items() if k.endswith("embed.weight")), None)
        if embed is None:
            raise ComposerError(f"{where}: no embedding in the checkpoint to read the vocabulary size from")
        model["vocab_size"] = int(embed.shape[0])
    return model_config_from_export({"model": model})


def _model_state(tensors: Mapping[str, torch.Tensor], cfg: ModelConfig, *, where: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The ComposedModel's own state dict out of the trained module's: the trainer trains an
    `Objective`, whose keys are `model.<...>` (plus `head.<...>` for a task's own output head)."""
    expected = _expected_keys(cfg)
    clean = {k.replace("_orig_mod.", ""): v for k, v in tensors.items()}  # a torch.compile'd module
    if expected <= clean.keys():
        state = {k: clean[k] for k in expected}
        return state, sorted(clean.keys() - expected)
    state = {k.removeprefix("model."): v for k, v in clean.items() if k.startswith("model.")}
    dropped = sorted(k for k in clean if not k.startswith("model."))
    _check_keys(state, cfg, where=str(where))
    return state, dropped


# ---- helpers ---------------------------------------------------------------------------------

def _expected_keys(cfg: ModelConfig) -> set[str]:
    from composer.model import ComposedModel

    with torch.device("meta"):
        return set(ComposedModel(cfg).state_dict())


def _check_keys(state: Mapping[str, Any], cfg: ModelConfig, *, where: str) -> None:
    expected, found = _expected_keys(cfg), set(state)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})")
        raise ComposerError(f"{where} does not match pattern {cfg.pattern!r}: keys {'; '.join(parts)}")


def _standalone_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no memory: safetensors refuses shared or overlapping
    storage (a head tied by assignment, a view), so a second alias of a storage is cloned."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[str, int]] = set()
    for name, tensor in state.items():
        t = tensor.detach().to("cpu").contiguous()
        storage = (t.device.type, t.untyped_storage().data_ptr())
        if storage in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # an alias, or a view into a larger storage
        seen.add((t.device.type, t.untyped_storage().data_ptr()))
        out[name] = t
    return out


def _tokenizer_entry(spec: str | None, *, vocab_size: int) -> tuple[str | None, Path | None]:
    """What config.json records for the tokenizer, and the tokenizer.json file to copy (if any)."""
    if spec is None:
        return None, None
    tokenizer = load_tokenizer(spec)
    if tokenizer.vocab_size > vocab_size:
        raise ConfigError(f"tokenizer {spec!r} has {tokenizer.vocab_size} ids but the model embeds only {vocab_size}")
    if spec == "bytes":
        return "bytes", None
    path = Path(spec).expanduser()
    return TOKENIZER, (path / TOKENIZER if path.is_dir() else path)


def _load_export_tokenizer(folder: Path, entry: Any, *, vocab_size: int) -> Tokenizer | None:
    if entry is None:
        return None
    if entry == "bytes":
        return load_tokenizer("bytes")
    if entry != TOKENIZER:
        raise ComposerError(f"{folder / CONFIG}: unknown tokenizer entry {entry!r} (expected \"bytes\", \"{TOKENIZER}\" or null)")
    if not (folder / TOKENIZER).is_file():
        raise ComposerError(f"{folder}: {CONFIG} names {TOKENIZER} but the file is missing")
    tokenizer = load_tokenizer(str(folder / TOKENIZER))
    if tokenizer.vocab_size > vocab_size:
        raise ComposerError(f"{folder / TOKENIZER} has {tokenizer.vocab_size} ids but the model embeds only {vocab_size}")
    return tokenizer
