"""The example configs run as shipped: their preference files are in training/data/."""

from pathlib import Path

import pytest

from llmdoctor.training.config import load_config
from llmdoctor.training.data import load_preferences

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


@pytest.mark.parametrize("name", ["dpo.yaml", "gdpo.yaml"])
def test_shipped_config_loads_its_shipped_preferences(name):
    config = load_config(CONFIGS / name)
    data = load_preferences(config.dataset, config.alignment.method,
                            group_size=config.alignment.group_delay_size, seed=config.alignment.seed)
    assert data.report.kept >= 60 and data.report.skipped_total == 0
    assert all(len(row.responses) >= 2 for row in data.rows)


def test_shipped_rewards_and_doctor_configs_load_and_point_at_each_other():
    from llmdoctor.training.doctor_config import load_doctor_config, load_rewards_config

    rewards = load_rewards_config(CONFIGS / "rewards.yaml")
    doctor = load_doctor_config(CONFIGS / "doctor.yaml")
    assert rewards.dataset.path.is_file() and rewards.rewards.faces().positive
    repository = CONFIGS.parents[1]
    assert doctor.data.path == repository / rewards.rewards.output  # run from the repository root
