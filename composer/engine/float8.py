"""Float8 training (`trainer.float8`): the linear layers of every primitive run their GEMMs in float8
through torchao's float8 training recipes; everything else stays under bf16 autocast.

torchao scales dynamically: at every forward a converted `nn.Linear` scales its input and weight,
casts them to float8 (e4m3) and multiplies them on the float8 tensor cores (`torch._scaled_mm`,
output in bf16); backward does the same with the output gradient. Master weights, gradients, the
optimiser state and every other op are untouched, so a checkpoint is the same as in bf16.

Recipes (`RECIPES`, torchao's `Float8LinearConfig.from_recipe_name`):
  tensorwise  one scale per tensor (cuBLAS): torchao's fastest. Under FSDP2 the weights are
              all-gathered in float8 (`enable_fsdp_float8_all_gather`) and, after each optimiser
              step, their scales are computed for every layer in one all-reduce
              (`precompute_float8_dynamic_scale_for_fsdp`).
  rowwise     one scale per row (CUTLASS), rounded to powers of two: more accurate, and all-gathers
              in bf16 (torchao's float8 all-gather is tensorwise only).

What converts (`plan_float8`): every nn.Linear inside a pattern layer whose in and out features are
multiples of 16 (`torch._scaled_mm` needs them) and that its primitive does not keep in high
precision (a mixer's optional `keep_precision`, submodule name -> why: the MoE's router, which routes
in fp32, and its experts, stacked weights that torch's grouped GEMM runs, not nn.Linear). Outside the
layers nothing converts: the embedding, the LM head (a weight the loss reads, never a called module)
and a task's own head stay in high precision.

Order (torchao's and torchtitan's): convert, then compile each layer, then FSDP2 (`trainer.prepare`).
Refused in one line before anything is built on it (`check_support`): no CUDA GPU, one without float8
tensor cores, torchao missing, fp32 precision, and a captured CUDA-graph step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
from torch import nn

from composer.errors import ConfigError
from composer.model import ComposedModel, Layer

log = logging.getLogger(__name__)

RECIPES = ("tensorwise", "rowwise")  # torchao's Float8LinearRecipeName values offered here
MIN_CAPABILITY = (8, 9)  # float8 tensor cores: Ada Lovelace (8.9) and Hopper (9.0) onwards
ALIGN = 16  # torch._scaled_mm: a float8 weight's both dimensions are multiples of 16
MISALIGNED = f"a dimension not a multiple of {ALIGN}"
GPUS = "H100, H200, L40S, RTX 4090"  # examples of GPUs with float8 tensor cores
INSTALL = "pip install 'composer-hybrid[float8]' (or pip install 'torchao>=0.13')"


@dataclass(frozen=True, kw_only=True)
class Gpu:
    """What float8 support depends on: the GPU's name and CUDA compute capability."""

    name: str
    capability: tuple[int, int]


def describe_gpu(device: torch.device) -> Gpu | None:
    """The CUDA device's name and capability; None for any other device."""
    if device.type != "cuda":
        return None
    return Gpu(name=torch.cuda.get_device_name(device), capability=tuple(torch.cuda.get_device_capability(device)))


def torchao_version() -> str | None:
    """The installed torchao's version, or None where torchao (or its float8 training) cannot be imported."""
    try:
        import torchao
        import torchao.float8  # noqa: F401
    except ImportError:
        return None
    return getattr(torchao, "__version__", "unknown")


def check_support(recipe: str, *, device: torch.device, gpu: Gpu | None, bf16: bool, graphed: bool) -> None:
    """Refuse what float8 training cannot run on, in one line (ConfigError), before the model is touched.
    Asked in this order: the recipe, the device, its capability, torchao, the precision, a CUDA graph."""
    where = f"trainer.float8={recipe}"
    if recipe not in RECIPES:
        raise ConfigError(f"{where}: unknown float8 recipe; valid: {', '.join(RECIPES)} (null: off)")
    if gpu is None:
        raise ConfigError(f"{where}: float8 training needs a CUDA GPU with float8 tensor cores (compute capability "
                          f">= 8.9: {GPUS}); this run is on {device.type}")
    if gpu.capability < MIN_CAPABILITY:
        major, minor = gpu.capability
        raise ConfigError(f"{where}: float8 training needs a GPU with float8 tensor cores (compute capability >= 8.9: "
                          f"{GPUS}); this run's GPU, {gpu.name}, has compute capability {major}.{minor}")
    if torchao_version() is None:
        raise ConfigError(f"{where}: float8 training needs torchao, which is not installed: {INSTALL}")
    if not bf16:
        raise ConfigError(f"{where}: float8 training replaces bf16 GEMMs and needs bf16 autocast; "
                          "set trainer.precision=auto or bf16, not fp32")
    if graphed:  # pytorch/ao#567 (open): dynamic scaling under CUDA graphs is torchao's open question too
        raise ConfigError(f"{where} with trainer.cuda_graph=true: capturing torchao's dynamically scaled float8 step "
                          "in a CUDA graph is not verified here; drop trainer.cuda_graph (trainer.compile=true "
                          "fuses float8's casts)")


