"""The chunked (fused-linear) cross-entropy against the plain path that materialises the logits.

Tolerance: relative max error, max|chunked - plain| / max|plain|, fp32 on the CPU: 1e-6 (the two
paths sum the same terms in another order: the logsumexp per row, the head weight's gradient over
chunks); bf16 autocast: 2e-2 (as tests/gpu/test_kernel_parity.py: several bf16 roundings deep).
"""

import json
import sys

import pytest
import torch

from composer.config import ModelConfig
from composer.engine.batches import IGNORE
from composer.errors import ConfigError
from composer.engine.loss import chunk_rows, chunked_loss_and_correct
from composer.model import build_model
from composer.engine.trainer import TrainerConfig, resolve_loss
from composer.engine.objective import Objective, loss_and_correct
from primitives.mamba2 import Mamba2Config
from tests.test_pretrain import MODEL, curve, make_corpus, run

FP32_TOL, BF16_TOL = 1e-6, 2e-2


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _inputs(n: int = 50, d: int = 24, vocab: int = 37, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, n // 2, d, generator=g)  # (B, T, D)
    weight = torch.randn(vocab, d, generator=g) / d**0.5  # (V, D)
    targets = torch.randint(0, vocab, (2, n // 2), generator=g)  # (B, T)
    targets[0, :5] = IGNORE  # a prompt that does not count
    targets[1, ::3] = IGNORE
    return hidden, weight, targets


def _loss_and_grads(loss_fn, hidden, weight, targets, scale: float = 1.0):
    hidden, weight = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    loss, correct, counted = loss_fn(hidden, weight, targets)
    (scale * loss / counted).backward()
    return loss.detach(), correct, counted, hidden.grad, weight.grad


def _plain(hidden, weight, targets):
    return loss_and_correct(hidden @ weight.T, targets)


@pytest.mark.parametrize("rows", [1, 7, 16, 25, 1000])  # 7: the last chunk is ragged; 1000: one chunk
def test_chunked_loss_and_gradients_equal_the_plain_path(rows):
    hidden, weight, targets = _inputs()
    chunked = _loss_and_grads(lambda h, w, t: chunked_loss_and_correct(h, w, t, rows=rows), hidden, weight, targets,
                              scale=3.0)
    plain = _loss_and_grads(_plain, hidden, weight, targets, scale=3.0)
    assert rel_err(chunked[0], plain[0]) < FP32_TOL
    assert chunked[1] == plain[1] and chunked[2] == plain[2] == (targets != IGNORE).sum()
    assert rel_err(chunked[3], plain[3]) < FP32_TOL  # hidden states, ignored rows included (zero)
    assert rel_err(chunked[4], plain[4]) < FP32_TOL  # head weight
    assert chunked[3][targets == IGNORE].abs().max() == 0


def test_evaluation_without_gradients_gives_the_same_counts():
    hidden, weight, targets = _inputs()
    with torch.no_grad():
        chunked = chunked_loss_and_correct(hidden, weight, targets, rows=7)
    plain = _plain(hidden, weight, targets)
    assert rel_err(chunked[0], plain[0]) < FP32_TOL and chunked[1:] == plain[1:]


def test_chunks_hold_a_bounded_number_of_logits():
    assert chunk_rows(128_256) == 1046 and chunk_rows(16) == 2**23 and chunk_rows(2**30) == 1


def _objective(loss_impl: str, *, tied: bool) -> Objective:
    cfg = ModelConfig(pattern="*-M-", vocab_size=61, d_model=32, tie_embeddings=tied,
                      primitives={"mamba2": Mamba2Config(head_dim=16, d_state=16, chunk_size=16)})
    return Objective(build_model(cfg, seed=0), loss_impl=loss_impl)


@pytest.mark.parametrize("tied", [True, False])
def test_the_model_trains_on_the_same_gradients_through_either_loss(tied):
    """The tied embedding takes the head's gradient and the lookup's: both must match."""
    _, _, targets = _inputs(n=40, vocab=61, seed=1)
    tokens = torch.randint(0, 61, targets.shape, generator=torch.Generator().manual_seed(2))
    grads = {}
    for impl in ("chunked", "full"):
        module = _objective(impl, tied=tied)
        loss, _, counted = module(tokens, targets)
        (loss / counted).backward()
        grads[impl] = {n: p.grad for n, p in module.named_parameters()}
    assert grads["chunked"].keys() == grads["full"].keys()
    assert ("model.head.weight" in grads["full"]) is not tied
    for name, g in grads["full"].items():
        assert rel_err(grads["chunked"][name], g) < FP32_TOL, name


def test_bf16_autocast_on_cpu_stays_within_bf16_tolerance():
    hidden, weight, targets = _inputs(n=64, d=32, vocab=50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = _loss_and_grads(lambda h, w, t: chunked_loss_and_correct(h, w, t, rows=9), hidden, weight, targets)
        plain = _loss_and_grads(_plain, hidden, weight, targets)
    assert chunked[3].dtype == plain[3].dtype == torch.float32  # gradients in the parameters' dtype
    for i in (0, 3, 4):
        assert rel_err(chunked[i], plain[i]) < BF16_TOL


def test_the_trainer_picks_and_checks_the_loss_path():
    lm, with_head = _objective("full", tied=True), Objective(torch.nn.Linear(2, 2), head=torch.nn.Linear(2, 2))
    assert resolve_loss(TrainerConfig(), lm) == "full"  # the default: fastest measured on H200
    assert resolve_loss(TrainerConfig(loss="chunked"), lm) == "chunked"
    assert resolve_loss(TrainerConfig(), with_head) == "full"
    with pytest.raises(ConfigError, match="own output head"):
        resolve_loss(TrainerConfig(loss="chunked"), with_head)
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainerConfig(loss="fused")


def test_two_fsdp_ranks_with_the_chunked_loss_match_one_process_with_the_full_loss(tmp_path):
    """composer-pretrain: FSDP2 over 2 gloo ranks, micro-batches (gradient sync at the last only),
    the chunked loss, against one process with the plain loss; the run folder records the path."""
    corpus = make_corpus(tmp_path / "corpus")
    steps = 8
    common = [*MODEL, f"data.path={corpus}", "data.val_tokens=2000", f"data.cache_dir={tmp_path / 'cache'}",
              "seq_len=32", "trainer.batch_size=8", f"trainer.max_tokens={steps * 8 * 32}", "trainer.log_every=1",
              "trainer.eval_every=0", "trainer.ckpt_every=0", "trainer.progress=false", "export=false",
              "needle=false", "leaderboard=null"]
    one = run([sys.executable, "-m", "composer.apps.pretrain", *common, f"hydra.run.dir={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "composer.apps.pretrain", *common, "trainer.loss=chunked", "trainer.micro_batch_size=2",
               f"hydra.run.dir={tmp_path / 'two'}"])
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    assert max(abs(a[s] - b[s]) / a[s] for s in a) < 1e-5
    impl = {p: json.loads((tmp_path / p / "summary.json").read_text())["impl"]["loss"] for p in ("one", "two")}
    assert impl == {"one": "full", "two": "chunked"}
