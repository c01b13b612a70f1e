"""The YAML in configs/ is what users read and override: it must match the dataclasses it fills."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from composer.config import ModelConfig
from composer.tasks.mad import TASKS
from composer.engine.trainer import TrainerConfig
from primitives import REGISTRY

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


@pytest.mark.parametrize("name", TASKS)
def test_every_task_has_a_yaml_with_its_baseline(name):
    data = yaml.safe_load((CONFIGS / "task" / f"{name}.yaml").read_text())
    assert data.pop("name") == name
    assert data == _defaults(TASKS[name].config_cls)


def test_no_yaml_for_unregistered_tasks():
    assert {p.stem for p in (CONFIGS / "task").glob("*.yaml")} == set(TASKS)


def test_trainer_yaml_is_the_dataclass_defaults():
    assert yaml.safe_load((CONFIGS / "trainer" / "mad.yaml").read_text()) == _defaults(TrainerConfig)
    assert yaml.safe_load((CONFIGS / "trainer" / "pretrain.yaml").read_text()).keys() == _defaults(TrainerConfig).keys()


def test_model_settings_yaml_has_every_primitive_with_its_defaults():
    data = yaml.safe_load((CONFIGS / "model_settings.yaml").read_text())
    for p in REGISTRY.values():
        assert data.pop(p.name) == _defaults(p.config_cls), p.name
    assert data == _defaults(ModelConfig)  # every other field, pattern and vocab_size aside
    model = yaml.safe_load((CONFIGS / "model" / "default.yaml").read_text())
    assert {k for k in model if k != "defaults"} == {"pattern", "vocab_size"}  # the rest from model_settings.yaml
