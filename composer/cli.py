"""Command-line apps (Hydra lives here and nowhere else): `composer-train`, `composer-extrapolate`,
`composer-search`, `composer-pretrain`.

Known errors (bad pattern, unknown key, missing file, diverged run) print one line on stderr and
exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from composer.errors import ComposerError, ConfigError

log = logging.getLogger("composer")


def _one_line(exc: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines; say what key is wrong in one."""
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    cause = exc.__cause__ if isinstance(exc, ConfigCompositionException) else exc
    if isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause):
        key = getattr(cause, "full_key", None) or str(cause).split("'")[1]
        return f"unknown config key {key!r} (check the spelling; `composer-train --cfg job` prints every key)"
    if isinstance(exc, MissingConfigException):
        options = ", ".join(getattr(exc, "options", None) or [])
        return f"{str(exc).splitlines()[0]}" + (f" (available: {options})" if options else "")
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return f"{cause.full_key}: {str(cause).splitlines()[0]}"
    return " ".join(str(exc).split())


_failed_jobs: list[str] = []  # run folders of sweep jobs that failed with a user error


def run_app(app, prog: str) -> None:
    """Run a Hydra app so that user errors come back as one line and exit code 2."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let errors reach us instead of Hydra's printer
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        app()
    except (ComposerError, HydraException, OmegaConfBaseException) as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    if _failed_jobs:  # a -m sweep that went on past failed jobs
        print(f"{prog}: {len(_failed_jobs)} job(s) failed: {', '.join(_failed_jobs)}", file=sys.stderr)
        sys.exit(2)


def _plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def train_from_config(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The `composer-train` job on a plain config mapping (what Hydra composed)."""
    from composer.config import from_mapping, model_config_from_mapping
    from composer.proxy import train_on_task
    from composer.tasks import build_task_config
    from composer.trainer import TrainerConfig

    unknown = sorted(set(cfg) - {"model", "task", "trainer", "seed"})
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} (valid: model, task, trainer, seed)")
    task_section = dict(cfg["task"])
    task_name = task_section.pop("name")
    task_cfg = build_task_config(task_name, task_section)
    model_section = dict(cfg["model"])
    vocab = model_section.pop("vocab_size", None) or task_cfg.vocab_size
    if vocab < task_cfg.vocab_size:
        raise ConfigError(f"model.vocab_size ({vocab}) is smaller than task {task_name}'s vocabulary ({task_cfg.vocab_size})")
    model_cfg = model_config_from_mapping({**model_section, "vocab_size": vocab})
    trainer_cfg = from_mapping(TrainerConfig, cfg["trainer"], where="trainer")
    log.info("training %r (%d layers) on %s in %s", model_cfg.pattern, model_cfg.n_layers, task_name, run_dir)
    summary = train_on_task(model_cfg=model_cfg, task_name=task_name, task_cfg=task_cfg, trainer_cfg=trainer_cfg,
                            seed=int(cfg["seed"]), run_dir=run_dir)
    final = summary["final"]
    log.info("done: %r  params %d  loss %.4f  accuracy %.4f  -> %s", model_cfg.pattern, summary["n_params"],
             final["loss"], final["accuracy"], run_dir / "summary.json")
    return summary


def _job(prog: str, cfg: DictConfig, work) -> None:
    """Run one Hydra job: save the resolved config into the run folder, then `work(config dict,
    run_dir)`. A user error ends a single run at once (one line, exit 2); in a `-m` sweep it is
    reported and the sweep goes on, exiting 2 at the end."""
    from hydra.types import RunMode

    from composer.trainer import Preempted

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        work(_plain(cfg), run_dir)
    except Preempted as exc:  # SIGTERM/SIGUSR1: checkpointed; exit as the signal would, so schedulers requeue
        from composer import distributed

        if distributed.current().main:
            print(f"{prog}: {exc}", file=sys.stderr)
        sys.exit(128 + exc.signum)
    except KeyboardInterrupt:
        command = [prog, *(o for o in hc.overrides.task if not o.startswith("hydra.run.dir=")),
                   f"hydra.run.dir={hc.runtime.output_dir}"]
        print(f"{prog}: interrupted; the last checkpoint is kept. Resume with: {shlex.join(command)}", file=sys.stderr)
        sys.exit(130)
    except ComposerError as exc:
        if hc.mode != RunMode.MULTIRUN:
            print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
            sys.exit(2)
        print(f"{prog}: job {hc.job.num} ({' '.join(hc.overrides.task)}) failed: {_one_line(exc)}", file=sys.stderr)
        _failed_jobs.append(hc.runtime.output_dir)


