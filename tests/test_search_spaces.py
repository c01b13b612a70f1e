"""The space presets of 2026 hybrids, searched end to end on the CPU: `space=qwen3_next`
(attention, MLP, Gated DeltaNet) and `space=all` (every primitive, with share limits)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import optuna
import pytest
import yaml

from search.runner import search_config_from_mapping
from tests.conftest import run_cli
from tests.test_search_cli import evaluated, load, search_args

optuna.logging.set_verbosity(optuna.logging.WARNING)

CONFIGS = Path(__file__).parents[1] / "configs"
TINY_NEW = ["++evaluator.model.gdn.head_dim=8", "++evaluator.model.gdn.chunk_size=8", "++evaluator.model.swa.window=4",
            "++evaluator.model.moe.n_experts=4", "++evaluator.model.moe.top_k=2"]


@pytest.mark.parametrize("space, letters", [("qwen3_next", "*-G"), ("all", "*WMG-E")])
def test_the_preset_spaces_hold_their_letters_and_limits(space, letters):
    data = yaml.safe_load((CONFIGS / "search" / "space" / f"{space}.yaml").read_text())
    cfg = search_config_from_mapping({"name": "s", "space": data})
    assert set(cfg.space.alphabet) == set(letters) and cfg.space.length == 16
    assert cfg.baselines == ("*-" * 8,)  # the Llama layout fits both
    rng = random.Random(0)
    samples = [cfg.space.sample(rng) for _ in range(200)]
    assert all(s.count("*") <= 16 * cfg.space.max_share["*"] for s in samples)
    assert set("".join(samples)) == set(letters)  # every letter is placed somewhere


def test_a_search_over_every_primitive_runs_end_to_end(tmp_path):
    args = search_args(tmp_path, "space=all", "space.length=4", "n_trials=6", "strategy=random",
                       "baselines=[]", *TINY_NEW, name="all")
    proc = run_cli(*args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "all" / "result.json").read_text())
    patterns = evaluated(load(tmp_path, "all"))
    assert len(patterns) == 6 and set("".join(patterns)) - set("*WMG-E") == set()
    assert set(result["architecture"]) <= set("*WMG-E") and len(result["architecture"]) == 4
    # each evaluation ran the primitives it placed, and said which implementation
    impls = {}
    for summary in (tmp_path / "all" / "trials").glob("*/*/summary.json"):
        impls |= json.loads(summary.read_text())["impl"]
    placed = {"G", "E", "W"} & set("".join(patterns))
    assert placed and all(isinstance(impls[letter], str) for letter in placed)


@pytest.mark.parametrize("space", ["small", "long", "qwen3_next", "all"])
def test_every_preset_names_every_letter_so_a_plain_override_sets_its_share(space):
    """Hydra refuses a key its config lacks: with `{}` as the bounds, `space.max_share={M:0.5}` (what the README
    shows) failed as an unknown key. Every preset lists every registered letter, null where unbounded."""
    from primitives import REGISTRY

    data = yaml.safe_load((CONFIGS / "search" / "space" / f"{space}.yaml").read_text())
    assert set(data["min_share"]) == set(data["max_share"]) == set(REGISTRY)


def test_share_overrides_merge_into_the_preset_and_null_means_no_bound():
    proc = run_cli("search", "space=long", "space.max_share={M:0.25}", "space.min_share={-:0.25}", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    space = search_config_from_mapping({"name": "s", "space": yaml.safe_load(proc.stdout)["space"]}).space
    assert dict(space.max_share) == {"*": 0.5, "M": 0.25} and dict(space.min_share) == {"-": 0.25}  # nulls dropped
    assert space.violations("MMMM*-*-*-*-*-*-") == []  # 4 of 16: at the bound
    assert space.violations("MMMMM*-*-*-*-*--") == ["max_share: 'M' (mamba2) is 0.312 of the layers > 0.25"]
    proc = run_cli("search", "space.max_share={Q:0.5}", "--cfg", "job")
    assert proc.returncode == 2 and "unknown config key 'space.max_share.Q' (space.max_share has *, -, M, G, W, E;" in proc.stderr


@pytest.mark.parametrize("evaluator", ["mad_cpu", "mad", "mad_fast", "lm"])
def test_every_proxy_setting_is_a_plain_override_in_every_evaluator(evaluator):
    """The evaluators start from configs/model_settings.yaml: a primitive's setting a preset does not change
    (MoE's experts under `mad`) was an unknown key before, reachable only with Hydra's `++`."""
    proc = run_cli("search", f"evaluator={evaluator}", "evaluator.model.moe.n_experts=4",
                   "evaluator.model.attention.qk_norm=true", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    job = yaml.safe_load(proc.stdout)
    job.pop("hydra", None)
    proxy = search_config_from_mapping(job).evaluator.proxy("*E", vocab_size=16)
    assert proxy.primitive_config("E").n_experts == 4 and proxy.primitive_config("*").qk_norm
