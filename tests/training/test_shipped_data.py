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
