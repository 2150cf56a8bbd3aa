"""A short run of benchmarks/soak.py (the full soak runs minutes: see its docstring)."""

import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


@pytest.mark.slow
def test_soak_short_run_passes_its_bars(doctor_adapter_dir, patient_adapter_dir):
    """~40 s on 2 cores: 20 s of mixed traffic and adapter churn after 5 s of warm-up, on the fixture
    adapters (no training). The RSS bar is widened: 20 s is too short to tell a leak from warm-up."""
    command = [
        sys.executable, str(SOAK), "--seconds", "20", "--warmup-seconds", "5", "--concurrency", "3",
        "--rss-bar-mib", "256", "--doctor-adapter", str(doctor_adapter_dir),
        "--patient-adapter", str(patient_adapter_dir),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "FAIL" not in result.stdout
    assert "PASS  5xx answers: 0" in result.stdout
