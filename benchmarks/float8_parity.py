"""Float8 against bf16 on real text (issue 18's loss parity): the same short pretraining run, same
seed, same data in the same order, once in bf16 and once per float8 recipe, on one GPU; the logged
training losses and the final validation loss compared against the tolerance stated below.

    python benchmarks/float8_parity.py --data-path .device/run/docs-bpe8192 --tokenizer .device/run/tokenizer.json
    python benchmarks/float8_parity.py ... --recipes rowwise --steps 300 --out $OUT/float8_parity.json
    python benchmarks/float8_parity.py --report float8_parity.json          # the table again, from a results file

Each run is `composer-pretrain` (a process group of one, so FSDP2 as in every pretraining run, and
tensorwise all-gathers its weights in float8) of `--pattern` at `--d-model`: `--steps` optimiser
steps of `--batch` x `--seq-len` tokens, every layer compiled on both sides (torchao fuses float8's
casts under torch.compile), the training loss logged every 10 steps and the validation split scored
at the end. GPU only: on a machine that cannot run float8 it stops before the bf16 run, with the
trainer's one-line reason.

Tolerance, fixed before any measurement (the first GPU run records its figures in benchmarks/RESULTS.md):
  final validation loss   |float8 - bf16| / bf16 <= --tol-final (default 1%)
  training loss           mean over the logged steps of the run's second half of |float8 - bf16| / bf16
                          <= --tol-train (default 1.5%): both runs see the same batches, so what
                          differs is rounding, and a logged loss is one step's value, noisier than
                          the validation loss over the whole split.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RECIPE_CHOICES = ("rowwise", "tensorwise")  # composer.engine.float8.RECIPES, without importing torch for --help
LOG_EVERY = 10


@dataclass(frozen=True, kw_only=True)
class Settings:
    data_path: str  # a text folder or a tokenised corpus cache (data.path)
    tokenizer: str  # data.tokenizer
    recipes: tuple[str, ...]  # float8 recipes, each run against the one bf16 run
    pattern: str
    d_model: int
    steps: int  # optimiser steps per run
    batch: int  # sequences per step
    seq_len: int
    val_tokens: int  # validation split (data.val_tokens)
    seed: int
    tol_final: float  # relative, final validation loss
    tol_train: float  # relative, mean over the second half's logged training losses
    out_dir: Path  # run folders
    extra: tuple[str, ...]  # more composer-pretrain overrides, for every run alike


def overrides(s: Settings, recipe: str | None) -> list[str]:
    """composer-pretrain's arguments for one run: bf16 (recipe None) or the recipe; the rest identical."""
    label = recipe or "bf16"
    return [
        f"name=float8-parity-{label}", f"hydra.run.dir={s.out_dir / label}",
        f"data.path={s.data_path}", f"data.tokenizer={s.tokenizer}", f"data.val_tokens={s.val_tokens}",
        f"model.pattern='{s.pattern}'", f"model.d_model={s.d_model}", f"seq_len={s.seq_len}", f"seed={s.seed}",
        f"trainer.batch_size={s.batch}", f"trainer.max_tokens={s.steps * s.batch * s.seq_len}",
        f"trainer.log_every={LOG_EVERY}", "trainer.eval_every=0", "trainer.ckpt_every=0", "trainer.progress=false",
        "trainer.compile=true", f"trainer.float8={recipe or 'null'}",
        "export=false", "needle=false", "leaderboard=null", *s.extra,
    ]


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> logged training loss, from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def compare(bf16: dict[str, Any], float8: dict[str, Any], *, tol_final: float, tol_train: float) -> dict[str, Any]:
    """Each run is {"losses": {step: loss}, "final_loss": validation loss}: the relative differences
    of float8 from bf16 and whether they are within the tolerance."""
    steps = sorted(set(bf16["losses"]) & set(float8["losses"]))
    if not steps:
        raise ValueError("the two runs logged no common step")
    rel = {step: abs(float8["losses"][step] - bf16["losses"][step]) / bf16["losses"][step] for step in steps}
    second_half = [rel[step] for step in steps if step > steps[-1] / 2] or list(rel.values())
    final = abs(float8["final_loss"] - bf16["final_loss"]) / bf16["final_loss"]
    train = sum(second_half) / len(second_half)
    return {"steps_compared": len(steps), "final_rel": round(final, 5), "train_mean_rel_second_half": round(train, 5),
            "train_max_rel": round(max(rel.values()), 5), "within": final <= tol_final and train <= tol_train}