@hydra.main(config_path="pkg://configs", config_name="train", version_base=None)
def _train_app(cfg: DictConfig) -> None:
    _job("composer-train", cfg, train_from_config)


def extrapolate_from_config(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The `composer-extrapolate` job: grow the pattern, account for it, plan its training, write
    `pretrain.yaml`, `megatron_args.txt` and `extrapolation.json` into the run folder."""
    import json
    from dataclasses import asdict

    from scaling.accounting import account
    from scaling.extrapolate import extrapolate
    from scaling.rules import Rules, plan_training

    if cfg["format"] not in ("text", "json"):
        raise ConfigError(f"format must be text or json, got {cfg['format']!r}")
    result = extrapolate(cfg["pattern"], target=cfg["target"], method=cfg["method"])
    model_cfg = result.model_config()
    acct = account(model_cfg, seq_len=cfg["seq_len"])
    plan = plan_training(result.n_params, seq_len=cfg["seq_len"], tokens=cfg["tokens"],
                         rules=Rules(tokens_per_param=cfg["tokens_per_param"]))
    record = {
        "pattern": result.pattern, "source_pattern": result.source_pattern, "method": result.method,
        "target": result.target, "n_layers": result.n_layers, "counts": result.counts, "d_model": result.d_model,
        "n_params": result.n_params, "n_non_embedding_params": result.n_non_embedding_params,
        "target_non_embedding_params": result.target_non_embedding_params, "deviation": result.deviation,
        "s": result.s, "train_flops_per_token": acct.train_flops_per_token,
        "state_bytes_per_token": {str(k): v for k, v in acct.state_bytes_per_token.items()},
        "plan": {**asdict(plan), "stable_steps": plan.stable_steps},
    }
    (run_dir / "pretrain.yaml").write_text(pretrain_config(result, model_cfg, plan, seq_len=cfg["seq_len"]))
    args = megatron_args(model_cfg, seq_len=cfg["seq_len"])
    (run_dir / "megatron_args.txt").write_text(" \\\n".join(args) + "\n")
    (run_dir / "extrapolation.json").write_text(json.dumps(record, indent=2) + "\n")
    if cfg["format"] == "json":
        print(json.dumps(record))
    else:
        print(_extrapolation_text(record, run_dir))
    return record


def pretrain_config(result: Any, model_cfg: Any, plan: Any, *, seq_len: int) -> str:
    """A complete, self-contained `composer-pretrain` config (YAML) for the grown model and its plan:
    configs/pretrain.yaml's keys with configs/data/docs.yaml and configs/trainer/pretrain.yaml merged in."""
    import hashlib
    from dataclasses import asdict

    import yaml

    configs = Path(__file__).resolve().parent.parent / "configs"
    model_section = asdict(model_cfg)
    model_section.update(model_section.pop("primitives"))  # one section per primitive, as configs/model
    micro = max(1, 2 ** int(math.log2(max(1, 8192 // seq_len))))  # ~8K tokens per GPU per forward
    trainer = yaml.safe_load((configs / "trainer" / "pretrain.yaml").read_text())
    trainer.update(max_tokens=plan.tokens, batch_size=plan.batch_sequences, micro_batch_size=min(micro, plan.batch_sequences),
                   lr=plan.peak_lr, schedule="wsd", warmup=plan.warmup_steps / plan.steps,
                   decay=plan.decay_steps / plan.steps, min_lr_ratio=0.0, eval_every=1000, ckpt_every=1000,
                   compile=True)  # per layer: +20-25% tokens/s on H200 (benchmarks/RESULTS.md, issue 7)
    base = yaml.safe_load((configs / "pretrain.yaml").read_text())
    config = {
        "name": f"{result.target}-{hashlib.sha1(result.pattern.encode()).hexdigest()[:8]}", "seq_len": seq_len,
        "seed": 0, "model": model_section, "data": yaml.safe_load((configs / "data" / "docs.yaml").read_text()),
        "trainer": trainer, **{k: base[k] for k in ("export", "needle", "leaderboard")}, "hydra": base["hydra"],
    }
    header = (f"# {result.pattern!r}: {result.source_pattern!r} grown to {result.target} by {result.method}.\n"
              f"# A complete composer-pretrain config. Point data.path and data.tokenizer at your corpus, then\n"
              f"#   torchrun --nproc_per_node=8 -m composer.pretrain --config-path $PWD/<this folder> --config-name pretrain\n"
              f"# trainer.micro_batch_size is sequences per GPU per forward: lower it if a GPU runs out of memory.\n")
    return header + yaml.safe_dump(config, sort_keys=False)


def megatron_args(model_cfg: Any, *, seq_len: int) -> list[str]:
    """Megatron-LM arguments for the same model (hybrid models: `pretrain_mamba.py`)."""
    from composer.pattern import to_megatron_args

    attn, mlp, mamba = (model_cfg.primitives[name] for name in ("attention", "mlp", "mamba2"))
    d = model_cfg.d_model
    args = [*to_megatron_args(model_cfg.pattern), "--hidden-size", str(d), "--ffn-hidden-size", str(mlp.hidden_size(d)),
            "--num-attention-heads", str(attn.n_heads), "--group-query-attention", "--num-query-groups",
            str(attn.kv_heads), "--kv-channels", str(attn.head_size(d)), "--mamba-state-dim", str(mamba.d_state),
            "--mamba-head-dim", str(mamba.head_dim), "--mamba-num-groups", str(mamba.n_groups),
            "--seq-length", str(seq_len), "--max-position-embeddings", str(seq_len), "--normalization", "RMSNorm",
            "--swiglu", "--disable-bias-linear"]
    if attn.rope_theta is not None:
        args += ["--position-embedding-type", "rope", "--rotary-base", f"{attn.rope_theta:g}"]
    if not model_cfg.tie_embeddings:
        args.append("--untie-embeddings-and-output-weights")
    return [f"'{a}'" if any(c in a for c in "*|") else a for a in args]


def _extrapolation_text(r: dict[str, Any], run_dir: Path) -> str:
    layers = ", ".join(f"{n} {letter!r}" for letter, n in r["counts"].items() if n)
    plan = r["plan"]
    states = ", ".join(f"{float(v):,.0f} B at {int(k) // 1024}K" for k, v in r["state_bytes_per_token"].items())
    return "\n".join([
        f"{r['source_pattern']!r} -> {r['target']} by {r['method']} (s = {r['s']:.3f})",
        f"  pattern      {r['pattern']}",
        f"  layers       {r['n_layers']} ({layers}), d_model {r['d_model']}",
        f"  parameters   {r['n_params']:,} total, {r['n_non_embedding_params']:,} non-embedding "
        f"(target {r['target_non_embedding_params']:,}, deviation {r['deviation']:+.2%})",
        f"  train FLOPs  {r['train_flops_per_token']:.3e} per token at seq_len {plan['seq_len']}",
        f"  state/token  {states}",
        f"  plan         {plan['tokens'] / 1e9:.1f}B tokens, batch {plan['batch_sequences']} x {plan['seq_len']}, "
        f"{plan['steps']:,} steps (warmup {plan['warmup_steps']:,}, decay {plan['decay_steps']:,}), "
        f"peak lr {plan['peak_lr']:.2e}",
        f"  wrote        {run_dir}/pretrain.yaml, megatron_args.txt, extrapolation.json",
    ])


@hydra.main(config_path="pkg://configs", config_name="extrapolate", version_base=None)
def _extrapolate_app(cfg: DictConfig) -> None:
    _job("composer-extrapolate", cfg, extrapolate_from_config)


def search_from_config(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The `composer-search` job: search, aggregate, report, write the leaderboard."""
    from search.runner import run_search, search_config_from_mapping

    return run_search(search_config_from_mapping(cfg), run_dir=run_dir)


@hydra.main(config_path="pkg://configs.search", config_name="search", version_base=None)
def _search_app(cfg: DictConfig) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search logs one line per trial itself
    _job("composer-search", cfg, search_from_config)


@hydra.main(config_path="pkg://configs", config_name="pretrain", version_base=None)
def _pretrain_app(cfg: DictConfig) -> None:
    from composer import distributed
    from composer.pretrain import pretrain_from_config

    try:
        _job("composer-pretrain", cfg, pretrain_from_config)
    finally:
        distributed.shutdown()


def pretrain_main() -> None:
    run_app(_pretrain_app, "composer-pretrain")


def search_main() -> None:
    run_app(_search_app, "composer-search")


def extrapolate_main() -> None:
    run_app(_extrapolate_app, "composer-extrapolate")


def train_main() -> None:
    run_app(_train_app, "composer-train")


if __name__ == "__main__":  # `python -m composer.cli [extrapolate|search|pretrain] ...`; train by default
    apps = {"extrapolate": extrapolate_main, "search": search_main, "pretrain": pretrain_main}
    if sys.argv[1:2] and sys.argv[1] in apps:
        apps[sys.argv.pop(1)]()
    else:
        train_main()
