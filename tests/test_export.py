"""Export to safetensors + config.json and back: bit-exact, from real training runs, never unpickling."""

import dataclasses
import json
import pickle
import subprocess
import sys

import pytest
import torch
import yaml

from composer.config import model_config_from_mapping
from composer.errors import ComposerError
from composer.evals.export import export_checkpoint, load_pretrained, read_config, save_pretrained
from composer.model import build_model
from conftest import cli_env

SMALL = {"attention": {"n_heads": 2}, "mamba2": {"head_dim": 16, "d_state": 16, "chunk_size": 16}}


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(pattern: str, *, tie: bool, vocab: int = 257, seed: int = 0):
    cfg = model_config_from_mapping({"pattern": pattern, "vocab_size": vocab, "d_model": 32, "tie_embeddings": tie, **SMALL})
    model = build_model(cfg, seed=seed)
    with torch.no_grad():  # every tensor away from its initial value, so a weight left unloaded shows
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_round_trip_is_bit_exact(tmp_path, tie):
    model = _model("*-M-", tie=tie)
    save_pretrained(model, tmp_path, tokenizer_spec="bytes", max_length=64, extra={"step": 7})
    config = read_config(tmp_path)
    assert config["pattern"] == "*-M-" and config["model"]["tie_embeddings"] is tie
    assert config["tokenizer"] == "bytes" and config["max_length"] == 64 and config["extra"] == {"step": 7}
    assert config["model"]["primitives"]["mamba2"]["d_state"] == 16  # every setting that rebuilds it
    assert config["n_params"] == sum(p.numel() for p in model.parameters())

    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys == set(model.state_dict())
    assert ("head.weight" in keys) is (not tie)  # a tied head is the embedding: stored once

    loaded, tokenizer = load_pretrained(tmp_path)
    assert tokenizer.identity == "bytes" and loaded.cfg == model.cfg and not loaded.training
    tokens = torch.randint(0, 257, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


def test_the_2026_primitives_round_trip_with_their_buffers(tmp_path):
    """Gated DeltaNet, sliding-window attention and MoE (its router bias, a buffer, included)."""
    small = {**SMALL, "gdn": {"head_dim": 16, "chunk_size": 16}, "swa": {"n_heads": 2, "window": 8},
             "moe": {"n_experts": 4, "top_k": 2, "bias_update_rate": 0.01}}
    cfg = model_config_from_mapping({"pattern": "GEW-*E", "vocab_size": 257, "d_model": 32, **small})
    model = build_model(cfg, seed=0)
    biases = [b for name, b in model.named_buffers() if "bias" in name]
    assert len(biases) == 2  # one router bias per MoE layer
    with torch.no_grad():
        for b in biases:  # a balanced router's bias has moved away from zero
            b.copy_(torch.linspace(-0.1, 0.1, b.numel()).view_as(b))
    save_pretrained(model.eval(), tmp_path, tokenizer_spec="bytes", max_length=64)
    config = read_config(tmp_path)
    assert config["model"]["primitives"]["swa"]["window"] == 8 and config["model"]["primitives"]["moe"]["n_experts"] == 4
    loaded, _ = load_pretrained(tmp_path)
    assert loaded.cfg == model.cfg
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    tokens = torch.randint(0, 257, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


def test_shared_tensors_are_stored_separately(tmp_path):
    """safetensors refuses tensors sharing memory; a state dict with an alias still saves and loads."""
    model = _model("*-", tie=False)
    state = model.state_dict()
    state["head.weight"] = state["embed.weight"]  # tied by assignment rather than by config
    save_pretrained((state, model.cfg), tmp_path, tokenizer_spec=None)
    loaded, tokenizer = load_pretrained(tmp_path)
    assert tokenizer is None
    assert torch.equal(loaded.head.weight, model.embed.weight)


def test_bpe_tokenizer_is_copied(tmp_path):
    from composer.data.tokenizer import train_bpe

    bpe = train_bpe(["the cat sat on the mat " * 20], vocab_size=300, out_path=tmp_path / "tok" / "tokenizer.json")
    model = _model("*-", tie=True, vocab=300)
    save_pretrained(model, tmp_path / "out", tokenizer_spec=str(bpe))
    assert read_config(tmp_path / "out")["tokenizer"] == "tokenizer.json"
    bpe.unlink()  # the export is self-contained
    _, tokenizer = load_pretrained(tmp_path / "out")
    assert tokenizer.decode(tokenizer.encode("the cat")) == "the cat"
    with pytest.raises(ComposerError, match="embeds only"):
        save_pretrained(_model("*-", tie=True, vocab=100), tmp_path / "small", tokenizer_spec="bytes")


class _Marker:
    """Unpickling this creates a file: proof that a loader ran code from the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_load_pretrained_reads_no_pickle(tmp_path, monkeypatch):
    save_pretrained(_model("*-M-", tie=True), tmp_path, tokenizer_spec="bytes")
    marker = tmp_path / "pwned"
    for name in ("checkpoint.pt", "pytorch_model.bin", "model.pt"):  # bait beside the real files
        torch.save({"model": _Marker(marker)}, tmp_path / name)

    def refuse(*args, **kwargs):
        raise AssertionError("load_pretrained unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    model, _ = load_pretrained(tmp_path)
    assert model.cfg.pattern == "*-M-" and not marker.exists()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real composer-train job: train_from_config is what the command runs, config.yaml what it saves."""
    from composer.apps.train import train_from_config

    run = tmp_path_factory.mktemp("run")
    cfg = {"model": {"pattern": "*-M-", "d_model": 32, "vocab_size": None, **SMALL},
           "task": {"name": "in_context_recall", "length": 32, "n_train": 64, "n_test": 16},
           "trainer": {"max_tokens": 16 * 32 * 3, "batch_size": 16, "progress": False, "device": "cpu"}, "seed": 0}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    train_from_config(cfg, run)
    return run


def _trained_state(run):
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    return state, {k.removeprefix("model."): v for k, v in state["model"].items() if k.startswith("model.")}


def test_export_checkpoint_from_a_training_run(run_dir, tmp_path):
    out = export_checkpoint(run_dir, tmp_path / "export")
    config = read_config(out)
    assert config["pattern"] == "*-M-" and config["model"]["vocab_size"] == 16  # the task's vocabulary
    assert config["tokenizer"] is None and config["max_length"] == 32  # token ids; the task's length
    assert config["extra"]["step"] == 3 and config["extra"]["tokens"] == 3 * 16 * 32
    assert config["extra"]["signature"]["task"] == "in_context_recall"
    assert config["extra"]["summary"]["status"] == "completed"

    ckpt, weights = _trained_state(run_dir)
    reference = build_model(model_config_from_mapping({"pattern": "*-M-", "d_model": 32, "vocab_size": 16, **SMALL}))
    reference.load_state_dict(weights)
    model, tokenizer = load_pretrained(out)
    assert tokenizer is None
    tokens = torch.randint(0, 16, (2, 32))
    with torch.no_grad():
        assert torch.equal(model(tokens), reference.eval()(tokens))

    # An older checkpoint without the model config in its signature: config.yaml tells it, the
    # embedding the vocabulary (composer-train saves model.vocab_size: null and takes the task's).
    del ckpt["signature"]["model"]
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save(ckpt, legacy / "checkpoint.pt")
    (legacy / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    again, _ = load_pretrained(export_checkpoint(legacy / "checkpoint.pt", tmp_path / "export2"))
    with torch.no_grad():
        assert torch.equal(again(tokens), model(tokens))
    (legacy / "config.yaml").unlink()
    with pytest.raises(ComposerError, match="does not record its model config") as exc:
        export_checkpoint(legacy, tmp_path / "export3")
    _one_line(exc)


def test_a_task_head_is_left_out(tmp_path):
    """The trainer trains an Objective; compression adds the task's own output head, not part of the LM."""
    from composer.runs.proxy import train_on_task
    from composer.tasks.mad import task_config_from_mapping
    from composer.engine.trainer import TrainerConfig

    task = task_config_from_mapping("compression", {"length": 8, "n_train": 32, "n_test": 16})
    cfg = model_config_from_mapping({"pattern": "*-", "d_model": 32, "vocab_size": task.vocab_size, **SMALL})
    train_on_task(model_cfg=cfg, task_name="compression", task_cfg=task, seed=0, run_dir=tmp_path / "run",
                  trainer_cfg=TrainerConfig(max_tokens=16 * 8 * 2, batch_size=16, progress=False, device="cpu"))
    config = read_config(export_checkpoint(tmp_path / "run", tmp_path / "out"))
    assert config["extra"]["dropped"] and all(k.startswith("head.") for k in config["extra"]["dropped"])
    load_pretrained(tmp_path / "out")


def test_a_pretraining_style_run_names_its_tokenizer_and_context(tmp_path):
    """Keys without the Objective's prefix, the tokenizer and seq_len from config.yaml (composer-pretrain's)."""
    model = _model("M*-", tie=False)
    torch.save({"model": model.state_dict(), "step": 5, "signature": {"model": dataclasses.asdict(model.cfg)}},
               tmp_path / "checkpoint.pt")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"seq_len": 96, "data": {"tokenizer": "bytes"}, "model": {}}))
    config = read_config(export_checkpoint(tmp_path / "checkpoint.pt", tmp_path / "model"))
    assert config["tokenizer"] == "bytes" and config["max_length"] == 96 and config["extra"]["step"] == 5
    loaded, _ = load_pretrained(tmp_path / "model")
    tokens = torch.randint(0, 257, (1, 20))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"tokenizer": "no/such/tokenizer.json"}}))
    with pytest.raises(ComposerError, match="pass the tokenizer explicitly") as exc:
        export_checkpoint(tmp_path, tmp_path / "model2")
    _one_line(exc)


