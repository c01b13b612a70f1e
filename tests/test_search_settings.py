"""The settings guard: what a resumed study compares, and what it leaves out."""

import optuna
import pytest

from composer.errors import ConfigError
from search.runner import _guard, _settings, search_config_from_mapping
from search.study import open_study


def _cfg(alphabet: str, evaluator: dict | None = None, **model) -> object:
    return search_config_from_mapping({"name": "s", "space": {"alphabet": alphabet, "length": 4},
                                       "evaluator": {"name": "mad_cpu", "model": {"d_model": 32, **model},
                                                     **(evaluator or {})}})


def test_settings_of_primitives_the_space_cannot_place_do_not_count(tmp_path):
    study = open_study(name="s", storage=None, run_dir=tmp_path, sampler=optuna.samplers.RandomSampler(0))
    _guard(study, _settings(_cfg("*-M", attention={"n_heads": 2})))
    # a preset that gained a section for sliding-window attention: the study over *-M resumes
    with_swa = _settings(_cfg("*-M", attention={"n_heads": 2}, swa={"window": 16}))
    assert not any(k.startswith("evaluator.model.swa") for k in with_swa)
    _guard(study, with_swa)
    # ... and a study saved with such keys by an older version resumes too
    old = open_study(name="old", storage=None, run_dir=tmp_path, sampler=None)
    old.set_user_attr("settings", {**with_swa, "evaluator.model.swa.window": 8})
    _guard(old, with_swa)
    # a primitive the space places still counts, named in one line
    with pytest.raises(ConfigError, match=r"evaluator\.model\.attention\.n_heads=2, this run has 4"):
        _guard(study, _settings(_cfg("*-M", attention={"n_heads": 4})))
    assert "evaluator.model.swa.window" in _settings(_cfg("*-W", swa={"window": 16}))


def test_a_trainer_setting_added_since_the_study_counts_only_when_it_is_not_at_its_default(tmp_path):
    now = _settings(_cfg("*-M"))
    assert now["evaluator.trainer.profile_steps"] == 0  # TrainerConfig's default
    # a study saved before composer had `profile_steps` (the GPU study of 2026-12-03, refused on 2026-12-05)
    old = open_study(name="old", storage=None, run_dir=tmp_path, sampler=None)
    old.set_user_attr("settings", {k: v for k, v in now.items() if k != "evaluator.trainer.profile_steps"})
    _guard(old, now)
    with pytest.raises(ConfigError, match=r"evaluator\.trainer\.profile_steps=None, this run has 3"):
        _guard(old, {**now, "evaluator.trainer.profile_steps": 3})
    # a key the study had, changed since, is still a difference even at today's default
    older = open_study(name="older", storage=None, run_dir=tmp_path, sampler=None)
    older.set_user_attr("settings", {**now, "evaluator.trainer.profile_steps": 5})
    with pytest.raises(ConfigError, match=r"profile_steps=5, this run has 0"):
        _guard(older, now)


def test_an_evaluator_setting_added_since_counts_only_off_its_default_and_parallel_or_compile_never(tmp_path):
    now = _settings(_cfg("*-M"))
    old = open_study(name="old", storage=None, run_dir=tmp_path, sampler=None)
    old.set_user_attr("settings", {k: v for k, v in now.items() if k != "evaluator.lrs"})  # saved before `lrs`
    _guard(old, now)  # lrs [] is the default: what the study trained with
    with pytest.raises(ConfigError, match=r"evaluator\.lrs=None, this run has \[0\.001, 0\.003\]"):
        _guard(old, _settings(_cfg("*-M", {"lrs": [1e-3, 3e-3]})))
    # runs at once per evaluation change the throughput, not the scores: a study resumes with another
    assert "evaluator.parallel" not in _settings(_cfg("*-M", {"parallel": 6}))
    # nor does compiling the layers beyond the seed spread (RESULTS.md): a study begun eager resumes compiled
    compiled = _settings(_cfg("*-M", {"trainer": {"compile": True}}))
    assert "evaluator.trainer.compile" not in compiled
    eager = open_study(name="eager", storage=None, run_dir=tmp_path, sampler=None)
    eager.set_user_attr("settings", {**now, "evaluator.trainer.compile": False})  # as studies saved it before
    _guard(eager, compiled)
    saved_with = open_study(name="with", storage=None, run_dir=tmp_path, sampler=None)
    saved_with.set_user_attr("settings", {**now, "evaluator.parallel": 6})  # as studies saved it before
    _guard(saved_with, now)



