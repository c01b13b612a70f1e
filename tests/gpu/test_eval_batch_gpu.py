"""`trainer.eval_batch_size` on a GPU: the final evaluation of a proxy as `mad` trains it (bf16, each layer
compiled, the step a CUDA graph) scores the same whether the test set goes through in micro-batches of 32 (the
default) or in one forward (1,280 sequences, `eval_batch_size=1280`). Only the evaluation's batching differs, so
the test trains once and evaluates the same weights both ways.

Tolerance: accuracy within 0.005 (the seed spread of `mad` scores is 0.028 on average, benchmarks/RESULTS.md);
loss within 1% relative. bf16 matmuls of another batch size may take other kernels, so they round differently
and near-tied predictions can flip.
"""

import torch

from composer.config import model_config_from_mapping
from composer.engine.batches import ArrayBatches
from composer.engine.trainer import TrainerConfig, evaluate, train
from composer.model import build_model
from composer.engine.objective import Objective
from composer.tasks.mad import TASKS, task_config_from_mapping

DEVICE = torch.device("cuda")


def test_one_forward_of_the_test_set_scores_as_micro_batches(tmp_path):
    task_cfg = task_config_from_mapping("noisy_in_context_recall", {})  # the baseline: 1,280 test sequences of 128
    task = TASKS["noisy_in_context_recall"]
    x, y = task.generate(task_cfg, n_examples=4096, seed=0)
    test_x, test_y = (t.to(DEVICE) for t in task.generate(task_cfg, n_examples=task_cfg.n_test, seed=1))
    model = build_model(model_config_from_mapping({"pattern": "M*-*M-*-", "vocab_size": task_cfg.vocab_size,
                                                   "d_model": 128}, where="model"), seed=0)
    cfg = TrainerConfig(max_tokens=1_000_000, batch_size=32, lr=3e-3, compile=True, cuda_graph=True, device="cuda",
                        ckpt_every=0, progress=False)
    objective = Objective(model, None)
    summary = train(objective, train_batches=ArrayBatches(x.to(DEVICE), y.to(DEVICE), batch_size=32, seed=0),
                    eval_batches=[(test_x, test_y)], seq_len=x.shape[1], cfg=cfg, run_dir=tmp_path / "run",
                    signature={"name": "eval-batch"})
    assert summary["impl"]["step"] == "cuda_graph" and summary["eval_batches"] == 1
    micro = evaluate(objective, [(test_x[i : i + 32], test_y[i : i + 32]) for i in range(0, len(test_x), 32)],
                     cfg=cfg, device=DEVICE)
    whole = evaluate(objective, [(test_x, test_y)], cfg=cfg, device=DEVICE)
    print(f"40 forwards of 32: {micro}; one of {len(test_x)}: {whole}; summary {summary['final']}")
    assert micro["accuracy"] > 2 * task_cfg.chance_accuracy, "the proxy learned nothing: a comparison of chance scores"
    assert abs(whole["accuracy"] - micro["accuracy"]) <= 0.005
    assert abs(whole["loss"] - micro["loss"]) <= 0.01 * micro["loss"]