def test_a_checkpoint_holding_objects_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    model = _model("*-", tie=True)
    signature = {"model": dataclasses.asdict(model.cfg)}
    torch.save({"model": {f"model.{k}": v for k, v in model.state_dict().items()}, "step": 1,
                "signature": signature, "extra": _Marker(marker)}, tmp_path / "checkpoint.pt")
    with pytest.raises(ComposerError, match="refusing to unpickle") as exc:
        export_checkpoint(tmp_path, tmp_path / "out")
    _one_line(exc)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_bad_paths_and_mismatches_are_one_line_errors(tmp_path):
    for call, needle in [
        (lambda: export_checkpoint(tmp_path / "nowhere", tmp_path / "out"), "does not exist"),
        (lambda: export_checkpoint(tmp_path, tmp_path / "out"), "no checkpoint in"),
        (lambda: load_pretrained(tmp_path / "nowhere"), "not a folder"),
        (lambda: load_pretrained(tmp_path), "config.json is missing"),
    ]:
        with pytest.raises(ComposerError, match=needle) as exc:
            call()
        _one_line(exc)

    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ComposerError, match="cannot read") as exc:
        export_checkpoint(tmp_path / "garbage", tmp_path / "out")
    _one_line(exc)

    out = save_pretrained(_model("*-", tie=True), tmp_path / "m", tokenizer_spec="bytes")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "model": {**config["model"], "pattern": "*-M-"}}))
    with pytest.raises(ComposerError, match=r"does not match pattern '\*-M-'.*missing \(layers\.2") as exc:
        load_pretrained(out)
    _one_line(exc)
    (out / "config.json").write_text(json.dumps({**config, "model": {**config["model"], "d_model": 64}}))
    with pytest.raises(ComposerError, match="does not fit") as exc:
        load_pretrained(out)
    _one_line(exc)
    (out / "model.safetensors").unlink()
    with pytest.raises(ComposerError, match="model.safetensors is missing"):
        load_pretrained(out)


def test_a_distributed_checkpoint_folder_without_metadata_is_a_one_line_error(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "state.json").write_text("{}")
    with pytest.raises(ComposerError, match="not a distributed checkpoint"):
        export_checkpoint(tmp_path, tmp_path / "out")


def _export_cli(*args):
    return subprocess.run([sys.executable, "-m", "composer.apps.export", *args], capture_output=True, text=True,
                          timeout=120, env=cli_env())


def test_cli_end_to_end(run_dir, tmp_path):
    done = _export_cli(str(run_dir), str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "'*-M-'" in done.stdout and "step 3" in done.stdout and str(tmp_path / "out") in done.stdout
    assert read_config(tmp_path / "out")["pattern"] == "*-M-"

    failed = _export_cli(str(tmp_path / "missing"), str(tmp_path / "out2"))
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().count("\n") == 0 and failed.stderr.startswith("composer-export: error: no checkpoint")