@dataclass(frozen=True, kw_only=True)
class Float8Plan:
    """Which linear layers of a module run in float8, and what stays in high precision and why."""

    converted: tuple[str, ...]  # the nn.Linear layers to convert, by name in the module
    linears: int  # every nn.Linear of the module, converted or not
    kept: tuple[tuple[str, str], ...]  # (name, why) of what stays in high precision: linears and primitives' own


def plan_float8(module: nn.Module) -> Float8Plan:
    """The conversion's plan for `module` (an Objective or a model); reads the module, changes nothing."""
    in_layers: dict[str, str | None] = {}  # linear inside a layer -> why it stays (None: it converts)
    kept: list[tuple[str, str]] = []
    for prefix, layer in _layers(module):
        keep = getattr(layer.mixer, "keep_precision", {})  # submodule name -> why
        for sub, reason in keep.items():
            kept.append((f"{prefix}.mixer.{sub}", reason))
        for sub, child in layer.mixer.named_modules():
            if isinstance(child, nn.Linear):
                name = f"{prefix}.mixer.{sub}"
                in_layers[name] = keep.get(sub) or _misaligned(child)
    outside = [(name, child) for name, child in module.named_modules()
               if isinstance(child, nn.Linear) and name not in in_layers]
    for name, child in outside:
        kept.append((name, "lm head" if _is_lm_head(module, child) else "task's output head"))
    for name, reason in in_layers.items():
        if reason == MISALIGNED:
            kept.append((name, reason))
    converted = tuple(name for name, reason in in_layers.items() if reason is None)
    return Float8Plan(converted=converted, linears=len(in_layers) + len(outside), kept=tuple(kept))


def _layers(module: nn.Module) -> list[tuple[str, Layer]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, Layer)]


def _misaligned(linear: nn.Linear) -> str | None:
    out_features, in_features = linear.weight.shape
    return MISALIGNED if out_features % ALIGN or in_features % ALIGN else None


def _is_lm_head(module: nn.Module, linear: nn.Linear) -> bool:
    return any(isinstance(m, ComposedModel) and m.head is linear for m in module.modules())


@dataclass(frozen=True, kw_only=True)
class Float8Report:
    """What `apply_float8` did: summary.json's `impl.float8` (`describe`) and the per-step hook."""

    recipe: str
    torchao: str  # torchao's version
    all_gather: bool  # FSDP2 all-gathers the converted weights in float8 (tensorwise under FSDP2)
    plan: Float8Plan
    tied_head: bool  # the LM head is the embedding (not a linear layer)

    def describe(self) -> str:
        """e.g. 'rowwise (torchao 0.18.0): 42 of 44 linear layers in float8; not converted: the lm head, ...'."""
        kept = self.plan.kept
        parts = ["the lm head (tied to the embedding)"] if self.tied_head else []
        for why in dict.fromkeys(why for _, why in kept):  # each reason once, in order
            names = [name for name, reason in kept if reason == why]
            if why == MISALIGNED:
                parts.append(f"{_count(len(names), 'linear layer')} with {why} (first: {names[0]})")
            elif all(".mixer." in name for name in names):
                parts.append(f"{why} in {_count(len({n.split('.mixer.')[0] for n in names}), 'layer')}")
            else:
                parts.append(f"the {why}")
        gather = ", float8 all-gather under FSDP2" if self.all_gather else ""
        return (f"{self.recipe} (torchao {self.torchao}{gather}): {len(self.plan.converted)} of {self.plan.linears} "
                f"linear layers in float8; not converted: {', '.join(parts) or 'none'}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def apply_float8(module: nn.Module, *, recipe: str, fsdp: bool) -> Float8Report:
    """Swap the planned nn.Linear layers of `module` for torchao's Float8Linear, in place; before
    compiling and before FSDP2. `fsdp`: the module will be sharded (tensorwise then all-gathers in float8)."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    if recipe not in RECIPES:
        raise ConfigError(f"trainer.float8={recipe}: unknown float8 recipe; valid: {', '.join(RECIPES)} (null: off)")
    plan = plan_float8(module)
    config = Float8LinearConfig.from_recipe_name(recipe)
    all_gather = fsdp and recipe == "tensorwise"
    if all_gather:
        config = replace(config, enable_fsdp_float8_all_gather=True)
    chosen = set(plan.converted)
    convert_to_float8_training(module, config=config, module_filter_fn=lambda _, name: name in chosen)
    swapped = sum(isinstance(m, Float8Linear) for m in module.modules())
    if swapped != len(chosen):  # torchao's filter saw other names than the plan: a bug here, not a user error
        raise RuntimeError(f"float8: planned {len(chosen)} linear layers, torchao converted {swapped}")
    tied = any(isinstance(m, ComposedModel) and m.head is None for m in module.modules())
    report = Float8Report(recipe=recipe, torchao=torchao_version() or "unknown", all_gather=all_gather,
                          plan=plan, tied_head=tied)
    log.info("float8: %s", report.describe())
    return report


def after_optimizer_step(report: Float8Report | None, module: nn.Module) -> None:
    """With float8 all-gather, every converted weight's scale for the next step, in one all-reduce
    (torchao's `precompute_float8_dynamic_scale_for_fsdp`); nothing otherwise."""
    if report is not None and report.all_gather:
        from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

        precompute_float8_dynamic_scale_for_fsdp(module)
