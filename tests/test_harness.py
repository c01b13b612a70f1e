"""The lm-evaluation-harness adapter on a model trained here and a task written here (no hub access)."""

import json
import random
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from composer.config import model_config_from_mapping  # noqa: E402
from composer.engine.batches import ArrayBatches  # noqa: E402
from composer.errors import ComposerError  # noqa: E402
from composer.evals.export import export_checkpoint, save_pretrained  # noqa: E402
from composer.apps.eval import main  # noqa: E402
from composer.evals.harness import ComposerLM, score_windows  # noqa: E402
from composer.model import build_model  # noqa: E402
from composer.engine.trainer import TrainerConfig, train  # noqa: E402
from composer.engine.objective import Objective
from conftest import cli_env  # noqa: E402

PAIRS = {"red": "apple", "yellow": "banana", "green": "lime", "purple": "grape",
         "brown": "kiwi", "sweet": "mango", "soft": "pear", "dry": "date"}
SEQ = 32


def _text(rng: random.Random, n_bytes: int) -> list[int]:
    out: list[int] = []
    while len(out) < n_bytes:
        word = rng.choice(list(PAIRS))
        out.extend(f"{word} {PAIRS[word]}. ".encode())
    return out[:n_bytes]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A byte-level hybrid trained with the shared trainer on "red apple. dry date. ..." and exported:
    which fruit follows which word is all there is to learn."""
    root = tmp_path_factory.mktemp("pairs")
    rng = random.Random(0)
    data = torch.tensor([_text(rng, SEQ + 1) for _ in range(256)])
    cfg = model_config_from_mapping({"pattern": "*-M-", "vocab_size": 257, "d_model": 32, "attention": {"n_heads": 2},
                                     "mamba2": {"head_dim": 16, "d_state": 16, "chunk_size": 16}})
    train(Objective(build_model(cfg, seed=0)), train_batches=ArrayBatches(data[:, :-1], data[:, 1:], batch_size=16, seed=0),
          eval_batches=[(data[:32, :-1], data[:32, 1:])], seq_len=SEQ, run_dir=root / "run",
          cfg=TrainerConfig(max_tokens=40 * 16 * SEQ, batch_size=16, lr=1e-2, progress=False, device="cpu", ckpt_every=0),
          signature={"model": asdict(cfg), "task": "pairs", "seed": 0})
    return export_checkpoint(root / "run", root / "export", tokenizer_spec="bytes")


@pytest.fixture(scope="module")
def lm(exported):
    return ComposerLM(pretrained=str(exported), device="cpu", batch_size=3, max_length=16)


def _requests(kind, *args_list):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(args_list)]


@torch.no_grad()
def _direct(model, inputs: list[int], targets: list[int]) -> tuple[float, bool]:
    """The model's own full forward pass over `inputs`; its last len(targets) positions predict `targets`."""
    logits = model(torch.tensor([inputs]))[0, -len(targets):]  # (n, V)
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    target = torch.tensor(targets)
    return logprobs[torch.arange(len(targets)), target].sum().item(), bool((logprobs.argmax(-1) == target).all())


def _rolling_reference(model, tokens: list[int], *, prefix: int, max_length: int) -> tuple[float, bool]:
    """lm-eval's own windowing (get_rolling_token_windows), scored by full forward passes."""
    total, greedy = 0.0, True
    for context, pred in map(make_disjoint_window, get_rolling_token_windows(tokens, prefix, max_length, 1)):
        lp, g = _direct(model, (context + pred)[:-1], pred)
        total, greedy = total + lp, greedy and g
    return total, greedy


def test_loglikelihood_matches_the_forward_pass(lm):
    L, eot = lm.max_length, lm.eot_token_id
    cases = [
        ("red", " apple"),
        ("red", " grape"),
        ("dry date. purple grape. soft pear. red", " apple"),  # context cut on the left to fit 16
        ("", "green lime"),  # no context: EOS stands before it
        ("soft ", "pear"),  # a trailing space moves into the continuation
        ("r", "ed apple. yellow banana. green lime."),  # continuation longer than a window
    ]
    got = lm.loglikelihood(_requests("loglikelihood", *cases))
    for (context, continuation), (logprob, greedy) in zip(cases, got):
        if context == "":
            ctx, cont = [eot], list(continuation.encode())
        else:
            ctx, cont = list(context.rstrip().encode()), list(context[len(context.rstrip()):].encode() + continuation.encode())
        whole = ctx + cont
        if len(cont) <= L:
            expected = _direct(lm.model, whole[-(L + 1):][:-1], cont)
        else:
            assert len(ctx) == 1
            expected = _rolling_reference(lm.model, cont, prefix=ctx[0], max_length=L)
        assert logprob == pytest.approx(expected[0], abs=1e-4), (context, continuation)
        assert greedy == expected[1], (context, continuation)
    assert got[0][0] > got[1][0] and got[0][1]  # it learnt which fruit is red


def test_loglikelihood_rolling_matches_lm_eval_windows(lm, exported):
    texts = ["red apple.", "sweet mango. dry date. brown kiwi. soft pear. yellow banana."]
    got = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", *[(t,) for t in texts]))
    for text, logprob in zip(texts, got):
        expected, _ = _rolling_reference(lm.model, list(text.encode()), prefix=lm.eot_token_id, max_length=lm.max_length)
        assert logprob == pytest.approx(expected, abs=1e-4)
    wide = ComposerLM(pretrained=str(exported), device="cpu", max_length=128)  # one window: the plain sum
    tokens = [wide.eot_token_id, *texts[1].encode()]
    (logprob,) = wide.loglikelihood_rolling(_requests("loglikelihood_rolling", (texts[1],)))
    assert logprob == pytest.approx(_direct(wide.model, tokens[:-1], tokens[1:])[0], abs=1e-4)


