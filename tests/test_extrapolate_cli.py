"""composer-extrapolate end to end."""

import json

import yaml

from composer.config import from_mapping, model_config_from_mapping
from composer.engine.trainer import TrainerConfig
from conftest import run_cli
from scaling.accounting import count_parameters


def test_text_summary_and_files(tmp_path):
    run = run_cli("extrapolate", "pattern=**----", "method=stack", "target=1b", f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr
    assert "layers       27 (9 '*', 18 '-'), d_model 2048" in run.stdout
    assert "deviation +2.80%" in run.stdout
    record = json.loads((tmp_path / "extrapolation.json").read_text())
    assert record["pattern"] == "**----" * 4 + "*--"

    pretrain = yaml.safe_load((tmp_path / "pretrain.yaml").read_text())
    model = model_config_from_mapping(pretrain["model"])  # loads into composer's own configs
    trainer = from_mapping(TrainerConfig, pretrain["trainer"], where="trainer")
    assert model.pattern == record["pattern"] and model.d_model == 2048
    assert count_parameters(model)["n_params"] == record["n_params"]
    assert trainer.schedule == "wsd" and trainer.max_tokens == record["plan"]["tokens"]
    assert trainer.compile and trainer.loss == "full"  # the fastest path measured on GPUs
    assert trainer.batch_size * 8192 == record["plan"]["batch_tokens"]

    megatron = (tmp_path / "megatron_args.txt").read_text().replace("\\\n", " ").split()
    value = {megatron[i]: megatron[i + 1] for i in range(len(megatron) - 1) if megatron[i].startswith("--")}
    assert value["--hybrid-override-pattern"].strip("'") == record["pattern"]
    assert value["--num-layers"] == "27" and value["--hidden-size"] == "2048"
    assert value["--ffn-hidden-size"] == "8192" and value["--num-attention-heads"] == "32"
    assert value["--num-query-groups"] == "8" and value["--mamba-state-dim"] == "128"


def test_json_is_one_object_on_stdout(tmp_path):
    run = run_cli("extrapolate", "pattern=**-----**---*---", "method=stretch", "target=1b", "format=json",
                  f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)  # nothing else on stdout
    assert record["n_layers"] == 29 and record["counts"]["*"] == 10
    for key in ("pattern", "d_model", "n_params", "n_non_embedding_params", "deviation", "counts"):
        assert key in record


def test_hybrid_with_mamba(tmp_path):
    run = run_cli("extrapolate", "pattern=M-M*-", "target=350m", "format=json", f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    assert record["counts"]["M"] > 0 and abs(record["deviation"]) < 0.25
    assert float(record["state_bytes_per_token"]["32768"]) < float(record["state_bytes_per_token"]["4096"])


def _error(*args, tmp_path) -> str:
    run = run_cli("extrapolate", *args, f"hydra.run.dir={tmp_path}")
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    return lines[0]


def test_errors_are_one_line(tmp_path):
    assert "unknown" in _error("target=2b", tmp_path=tmp_path) and "1b" in _error("target=2b", tmp_path=tmp_path)
    assert "empty pattern" in _error("pattern=''", tmp_path=tmp_path)
    assert "position 1" in _error("pattern=*Q", tmp_path=tmp_path)
    assert "method" in _error("method=grow", tmp_path=tmp_path)
    big = "*-" * 40  # already larger than the 350M reference
    assert "larger" in _error(f"pattern={big}", "target=350m", tmp_path=tmp_path)
    assert "unknown config key 'targte' (did you mean target? `composer-extrapolate --cfg job`" in _error(
        "targte=1b", tmp_path=tmp_path)


def _megatron(tmp_path) -> dict[str, str]:
    words = (tmp_path / "megatron_args.txt").read_text().replace("\\\n", " ").split()
    return {words[i]: words[i + 1] if i + 1 < len(words) else "" for i in range(len(words)) if words[i].startswith("--")}


def test_gated_deltanet_and_moe_reach_megatron_with_their_settings(tmp_path):
    run = run_cli("extrapolate", "pattern=GEGE*E", "method=stack", "target=1b", f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr
    record = json.loads((tmp_path / "extrapolation.json").read_text())
    model = model_config_from_mapping(yaml.safe_load((tmp_path / "pretrain.yaml").read_text())["model"])
    gdn, moe = model.primitives["gdn"], model.primitives["moe"]
    value = _megatron(tmp_path)
    assert value["--hybrid-override-pattern"].strip("'") == record["pattern"] and record["megatron"] == "megatron_args.txt"
    assert value["--linear-key-head-dim"] == str(gdn.head_dim) and value["--linear-num-value-heads"] == str(gdn.n_v_heads(2048))
    assert value["--num-experts"] == str(moe.n_experts) and value["--moe-router-topk"] == str(moe.top_k)
    assert value["--moe-ffn-hidden-size"] == str(moe.hidden_size(2048))


def test_a_layer_megatron_does_not_build_still_extrapolates_and_says_why(tmp_path):
    run = run_cli("extrapolate", "pattern=W-*-", "method=stack", "target=350m", f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr
    assert not (tmp_path / "megatron_args.txt").exists() and (tmp_path / "pretrain.yaml").is_file()
    assert "megatron     none: swa 'W' at position 0" in run.stdout and "DeepSeek-V4" in run.stdout
    assert json.loads((tmp_path / "extrapolation.json").read_text())["megatron"].startswith("none: swa 'W'")


def test_a_growth_far_from_the_target_names_the_nearer_fit(tmp_path):
    """The issue-15 aggregate stacked to 1B: floor(s) = 2 copies plus every run once more, 48 layers, +19.8%
    (stop 32 measured it at 1.43B); the output names what method=fit gives instead. Within 5% (the test above,
    +2.8%), nothing is said."""
    from scaling.extrapolate import extrapolate

    run = run_cli("extrapolate", "pattern=M*-*-M**M*-*M**-", "method=stack", "target=1b", f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr
    record = json.loads((tmp_path / "extrapolation.json").read_text())
    fit = extrapolate("M*-*-M**M*-*M**-", target="1b", method="fit")
    assert record["n_layers"] == 48 and record["deviation"] > 0.19
    assert record["nearer"] == {"method": "fit", "pattern": fit.pattern, "n_layers": fit.n_layers, "deviation": fit.deviation}
    assert abs(fit.deviation) < 0.01
    assert f"note         +19.8% off the target; method=fit grows it to {fit.n_layers} layers, -0.2%" in run.stdout
    quiet = run_cli("extrapolate", "pattern=**----", "method=stack", "target=1b", f"hydra.run.dir={tmp_path / 'q'}")
    assert "note" not in quiet.stdout and "nearer" not in json.loads((tmp_path / "q" / "extrapolation.json").read_text())
