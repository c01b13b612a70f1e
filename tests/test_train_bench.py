"""benchmarks/train_bench.py off the GPU: the layouts, their mamba-ssm counterparts, and a CPU smoke run
(structure only: timings are not tested)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from scaling.accounting import count_parameters, train_flops_per_token

_spec = importlib.util.spec_from_file_location("train_bench", Path(__file__).parents[1] / "benchmarks/train_bench.py")
bench = sys.modules["train_bench"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(bench)


def test_layouts_are_the_units_grown_to_the_preset_sizes():
    patterns = {name: bench.layout_config(name, smoke=False, attention_backend="auto").pattern
                for name in bench.LAYOUTS}
    assert patterns == {"llama-350m": "*-" * 14, "llama-1b": "*-" * 16, "nemotron-350m": "M-M-M*-" * 3,
                        "nemotron-1b": "M-M-M*-" * 4, "mamba2-350m": "M" * 24}


@pytest.mark.parametrize("layout", list(bench.LAYOUTS))
def test_the_peer_has_the_same_parameters_and_flops_up_to_norms(layout):
    cfg = bench.layout_config(layout, smoke=False, attention_backend="cudnn")
    peer = bench.peer_equivalent(cfg)
    extra_norms = peer.pattern.count("-") - cfg.pattern.count("-")  # one pre-norm per MLP layer
    assert count_parameters(peer)["n_params"] == count_parameters(cfg)["n_params"] + extra_norms * cfg.d_model
    assert train_flops_per_token(peer, seq_len=2048) == train_flops_per_token(cfg, seq_len=2048)
    settings = bench.peer_settings(peer)
    assert settings["n_layer"] == len(cfg.pattern.replace("-", ""))
    assert [i for i, m in enumerate(peer.pattern.replace("-", "")) if m == "*"] == settings["attn_layer_idx"]
    assert settings["attn_cfg"]["rotary_emb_dim"] == 0  # mamba-ssm's rotary needs flash_attn


def test_the_nemotron_peer_spreads_three_mlps_over_four_mixers():
    peer = bench.peer_equivalent(bench.layout_config("nemotron-350m", smoke=False, attention_backend="auto"))
    assert peer.pattern == "M-M-M-*-" * 3 and bench.peer_settings(peer)["d_intermediate"] == 3 * 4096 // 4


def test_cpu_smoke_run_writes_results_and_a_table(tmp_path, capsys):
    out = tmp_path / "results.json"
    bench.main(["--cpu-smoke", "--layouts", "nemotron-350m", "--variants", "eager:chunked,eager:full", "--profile",
                "--out", str(out)])
    results = json.loads(out.read_text())["results"]
    assert [(r["side"], r["variant"]) for r in results] == [("peer", ""), ("composer", "eager:chunked"),
                                                             ("composer", "eager:full")]
    assert results[0]["error"].startswith("skipped")  # no mamba-ssm, or no CUDA, here: said, not silent
    for r in results[1:]:
        assert r["tokens_per_s"] > 0 and r["n_params"] == r["n_params_analytic"] and "profile" in r
        assert r["impl"]["loss"] == r["variant"].split(":")[1]
    assert "| nemotron-350m | composer | eager:chunked | 7 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown layout"):
        bench.main(["--cpu-smoke", "--layouts", "gpt-2"])