def test_the_committed_gpu_study_resumes_under_todays_presets(tmp_path):
    """The issue-15 GPU search (benchmarks/results/issue15-2026-12-03/search) saved its settings when the evaluators
    listed only the proxy settings they changed; they now start from configs/model_settings.yaml and list every
    one. Today's `evaluator=mad space=long`, composed by the real command, must still resume it; without the
    model defaults in the guard it was refused on the attention's settings."""
    import shutil
    from pathlib import Path

    import yaml

    from tests.conftest import run_cli

    db = tmp_path / "study.db"
    shutil.copy(Path(__file__).parents[1] / "benchmarks/results/issue15-2026-12-03/search/study.db", db)
    study = optuna.load_study(study_name="issue15-gp-mad-n16", storage=f"sqlite:///{db}")
    proc = run_cli("search", "evaluator=mad", "space=long", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    job = yaml.safe_load(proc.stdout)
    job.pop("hydra", None)
    assert job["evaluator"]["trainer"]["compile"] is True  # today's preset compiles; the study was trained eager
    now = _settings(search_config_from_mapping(job))
    assert now["evaluator.model.attention.n_heads"] == 4 and "evaluator.model.attention.n_heads" not in study.user_attrs["settings"]
    _guard(study, now)
    with pytest.raises(ConfigError, match=r"evaluator\.model\.attention\.n_heads=None, this run has 2"):
        _guard(study, {**now, "evaluator.model.attention.n_heads": 2})


def test_a_gpu_preset_on_a_cpu_is_said_before_its_first_evaluation():
    """`evaluator=mad` on a CPU prints nothing for tens of minutes (its first evaluation): one warning says so."""
    from search.runner import gpu_preset_on_cpu

    mad = search_config_from_mapping({"name": "s", "evaluator": {"name": "mad", "model": {"d_model": 128},
                                                                 "trainer": {"cuda_graph": True, "device": "cpu"}}}).evaluator
    note = gpu_preset_on_cpu(mad)
    assert note.startswith("evaluator=mad is sized for a GPU and will train on the CPU: 12.0M tokens per candidate "
                           "at width 128") and note.endswith("evaluator=mad_cpu is the CPU preset")
    fast = search_config_from_mapping({"name": "s", "evaluator": {
        "name": "mad_fast", "trainer": {"cuda_graph": True, "device": "cpu"}, "lrs": [1e-3, 3e-3],
        "tasks": {"noisy_in_context_recall": {}, "selective_copying": {}, "compression": {}}}}).evaluator
    assert "12.0M tokens per candidate" in gpu_preset_on_cpu(fast)  # 3 tasks x 2 learning rates x 2M
    assert gpu_preset_on_cpu(_cfg("*-M").evaluator) is None  # mad_cpu: no graphs, the CPU preset


def test_compiled_proxies_say_what_the_first_evaluation_costs_and_warn_a_short_search():
    import logging

    from search.runner import compile_note

    def search(n_trials: int, **strategy):
        return search_config_from_mapping({"name": "s", "n_trials": n_trials, "strategy": {"name": "random", **strategy},
                                           "evaluator": {"name": "mad_fast", "trainer": {"compile": True}}})

    level, note = compile_note(search(500), gpus=1)
    assert level == logging.INFO and note.startswith("evaluator.trainer.compile=true: each worker compiles every layer")
    assert "compile=false" not in note
    # compiling pays for itself after 30-75 evaluations per GPU (H100): a shorter search is told the way out
    level, note = compile_note(search(20), gpus=1)
    assert level == logging.WARNING and note.endswith(
        "This search trains 20 evaluations per GPU, fewer than the 30-75 in which an H100 made that up "
        "(benchmarks/RESULTS.md): evaluator.trainer.compile=false may finish sooner")
    assert compile_note(search(100), gpus=2)[0] == logging.WARNING  # 50 a GPU
    assert compile_note(search(100), gpus=0)[0] == logging.INFO  # no GPU: counted as one
    assert compile_note(search(40, name="end_layer", rounds=2), gpus=1)[0] == logging.INFO  # 40 a round, 2 rounds
    assert compile_note(_cfg("*-M"), gpus=1) is None  # mad_cpu: eager
