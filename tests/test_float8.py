"""Float8 training (`trainer.float8`, composer/engine/float8.py) off the GPU: the one-line refusals
through the real apps and for the GPUs this machine lacks, and the conversion itself on built models
(which layers became torchao's Float8Linear, which stayed, and that summary.json's count says so).
Training in float8 against bf16 is tests/gpu/test_float8_parity.py and benchmarks/float8_parity.py."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from composer.config import from_mapping, model_config_from_mapping
from composer.engine.float8 import ALIGN, Gpu, apply_float8, check_support, plan_float8
from composer.engine.objective import Objective
from composer.engine.trainer import TrainerConfig
from composer.errors import ConfigError
from composer.model import build_model
from conftest import TINY, app_argv, cli_env

Float8Linear = pytest.importorskip("torchao.float8.float8_linear").Float8Linear

CUDA = torch.device("cuda")
H100 = Gpu(name="NVIDIA H100 80GB HBM3", capability=(9, 0))
MAMBA = {"head_dim": 16, "d_state": 16}  # d_model 64: in_proj is 64 -> 296 features, not a multiple of 16


def _one_line_error(*args: str) -> str:
    run = subprocess.run(app_argv(*args), capture_output=True, text=True, timeout=300, env=cli_env())
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    return lines[0]


# ---- refusals ---------------------------------------------------------------------------------------

def test_float8_on_the_cpu_is_refused_in_one_line_before_training(tmp_path):
    line = _one_line_error(*TINY, "trainer.float8=rowwise", f"hydra.run.dir={tmp_path}")
    assert line == ("composer-train: error: trainer.float8=rowwise: float8 training needs a CUDA GPU with float8 "
                    "tensor cores (compute capability >= 8.9: H100, H200, L40S, RTX 4090); this run is on cpu")
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "checkpoint.pt").exists()


def test_pretraining_refuses_float8_on_the_cpu_before_loading_its_corpus(tmp_path):
    line = _one_line_error("pretrain", "trainer.float8=tensorwise", "trainer.device=cpu", f"hydra.run.dir={tmp_path}")
    assert line.startswith("composer-pretrain: error: trainer.float8=tensorwise: float8 training needs a CUDA GPU")
    assert line.endswith("this run is on cpu")


def test_an_unknown_recipe_is_refused_in_one_line_naming_the_valid_ones(tmp_path):
    line = _one_line_error(*TINY, "trainer.float8=fp8", f"hydra.run.dir={tmp_path}")
    assert "float8" in line and "'fp8'" in line and "tensorwise, rowwise" in line
    with pytest.raises(ConfigError, match="tensorwise, rowwise"):
        from_mapping(TrainerConfig, {"float8": "e4m3"}, where="trainer")


def _refusal(recipe="rowwise", *, device=CUDA, gpu=H100, bf16=True, graphed=False) -> str:
    with pytest.raises(ConfigError) as info:
        check_support(recipe, device=device, gpu=gpu, bf16=bf16, graphed=graphed)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_each_refusal_names_its_problem():
    assert _refusal("fp8").endswith("valid: tensorwise, rowwise (null: off)")
    assert _refusal(device=torch.device("cpu"), gpu=None).endswith("this run is on cpu")
    a100 = Gpu(name="NVIDIA A100-SXM4-80GB", capability=(8, 0))
    assert _refusal(gpu=a100).endswith("this run's GPU, NVIDIA A100-SXM4-80GB, has compute capability 8.0")
    assert "trainer.precision=auto or bf16" in _refusal(bf16=False)
    assert "trainer.cuda_graph=true" in _refusal(graphed=True)
    for gpu in (H100, Gpu(name="NVIDIA L40S", capability=(8, 9))):  # float8 tensor cores, torchao installed here
        check_support("tensorwise", device=CUDA, gpu=gpu, bf16=True, graphed=False)


def test_missing_torchao_is_refused_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # `import torchao` raises ImportError
    assert _refusal().endswith("not installed: pip install 'composer-hybrid[float8]' (or pip install 'torchao>=0.13')")


# ---- the conversion ---------------------------------------------------------------------------------

def _module(pattern: str, **model) -> Objective:
    cfg = model_config_from_mapping({"pattern": pattern, "d_model": 64, "vocab_size": 256, "mamba2": MAMBA, **model},
                                    where="model")
    return Objective(build_model(cfg, seed=0))


def _linears(module: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in module.named_modules() if isinstance(m, nn.Linear)}


def _count_in(description: str) -> tuple[int, int]:
    converted, total = re.search(r": (\d+) of (\d+) linear layers in float8;", description).groups()
    return int(converted), int(total)


@pytest.mark.parametrize("recipe", ["rowwise", "tensorwise"])
def test_a_hybrid_converts_every_aligned_primitive_linear_and_not_the_head(recipe):
    module = _module("*-M-", tie_embeddings=False)
    before = {name: p.detach().clone() for name, p in module.state_dict().items()}
    report = apply_float8(module, recipe=recipe, fsdp=False)
    float8 = {name for name, m in _linears(module).items() if isinstance(m, Float8Linear)}
    assert float8 == {"model.layers.0.mixer.qkv", "model.layers.0.mixer.out_proj",  # attention
                      "model.layers.1.mixer.gate_up", "model.layers.1.mixer.out_proj",  # MLP
                      "model.layers.2.mixer.out_proj",  # Mamba-2 (its in_proj is 64 -> 296: not a multiple of 16)
                      "model.layers.3.mixer.gate_up", "model.layers.3.mixer.out_proj"}
    assert type(module.model.head) is nn.Linear and type(module.model.embed) is nn.Embedding
    assert type(module.model.layers[2].mixer.in_proj) is nn.Linear
    assert module.model.layers[2].mixer.in_proj.out_features % ALIGN  # skipped for the reason it gives
    assert set(report.plan.converted) == float8 and _count_in(report.describe()) == (7, 9)
    assert report.describe() == (
        f"{recipe} (torchao {report.torchao}): 7 of 9 linear layers in float8; not converted: the lm head, 1 linear "
        "layer with a dimension not a multiple of 16 (first: model.layers.2.mixer.in_proj)")
    after = module.state_dict()  # the same weights under the same names: checkpoints load either way
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_the_moe_converts_its_shared_experts_but_not_its_router_or_stacked_experts():
    module = _module("*E-E", moe={"shared_experts": 1})
    report = apply_float8(module, recipe="rowwise", fsdp=False)
    linears = _linears(module)
    float8 = {name for name, m in linears.items() if isinstance(m, Float8Linear)}
    assert {"model.layers.1.mixer.shared.gate_up", "model.layers.1.mixer.shared.out_proj"} <= float8
    assert not any(".router" in name for name in float8)  # routing stays in fp32
    moe = module.model.layers[1].mixer
    assert type(moe.router) is nn.Linear and type(moe.gate_up).__name__ == "ExpertWeights"
    assert _count_in(report.describe()) == (len(float8), len(linears)) == (8, 10)  # 2 routers stay; head tied
    assert "not converted: the lm head (tied to the embedding), MoE router (routes in fp32) in 2 layers, MoE experts " \
           "(stacked weights for grouped GEMMs, not nn.Linear) in 2 layers" in report.describe()


@pytest.mark.parametrize("pattern", ["*-G-", "W-M-E", "MMG*"])
def test_the_summary_counts_exactly_what_was_converted(pattern):
    module = _module(pattern)
    total = len(_linears(module))
    plan = plan_float8(module)
    report = apply_float8(module, recipe="tensorwise", fsdp=False)
    linears = _linears(module)
    float8 = {name for name, m in linears.items() if isinstance(m, Float8Linear)}
    assert _count_in(report.describe()) == (len(float8), total) and set(plan.converted) == float8
    for name, m in linears.items():  # every aligned linear of a primitive converts, unless its primitive keeps it
        aligned = m.in_features % ALIGN == 0 and m.out_features % ALIGN == 0
        kept = name.endswith(".router")
        assert (name in float8) == (".mixer." in name and aligned and not kept), name


def test_tensorwise_under_fsdp_all_gathers_in_float8_and_rowwise_does_not():
    from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor

    tensorwise = apply_float8(module := _module("*-"), recipe="tensorwise", fsdp=True)
    assert tensorwise.all_gather and "float8 all-gather under FSDP2" in tensorwise.describe()
    assert isinstance(module.model.layers[0].mixer.qkv.weight.data, WeightWithDynamicFloat8CastTensor)
    rowwise = apply_float8(module := _module("*-"), recipe="rowwise", fsdp=True)
    assert not rowwise.all_gather and "all-gather" not in rowwise.describe()
    assert not isinstance(module.model.layers[0].mixer.qkv.weight.data, WeightWithDynamicFloat8CastTensor)


def _scaled_mm_on_cpu() -> bool:
    try:
        a = torch.ones(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(a, a.t(), scale_a=torch.tensor(1.0), scale_b=torch.tensor(1.0), out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError):
        return False
    return True


@pytest.mark.skipif(not _scaled_mm_on_cpu(), reason="this torch has no float8 GEMM on the CPU")
@pytest.mark.parametrize("recipe", ["rowwise", "tensorwise"])
def test_the_converted_model_computes_the_same_function_to_float8_precision(recipe):
    """The trainer refuses float8 on the CPU (no speed to gain), but torch's CPU float8 GEMM lets the
    converted model run here: its logits differ from the unconverted model's by float8 rounding
    (e4m3: 3 mantissa bits, about 6% per element before the GEMM's averaging; 5.5% measured), and
    every parameter still gets its gradient."""
    tokens = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))  # (B, T)
    reference, module = _module("*-M-*E"), _module("*-M-*E")
    apply_float8(module, recipe=recipe, fsdp=False)
    with torch.no_grad():
        ref, out = reference(tokens), module(tokens)  # (B, T, V)
    err = ((out - ref).norm() / ref.norm()).item()
    assert 1e-3 < err < 0.1  # float8 ran (not the fp32 path), and rounding is all it changed
    loss, _, counted = module(tokens, tokens)
    (loss / counted).backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


# ---- the benchmark scripts ----------------------------------------------------------------------------

def _load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_parity_script_parses_its_arguments_and_stops_on_the_cpu(tmp_path, capsys):
    parity = _load("float8_parity")
    s, out = parity.settings_from_args(["--data-path", "docs", "--tokenizer", "tok.json", "--recipes", "rowwise",
                                        "--steps", "200", "--out-dir", str(tmp_path), "model.mamba2.impl=torch"])
    assert s.recipes == ("rowwise",) and s.steps == 200 and s.extra == ("model.mamba2.impl=torch",)
    bf16, fp8 = parity.overrides(s, None), parity.overrides(s, "rowwise")
    assert "trainer.float8=null" in bf16 and "trainer.float8=rowwise" in fp8 and "trainer.compile=true" in fp8
    assert [a for a in bf16 if "float8" not in a] == [a.replace("rowwise", "bf16") for a in fp8 if "float8" not in a]
    with pytest.raises(SystemExit):
        parity.settings_from_args(["--data-path", "docs", "--tokenizer", "t", "--recipes", "fp8"])
    assert "unknown recipe 'fp8'" in capsys.readouterr().err
    assert parity.main(["--data-path", "docs", "--tokenizer", "t", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("float8_parity: error: trainer.float8=rowwise: float8 training needs a CUDA GPU")
    assert not (tmp_path / "bf16").exists()  # stopped before the bf16 run


def test_the_parity_comparison_and_its_tolerance():
    parity = _load("float8_parity")
    bf16 = {"losses": {10: 5.0, 20: 4.0, 30: 3.0, 40: 2.0}, "final_loss": 2.5}
    close = {"losses": {10: 5.5, 20: 4.04, 30: 3.03, 40: 2.02}, "final_loss": 2.52}  # first half off: not counted
    c = parity.compare(bf16, close, tol_final=0.01, tol_train=0.015)
    assert c["within"] and c["final_rel"] == 0.008 and c["train_mean_rel_second_half"] == 0.01 and c["steps_compared"] == 4
    far = {**close, "final_loss": 2.6}
    assert not parity.compare(bf16, far, tol_final=0.01, tol_train=0.015)["within"]
