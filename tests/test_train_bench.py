"""benchmarks/train_bench.py off the GPU: the layouts, their mamba-ssm and fla counterparts, and a CPU
smoke run (structure only: timings are not tested). fla is not imported here (it needs Triton): its
side is checked through the pure mapping `fla_settings` and the parameters its fields imply."""

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from composer.errors import ConfigError
from scaling.accounting import count_parameters, train_flops_per_token

_spec = importlib.util.spec_from_file_location("train_bench", Path(__file__).parents[1] / "benchmarks/train_bench.py")
bench = sys.modules["train_bench"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(bench)


def test_layouts_are_the_units_grown_to_the_preset_sizes():
    patterns = {name: bench.layout_config(name, smoke=False, attention_backend="auto").pattern
                for name in bench.LAYOUTS}
    assert patterns == {"llama-350m": "*-" * 14, "llama-1b": "*-" * 16, "nemotron-350m": "M-M-M*-" * 3,
                        "nemotron-1b": "M-M-M*-" * 4, "mamba2-350m": "M" * 24, "qwen3next-1b": "G-G-G-*-" * 3}
    assert {name: bench.peer_kind(name) for name in bench.LAYOUTS} == {
        **{name: "mamba-ssm" for name in bench.LAYOUTS if not name.startswith("qwen3next")}, "qwen3next-1b": "fla"}


@pytest.mark.parametrize("layout", [name for name in bench.LAYOUTS if bench.peer_kind(name) == "mamba-ssm"])
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


def fla_n_params(f: dict) -> int:
    """The parameters of fla 0.6.0's GatedDeltaNetForCausalLM with these config fields, counted from its
    layer definitions (fla/layers/gated_deltanet.py, fla/layers/attn.py, fla/modules/mlp.py): per block
    two RMSNorms, the mixer and the SwiGLU MLP; a final norm; the embedding, and the head when untied."""
    d, n_blocks, attn = f["hidden_size"], f["num_hidden_layers"], f["attn"]
    key = f["num_heads"] * f["head_dim"]
    head_v = int(f["head_dim"] * f["expand_v"])
    value, hv = f["num_v_heads"] * head_v, f["num_v_heads"]
    gdn = (2 * d * key + d * value + 2 * d * hv  # q, k, v, a (decay), b (beta) projections
           + 2 * hv  # A_log, dt_bias
           + (2 * key + value) * f["conv_size"]  # depthwise short convs of q, k, v, no bias
           + d * value + head_v  # g_proj (output gate) and the gated RMSNorm's weight
           + value * d)  # o_proj
    hd = d // attn["num_heads"]  # fla's attention head size
    attention = d * d + 2 * d * attn["num_kv_heads"] * hd + d * d  # q, k, v, o; no bias, no q/k norm
    mlp = 3 * d * f["intermediate_size"]
    n_attn = len(attn["layers"])
    blocks = (n_blocks - n_attn) * gdn + n_attn * attention + n_blocks * (mlp + 2 * d)
    embeddings = f["vocab_size"] * d * (1 if f["tie_word_embeddings"] else 2)
    return blocks + d + embeddings


@pytest.mark.parametrize("smoke", [False, True])
def test_the_fla_peer_maps_the_qwen3next_layout_block_for_block(smoke):
    cfg = bench.layout_config("qwen3next-1b", smoke=smoke, attention_backend="cudnn")
    assert bench.peer_config("qwen3next-1b", cfg) == cfg  # the layout itself: nothing is respread
    f = bench.fla_settings(cfg, seq_len=2048)
    d, gdn, attn = cfg.d_model, cfg.primitive_config("G"), cfg.primitive_config("*")
    assert f["num_hidden_layers"] == len(cfg.pattern) // 2 == cfg.pattern.count("-")
    assert f["attn"]["layers"] == [i for i, mixer in enumerate(cfg.pattern[::2]) if mixer == "*"]
    assert (f["hidden_size"], f["vocab_size"], f["tie_word_embeddings"]) == (d, cfg.vocab_size, cfg.tie_embeddings)
    assert (f["head_dim"], f["num_heads"], f["num_v_heads"], f["expand_v"], f["conv_size"]) == (
        gdn.head_dim, gdn.n_qk_heads(d), gdn.n_v_heads(d), gdn.expand_v, gdn.d_conv)
    assert (f["attn"]["num_heads"], f["attn"]["num_kv_heads"], d // f["attn"]["num_heads"]) == (
        attn.n_heads, attn.kv_heads, attn.head_size(d))
    assert f["attn"]["rope_theta"] == attn.rope_theta and f["attn"]["window_size"] is None
    assert f["intermediate_size"] == cfg.primitive_config("-").hidden_size(d) and f["norm_eps"] == cfg.norm_eps
    assert f["use_gate"] and f["use_short_conv"] and not f["fuse_cross_entropy"]  # the loss runs outside, as for mamba-ssm
    # Tolerance 0: fla's blocks hold the same weights as composer's layers (its q/k/v/g/a/b projections
    # are composer's one in_proj split; one norm per mixer and per MLP either way).
    assert fla_n_params(f) == count_parameters(cfg)["n_params"]


def test_the_fla_settings_at_the_1b_preset():
    f = bench.fla_settings(bench.layout_config("qwen3next-1b", smoke=False, attention_backend="auto"))
    assert {k: f[k] for k in ("hidden_size", "num_hidden_layers", "head_dim", "num_heads", "num_v_heads", "expand_v",
                              "conv_size", "intermediate_size", "vocab_size", "tie_word_embeddings")} == {
        "hidden_size": 2048, "num_hidden_layers": 12, "head_dim": 128, "num_heads": 16, "num_v_heads": 32,
        "expand_v": 1.0, "conv_size": 4, "intermediate_size": 8192, "vocab_size": 128_256, "tie_word_embeddings": True}
    assert f["attn"] == {"layers": [3, 7, 11], "num_heads": 32, "num_kv_heads": 8, "qkv_bias": False,
                         "window_size": None, "rope_theta": 500_000.0}
    assert fla_n_params(f) == 1_201_622_720


def test_the_fla_peer_counts_its_delta_rule_at_fla_chunk_length():
    cfg = bench.layout_config("qwen3next-1b", smoke=True, attention_backend="auto")
    gdn = replace(cfg.primitive_config("G"), chunk_size=32)
    cfg32 = replace(cfg, primitives={**cfg.primitives, "gdn": gdn})
    assert bench.peer_config("qwen3next-1b", cfg32).primitive_config("G").chunk_size == bench.FLA_CHUNK == 64


@pytest.mark.parametrize("pattern", ["M-M-", "G*--", "GG-", "G-W-", "-G"])
def test_fla_settings_refuse_what_fla_blocks_cannot_hold(pattern):
    cfg = bench.layout_config("qwen3next-1b", smoke=True, attention_backend="auto")
    with pytest.raises(ConfigError, match="fla"):
        bench.fla_settings(replace(cfg, pattern=pattern))


@pytest.mark.parametrize("backend", ["auto", "math"])
def test_the_sdpa_stand_in_for_flash_attn_is_causal_gqa_attention(backend):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, 4, 8, generator=g)  # (B, T, H, hd), flash-attn's layout
    k, v = torch.randn(2, 5, 2, 8, generator=g), torch.randn(2, 5, 2, 8, generator=g)  # 2 K/V heads
    out = bench.sdpa_as_flash_attn(backend)(q, k, v, causal=True, window_size=(-1, -1))
    kk, vv = (x.repeat_interleave(2, dim=2) for x in (k, v))
    scores = torch.einsum("bthd,bshd->bhts", q, kk) / 8**0.5
    scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    expected = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), vv)
    torch.testing.assert_close(out, expected)
    with pytest.raises(NotImplementedError):
        bench.sdpa_as_flash_attn(backend)(q, k, v, causal=True, window_size=(3, 0))


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