def test_score_windows_score_every_token_once():
    tokens = list(range(50))
    for n_scored in (0, 1, 15, 16, 17, 49):
        windows = score_windows(tokens, n_scored, max_length=16)
        targets = [t for _, ts in windows for t in ts]
        assert targets == tokens[len(tokens) - n_scored:]
        for inputs, ts in windows:
            assert len(inputs) <= 16 and len(ts) <= len(inputs)
            end = tokens.index(ts[-1])
            assert inputs == tokens[end - len(inputs) : end]  # contiguous, ending right before the last target
        if len(windows) > 1:
            assert len(windows[-1][0]) == 16  # the last window has a full context


def test_generate_until_is_greedy_and_honours_stop_strings(exported):
    lm = ComposerLM(pretrained=str(exported), device="cpu", max_length=64)
    prompt = "yellow banana. red"
    tokens, _ = lm.model.generate(torch.tensor([list(prompt.encode())]), max_new_tokens=20)
    new = tokens[0, len(prompt):].tolist()
    reference = lm.tok_decode(new[: new.index(256)] if 256 in new else new)
    stop = reference[6:8]  # a stop string that occurs mid-way
    cases = [(prompt, {"until": [], "max_gen_toks": 20}),
             (prompt, {"until": ["zzz", stop], "max_gen_toks": 20}),
             (prompt, {"until": "."}),
             ("red", {"until": ["."], "max_gen_toks": 10})]
    got = lm.generate_until(_requests("generate_until", *cases))
    assert got[0] == reference
    assert got[1] == reference[: reference.index(stop)]
    assert got[2] == reference[: reference.index(".")] and "." not in got[2]
    assert got[3] == " apple"  # what the training text says follows "red"
    with pytest.raises(ComposerError, match="greedily"):
        lm.generate_until(_requests("generate_until", (prompt, {"until": ["."], "do_sample": True, "temperature": 1.0})))


def test_registered_with_lm_eval(exported):
    from lm_eval.api.registry import get_model

    model = get_model("composer").create_from_arg_string(f"pretrained={exported},max_length=32", {"device": "cpu"})
    assert isinstance(model, ComposerLM) and model.max_length == 32 and model.pattern == "*-M-"


def _write_tasks(folder, rng: random.Random, n_docs: int) -> None:
    folder.mkdir()
    with (folder / "pairs.jsonl").open("w") as f:
        for _ in range(n_docs):
            word = rng.choice(list(PAIRS))
            choices = rng.sample([v for v in PAIRS.values() if v != PAIRS[word]], 3) + [PAIRS[word]]
            rng.shuffle(choices)
            f.write(json.dumps({"context": word, "choices": choices, "gold": choices.index(PAIRS[word])}) + "\n")
    body = """output_type: multiple_choice
test_split: test
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{gold}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
    (folder / "pairs.yaml").write_text(
        f"task: composer_pairs\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'pairs.jsonl'}\n{body}")
    (folder / "missing.yaml").write_text(
        f"task: composer_missing\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'nowhere.jsonl'}\n{body}")
    (folder / "hub.yaml").write_text(f"task: composer_hub\ndataset_path: composer-tests/not-on-this-machine\n{body}")


def test_composer_eval_on_a_local_task(exported, tmp_path):
    """The command as a user runs it: one local multiple-choice task, one whose hub dataset is out of reach."""
    _write_tasks(tmp_path / "tasks", random.Random(1), n_docs=24)
    env = cli_env() | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "composer.apps.eval", str(exported), "--tasks", "composer_pairs,composer_hub",
                           "--include-path", str(tmp_path / "tasks"), "--limit", "20", "--max-length", "64",
                           "--output", str(tmp_path / "results.json")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "composer_hub: skipped, its dataset cannot be reached" in done.stderr and "Traceback" not in done.stderr
    table = done.stdout.splitlines()
    assert table[0].split() == ["task", "metric", "value", "stderr"] and table[1].split()[:2] == ["composer_pairs", "acc"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["n-samples"]["composer_pairs"]["effective"] == 20  # --limit: 20 of the 24 documents
    assert results["results"]["composer_pairs"]["acc,none"] >= 0.75  # chance is 0.25
    assert float(table[1].split()[2]) == pytest.approx(results["results"]["composer_pairs"]["acc,none"], abs=1e-4)
    assert list(results["skipped"]) == ["composer_hub"]
    assert results["config"]["pattern"] == "*-M-" and results["config"]["max_length"] == 64


def test_composer_eval_fails_only_when_no_task_ran(exported, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # what main() would set for the whole process
    _write_tasks(tmp_path / "tasks", random.Random(2), n_docs=4)
    assert main([str(exported), "--tasks", "composer_missing", "--include-path", str(tmp_path / "tasks"),
                 "--output", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err
    assert "composer_missing: skipped, its dataset cannot be reached" in err and "no task ran" in err
    assert not (tmp_path / "r.json").exists()
    assert main([str(tmp_path / "nowhere"), "--tasks", "composer_pairs"]) == 2
    assert capsys.readouterr().err.strip() == f"composer-eval: error: no exported model at {tmp_path / 'nowhere'}: not a folder"
    proxy = save_pretrained(build_model(model_config_from_mapping({"pattern": "*-", "vocab_size": 16, "d_model": 32})),
                            tmp_path / "proxy", tokenizer_spec=None)  # a MAD proxy: token ids, no text
    assert main([str(proxy), "--tasks", "composer_pairs"]) == 2
    assert "reads token ids, not text" in capsys.readouterr().err
