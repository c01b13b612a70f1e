"""The full pretraining job (`composer-pretrain`): one pattern on real text with the shared trainer.

    composer-pretrain model.pattern='M-M-M*-' name=demo                      # one GPU, or the CPU
    torchrun --nproc_per_node=8 -m composer.apps.pretrain name=run1               # 8 GPUs of one node
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=$HEAD:29500 \\
        -m composer.apps.pretrain name=run1                                        # 4 nodes
    composer-pretrain --config-dir outputs/extrapolate/<run> --config-name pretrain

Every run is a process group (of one without torchrun), so one GPU and many share one code path:
FSDP2 per layer, a global batch of `trainer.batch_size` sequences split over ranks and
micro-batches, distributed checkpoints every `trainer.ckpt_every` steps and on SIGTERM/SIGUSR1.
The run folder is `outputs/pretrain/<name>`; rerunning the same command resumes there. At the end
rank 0 exports the weights to `model/` (safetensors) and runs the needle probe; the command
(`composer.apps.pretrain`) then appends the run to the leaderboard.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from composer.engine import distributed
from composer.config import from_mapping, model_config_from_mapping
from composer.errors import ConfigError
from composer.data.text import CorpusConfig
from composer.engine.trainer import TrainerConfig, preflight, resolve_device

log = logging.getLogger("composer")

KEYS = ("name", "model", "data", "trainer", "seq_len", "seed", "export", "needle", "leaderboard")


def padded_vocab(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def pretrain_config_from_mapping(cfg: dict[str, Any]) -> tuple[CorpusConfig, TrainerConfig]:
    """The data and trainer sections, typed (the model section is checked, but built once the tokenizer's size is
    known); a ConfigError names an unknown key or a bad value
    (composer-launch calls it too, before a job waits in a queue)."""
    unknown = sorted(set(cfg) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} (valid: {', '.join(KEYS)})")
    data, trainer = from_mapping(CorpusConfig, cfg["data"], where="data"), from_mapping(TrainerConfig, cfg["trainer"], where="trainer")
    # the pattern and the primitives' settings too, before a corpus is fetched (or a job queued); the real
    # vocabulary's size waits for the tokenizer, a stand-in serves here
    model_config_from_mapping(cfg["model"], vocab_size=padded_vocab(1))
    return data, trainer


def pretrain_from_config(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The `composer-pretrain` job on a plain config mapping (what Hydra composed)."""
    from composer.runs.proxy import train_on_text

    data_cfg, trainer_cfg = pretrain_config_from_mapping(cfg)
    world = distributed.init()
    preflight(trainer_cfg, resolve_device(trainer_cfg.device))  # e.g. float8 on a GPU without it: before the corpus loads
    if not world.main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the job
    seq_len, seed = int(cfg["seq_len"]), int(cfg["seed"])
    corpus = _open_corpus(data_cfg, seed=seed, main=world.main)
    model_cfg = model_config_from_mapping(cfg["model"], vocab_size=padded_vocab(corpus.vocab_size))
    log.info("pretraining %r (%d layers, d_model %d) on %d ranks: %s training tokens, batch %d x %d, in %s",
             model_cfg.pattern, model_cfg.n_layers, model_cfg.d_model, world.world_size, f"{corpus.train.n_tokens:,}",
             trainer_cfg.batch_size, seq_len, run_dir)
    summary = train_on_text(model_cfg=model_cfg, corpus=corpus, trainer_cfg=trainer_cfg, seq_len=seq_len, seed=seed,
                            run_dir=run_dir, summary={"name": cfg["name"], "data": cfg["data"]})
    if world.main and (cfg["export"] or cfg["needle"]):
        summary = _finish(cfg, summary, run_dir=run_dir, model_cfg=model_cfg, data_cfg=data_cfg, corpus=corpus,
                          seq_len=seq_len, device=resolve_device(trainer_cfg.device))
    final = summary["final"]
    log.info("done: %r  val loss %.4f  %.4f bits/byte  %s tokens/s%s -> %s", model_cfg.pattern, final["loss"],
             final["bits_per_byte"], f"{summary.get('tokens_per_s', 0):,.0f}",
             f"  MFU {summary['mfu']:.1%}" if "mfu" in summary else "", run_dir / "summary.json")
    return summary


def _finish(cfg: dict[str, Any], summary: dict[str, Any], *, run_dir: Path, model_cfg: Any, data_cfg: CorpusConfig,
            corpus: Any, seq_len: int, device: Any) -> dict[str, Any]:
    """Rank 0, after training: the final weights exported and the needle probe."""
    from composer.engine import checkpoint as ckpt
    from composer.evals.export import save_pretrained
    from composer.model import build_model
    from composer.evals.needle import needle_accuracy
    from composer.data.tokenizer import load_tokenizer
    from composer.records import write_json

    weights = ckpt.load_model_weights(run_dir / ckpt.FOLDER)  # the final checkpoint, unsharded
    model = build_model(model_cfg)
    model.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()})
    if cfg["export"]:
        out = save_pretrained(model, run_dir / "model", tokenizer_spec=data_cfg.tokenizer, max_length=seq_len,
                              extra={"name": cfg["name"], "step": summary["step"], "tokens": summary["tokens"],
                                     "final": summary["final"]})
        log.info("exported %s (composer-eval %s runs the downstream suite)", out, out)
    if cfg["needle"]:
        try:
            probe = needle_accuracy(model.to(device), load_tokenizer(data_cfg.tokenizer), seq_len=seq_len,
                                    filler=corpus.val if corpus.val.n_tokens else None)
        except ConfigError as exc:  # e.g. a context too short for the needle: the run itself is fine
            log.warning("needle probe skipped: %s", exc)
            probe = {}
        summary = {**summary, "needle": probe}
        log.info("needle in a haystack: %s", ", ".join(f"{k} {v:.2f}" for k, v in probe.items() if k.startswith("needle@")))
    write_json(run_dir / "summary.json", summary)
    return summary


def _open_corpus(data_cfg: CorpusConfig, *, seed: int, main: bool):
    """Rank 0 fetches and tokenises first; the others then read its cache."""
    import torch.distributed as dist

    corpus = data_cfg.open(seed=seed) if main else None
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
    return corpus if corpus is not None else data_cfg.open(seed=seed)
