"""The settings an evaluation compares: the bare patient, each doctor alone at each beta, the first
two doctors at every pair of grid betas, and each patient adapter (DPO, GDPO) alone.

A setting's name says what generated it: `patient`, `positivity@0.5`,
`positivity@0.5+conciseness@1`, `dpo:<name>`. A doctor at beta 0 is off (the engine skips it), so
grid pairs are named without their zero-beta doctors and a pair that reduces to an existing setting
(the patient, or a doctor alone at a swept beta) is not generated twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Literal

from llmdoctor.server.engine.protocol import DoctorWeight, Guidance, GuidanceMode

SettingKind = Literal["patient", "control", "doctor", "grid", "adapter"]


@dataclass(frozen=True)
class Setting:
    name: str
    kind: SettingKind
    alpha: float = 1.0
    doctors: tuple[tuple[str, float], ...] = ()  # (doctor, beta), beta != 0, config order
    adapter: str | None = None  # a patient adapter, or None for the bare patient
    mode: GuidanceMode = "product"  # how the doctors enter the rule

    @property
    def betas(self) -> dict[str, float]:
        return dict(self.doctors)

    @property
    def guidance(self) -> Guidance:
        """The engine's guidance for this setting (what generates it, and what its KL is of)."""
        return Guidance(self.alpha, tuple(DoctorWeight(name, beta, self.mode) for name, beta in self.doctors))

    @property
    def rule_alpha(self) -> float:
        """The patient's weight as the rule computes it."""
        return self.guidance.rule_alpha


def format_beta(beta: float) -> str:
    """`0.5`, `1`, `2.25`: short and stable, for setting names."""
    return f"{beta:g}"


def guided(doctors: list[tuple[str, float]], alpha: float, kind: SettingKind, mode: GuidanceMode = "product") -> Setting:
    """The setting that weights `doctors` (zero betas dropped); the patient when none is left."""
    active = tuple((name, beta) for name, beta in doctors if beta != 0.0)
    if not active and alpha == 1.0:
        return Setting("patient", "patient")
    name = "+".join(f"{doctor}@{format_beta(beta)}" for doctor, beta in active) or f"alpha@{format_beta(alpha)}"
    if alpha != 1.0 and active:
        name = f"{name}/alpha@{format_beta(alpha)}"
    return Setting(name, "grid" if len(active) > 1 else kind, alpha, active, mode=mode if active else "product")


def plan_settings(
    doctors: list[str],
    adapters: list[str],
    betas: list[float],
    grid_betas: list[float],
    alpha: float = 1.0,
    controls: bool = False,
    mode: GuidanceMode = "product",
) -> list[Setting]:
    """Every setting to generate, each once, in report order: the patient, the sharpening controls,
    each doctor alone by beta (the swept betas and those a zero in the grid adds), the grid pairs,
    the patient adapters.

    `controls`: for each swept beta, the patient alone at alpha + beta (`alpha@2`). A doctor that
    starts as a copy of the patient gives p^(alpha + beta) before it learns anything, so this is the
    point each doctor setting must beat: same sharpening, no tilt."""
    planned: dict[str, Setting] = {}

    def add(setting: Setting) -> None:
        planned.setdefault(setting.name, setting)

    add(Setting("patient", "patient"))
    if controls and doctors:
        for beta in sorted(betas):
            add(guided([], alpha + beta, "control"))
    for doctor in doctors:
        for beta in sorted(betas):
            add(guided([(doctor, beta)], alpha, "doctor", mode))
    if len(doctors) >= 2:
        first, second = doctors[:2]
        for a, b in product(sorted(grid_betas), repeat=2):
            add(guided([(first, a), (second, b)], alpha, "doctor", mode))
    for adapter in adapters:
        add(Setting(f"dpo:{adapter}", "adapter", adapter=adapter))
    order = {"patient": 0, "control": 1, "doctor": 2, "grid": 3, "adapter": 4}

    def place(setting: Setting) -> tuple:
        if setting.kind == "control":
            return order["control"], 0, setting.alpha
        first = doctors.index(setting.doctors[0][0]) if setting.kind == "doctor" else 0
        return order[setting.kind], first, setting.doctors[0][1] if setting.kind == "doctor" else 0.0

    return sorted(planned.values(), key=place)  # stable: grid pairs and adapters keep their order
