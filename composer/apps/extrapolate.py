"""`composer-extrapolate`: grow a pattern to a preset size, account for it, plan its training.

    composer-extrapolate pattern='M-*-M-' target=1b seq_len=2048

Writes `pretrain.yaml` (a complete composer-pretrain config), `megatron_args.txt` and
`extrapolation.json` into the run folder (scaling/handoff.py builds the first two).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra

from composer.apps.common import hydra_job, run_hydra
from composer.errors import ConfigError, PatternError

PROG = "composer-extrapolate"
NOTE_DEVIATION = 0.05  # further than this from the target's size: the output names method=fit's result


def extrapolate_from_config(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The `composer-extrapolate` job: grow the pattern, account for it, plan its training, write
    `pretrain.yaml`, `megatron_args.txt` and `extrapolation.json` into the run folder."""
    from scaling.accounting import account
    from scaling.extrapolate import extrapolate
    from scaling.handoff import megatron_args, pretrain_config
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
        "n_active_params": result.n_active_params,
        "target_non_embedding_params": result.target_non_embedding_params, "deviation": result.deviation,
        "s": result.s, "train_flops_per_token": acct.train_flops_per_token,
        "state_bytes_per_token": {str(k): v for k, v in acct.state_bytes_per_token.items()},
        "plan": {**asdict(plan), "stable_steps": plan.stable_steps},
    }
    if abs(result.deviation) > NOTE_DEVIATION and result.method != "fit":  # ceil's rounding can overshoot by a fifth
        nearer = extrapolate(cfg["pattern"], target=cfg["target"], method="fit")
        if abs(nearer.deviation) < abs(result.deviation):
            record["nearer"] = {"method": "fit", "pattern": nearer.pattern, "n_layers": nearer.n_layers,
                                "deviation": nearer.deviation}
    (run_dir / "pretrain.yaml").write_text(pretrain_config(result, model_cfg, plan, seq_len=cfg["seq_len"]))
    try:
        args = megatron_args(model_cfg, seq_len=cfg["seq_len"])
        (run_dir / "megatron_args.txt").write_text(" \\\n".join(args) + "\n")
        record["megatron"] = "megatron_args.txt"
    except PatternError as exc:  # a layer Megatron-LM does not build: the composer config is still written
        (run_dir / "megatron_args.txt").unlink(missing_ok=True)
        record["megatron"] = f"none: {exc}"
    (run_dir / "extrapolation.json").write_text(json.dumps(record, indent=2) + "\n")
    if cfg["format"] == "json":
        print(json.dumps(record))
    else:
        print(_extrapolation_text(record, run_dir))
    return record


def _extrapolation_text(r: dict[str, Any], run_dir: Path) -> str:
    layers = ", ".join(f"{n} {letter!r}" for letter, n in r["counts"].items() if n)
    plan = r["plan"]
    states = ", ".join(f"{float(v):,.0f} B at {int(k) // 1024}K" for k, v in r["state_bytes_per_token"].items())
    return "\n".join([
        f"{r['source_pattern']!r} -> {r['target']} by {r['method']} (s = {r['s']:.3f})",
        f"  pattern      {r['pattern']}",
        f"  layers       {r['n_layers']} ({layers}), d_model {r['d_model']}",
        f"  parameters   {r['n_params']:,} total, {r['n_non_embedding_params']:,} non-embedding "
        f"(target {r['target_non_embedding_params']:,}, deviation {r['deviation']:+.2%})"
        + (f", {r['n_active_params']:,} active" if r["n_active_params"] != r["n_params"] else ""),
        *([f"  note         {r['deviation']:+.1%} off the target; method=fit grows it to {r['nearer']['n_layers']} layers, "
           f"{r['nearer']['deviation']:+.1%} ({r['nearer']['pattern']})"] if "nearer" in r else []),
        f"  train FLOPs  {r['train_flops_per_token']:.3e} per token at seq_len {plan['seq_len']}",
        f"  state/token  {states}",
        f"  plan         {plan['tokens'] / 1e9:.1f}B tokens, batch {plan['batch_sequences']} x {plan['seq_len']}, "
        f"{plan['steps']:,} steps (warmup {plan['warmup_steps']:,}, decay {plan['decay_steps']:,}), "
        f"peak lr {plan['peak_lr']:.2e}",
        f"  wrote        {run_dir}/pretrain.yaml, "
        + ("megatron_args.txt, " if r["megatron"] == "megatron_args.txt" else "")
        + "extrapolation.json"
        + ("" if r["megatron"] == "megatron_args.txt" else f"\n  megatron     {r['megatron']}"),
    ])


@hydra.main(config_path="pkg://configs", config_name="extrapolate", version_base=None)
def _app(cfg) -> None:
    hydra_job(PROG, cfg, extrapolate_from_config)


def main(argv: list[str] | None = None) -> int:
    return run_hydra(_app, PROG, argv)


if __name__ == "__main__":
    raise SystemExit(main())