def run_one(s: Settings, recipe: str | None) -> dict[str, Any]:
    """One composer-pretrain run: its losses, final validation loss and throughput."""
    label = recipe or "bf16"
    tic = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "composer.apps.pretrain", *overrides(s, recipe)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    (s.out_dir / f"{label}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"label": label, "error": f"exit {proc.returncode}: {tail}"[:400]}
    summary = json.loads((s.out_dir / label / "summary.json").read_text())
    return {"label": label, "losses": train_losses(s.out_dir / label), "final_loss": summary["final"]["loss"],
            "tokens_per_s": summary.get("tokens_per_s"), "float8": summary["impl"].get("float8"),
            "seconds": round(time.monotonic() - tic, 1)}


def refusal(recipes: tuple[str, ...]) -> str | None:
    """The trainer's one-line reason why this machine cannot train in float8; None if it can."""
    from composer.engine.trainer import TrainerConfig, preflight, resolve_device
    from composer.errors import ConfigError

    for recipe in recipes:
        try:
            preflight(TrainerConfig(float8=recipe), resolve_device("auto"))
        except ConfigError as exc:
            return str(exc)
    return None


def run(s: Settings, out: Path) -> dict[str, Any]:
    s.out_dir.mkdir(parents=True, exist_ok=True)
    settings = {**asdict(s), "out_dir": str(s.out_dir)}
    results: dict[str, Any] = {"settings": settings, "runs": [], "comparisons": []}
    bf16 = run_one(s, None)
    results["runs"].append(bf16)
    for recipe in s.recipes:
        run8 = run_one(s, recipe)
        results["runs"].append(run8)
        if "error" not in bf16 and "error" not in run8:
            results["comparisons"].append({"recipe": recipe, **compare(bf16, run8, tol_final=s.tol_final,
                                                                         tol_train=s.tol_train)})
        out.write_text(json.dumps(results, indent=1, default=str))
    return results


def markdown(results: dict[str, Any]) -> str:
    st = results["settings"]
    lines = ["| run | final val loss | tokens/s | vs bf16: final | train, 2nd half mean | train, max | within |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    comparisons = {c["recipe"]: c for c in results["comparisons"]}
    for r in results["runs"]:
        if "error" in r:
            lines.append(f"| {r['label']} | {r['error']} | | | | | |")
            continue
        c = comparisons.get(r["label"])
        diffs = (f"{c['final_rel']:.2%} | {c['train_mean_rel_second_half']:.2%} | {c['train_max_rel']:.2%} | "
                 f"{'yes' if c['within'] else 'NO'}") if c else " | | |"
        lines.append(f"| {r['label']} | {r['final_loss']:.4f} | {r['tokens_per_s'] or 0:,.0f} | {diffs} |")
    lines += ["", f"pattern {st['pattern']!r} at d_model {st['d_model']}, {st['steps']} steps of {st['batch']} x "
                  f"{st['seq_len']} tokens, seed {st['seed']}, compiled; tolerance: final {st['tol_final']:.1%}, "
                  f"training (second half, mean) {st['tol_train']:.1%}"]
    return "\n".join(lines)


def settings_from_args(argv: list[str] | None = None) -> tuple[Settings, Path] | Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-path", help="data.path: a text folder or tokenised corpus cache")
    p.add_argument("--tokenizer", help="data.tokenizer")
    p.add_argument("--recipes", default="rowwise,tensorwise", help=f"comma-separated: {', '.join(RECIPE_CHOICES)}")
    p.add_argument("--pattern", default="M-*-M-*-")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--val-tokens", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol-final", type=float, default=0.01)
    p.add_argument("--tol-train", type=float, default=0.015)
    p.add_argument("--out-dir", type=Path, default=Path("outputs/float8_parity"))
    p.add_argument("--out", type=Path, default=Path("float8_parity.json"))
    p.add_argument("--report", type=Path, help="print the table of this results file and exit")
    p.add_argument("extra", nargs="*", help="more composer-pretrain overrides for every run, e.g. model.mamba2.impl=torch")
    a = p.parse_args(argv)
    if a.report:
        return a.report
    if not a.data_path or not a.tokenizer:
        p.error("--data-path and --tokenizer are required (a corpus and its tokenizer)")
    recipes = tuple(a.recipes.split(","))
    unknown = sorted(set(recipes) - set(RECIPE_CHOICES))
    if unknown:
        p.error(f"unknown recipe {unknown[0]!r}; valid: {', '.join(RECIPE_CHOICES)}")
    if a.steps < 2 * LOG_EVERY:
        p.error(f"--steps must be at least {2 * LOG_EVERY} (losses are logged every {LOG_EVERY} steps)")
    s = Settings(data_path=a.data_path, tokenizer=a.tokenizer, recipes=recipes, pattern=a.pattern, d_model=a.d_model,
                 steps=a.steps, batch=a.batch, seq_len=a.seq_len, val_tokens=a.val_tokens, seed=a.seed,
                 tol_final=a.tol_final, tol_train=a.tol_train, out_dir=a.out_dir, extra=tuple(a.extra))
    return s, a.out


def main(argv: list[str] | None = None) -> int:
    parsed = settings_from_args(argv)
    if isinstance(parsed, Path):
        print(markdown(json.loads(parsed.read_text())))
        return 0
    settings, out = parsed
    reason = refusal(settings.recipes)
    if reason:
        print(f"float8_parity: error: {reason}", file=sys.stderr)
        return 2
    results = run(settings, out)
    print(markdown(results))
    ok = len(results["comparisons"]) == len(settings.recipes) and all(c["within"] for c in results["comparisons"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