def test_cpu_smoke_run_of_the_qwen3next_layout(tmp_path, capsys):
    out = tmp_path / "results.json"
    bench.main(["--cpu-smoke", "--layouts", "qwen3next-1b", "--variants", "eager:full", "--out", str(out)])
    results = json.loads(out.read_text())
    peer, composer = results["results"]
    assert peer["side"] == "peer" and peer["error"].startswith("skipped")  # no fla (no Triton) or no CUDA here
    assert composer["pattern"] == "G-G-G-*-" and composer["n_params"] == composer["n_params_analytic"]
    assert composer["impl"]["G"].startswith("torch") and composer["tokens_per_s"] > 0
    assert "fla" in results["environment"] and results["environment"]["mamba_ssm"].startswith("not imported")
    table = capsys.readouterr().out
    assert "| qwen3next-1b | peer:fla |" in table and ", fla: " in table


def test_float8_variants_parse_and_are_skipped_on_the_cpu_with_the_reason(tmp_path, capsys):
    assert str(bench.Variant.parse("compile:full:rowwise")) == "compile:full:rowwise"
    assert bench.Variant.parse("eager:chunked").float8 is None
    with pytest.raises(ConfigError, match="tensorwise"):
        bench.Variant.parse("compile:full:fp8")
    out = tmp_path / "results.json"
    bench.main(["--cpu-smoke", "--layouts", "llama-350m", "--sides", "composer",
                "--variants", "eager:full,eager:full:tensorwise", "--out", str(out)])
    results = json.loads(out.read_text())
    bf16, fp8 = results["results"]
    assert bf16["impl"]["float8"] == "off" and bf16["tokens_per_s"] > 0
    assert fp8["variant"] == "eager:full:tensorwise" and "tokens_per_s" not in fp8
    assert fp8["error"].startswith("skipped: trainer.float8=tensorwise: float8 training needs a CUDA GPU")
    assert results["environment"]["torchao"]  # its version, or "not installed": said either way
    assert fp8["error"].removeprefix("skipped: ") in capsys.readouterr().out  # printed as the row runs


@pytest.mark.parametrize(("name", "group"), [
    ("void at::native::(anonymous namespace)::conv_depthwise2d_forward_kernel<c10::BFloat16>(...)", "conv1d"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", "conv1d"),  # cuDNN's conv
    ("causal_conv1d_fwd_kernel", "conv1d"),  # causal-conv1d's and fla's
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wg_knob_7_128x128x128", "attention"),
    ("flash_fwd_kernel", "attention"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "gemm"),
    ("chunk_gated_delta_rule_fwd_kernel_h_blockdim64", "delta rule"),
    ("l2norm_fwd_kernel", "delta rule"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0", "other"),
])
def test_kernel_groups_of_the_profile_tables(name, group):
    assert bench.kernel_group(name) == group
