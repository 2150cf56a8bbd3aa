"""Which names a request may use: `model` (the patient or a patient adapter) and guidance doctors."""

from __future__ import annotations

from pydantic import ValidationError

from llmdoctor.server.api.protocol_models import DoctorEval, ModelCard, ModelList
from llmdoctor.server.engine.protocol import Engine, Guidance
from llmdoctor.server.errors import InvalidRequestError, NotFoundError


class ModelsService:
    def __init__(self, engine: Engine):
        self.engine = engine

    @property
    def patient(self) -> str:
        return self.engine.model_name

    def resolve_adapter(self, model: str | None) -> str | None:
        """The patient adapter a `model` field selects; None for the bare patient.

        Raises NotFoundError listing the known names, or InvalidRequestError for a doctor's name.
        """
        if model is None or model == self.patient:
            return None
        kinds = {a.name: a.kind for a in self.engine.adapters()}
        if kinds.get(model) == "patient":
            return model
        if kinds.get(model) == "doctor":
            raise InvalidRequestError(
                f"'{model}' is a doctor: it guides the patient through `guidance`, it cannot be the `model`", "model"
            )
        known = [self.patient] + sorted(n for n, k in kinds.items() if k == "patient")
        raise NotFoundError(f"The model `{model}` does not exist. Known models: {', '.join(known)}", "model")

    def check_doctors(self, guidance: Guidance) -> None:
        """Raise NotFoundError naming the first unknown doctor and listing the loaded ones."""
        if not guidance.doctors:
            return
        loaded = sorted(a.name for a in self.engine.adapters() if a.kind == "doctor")
        for i, doctor in enumerate(guidance.doctors):
            if doctor.name not in loaded:
                listing = ", ".join(loaded) if loaded else "none (load one with POST /v1/adapters, kind 'doctor')"
                raise NotFoundError(
                    f"unknown doctor '{doctor.name}'; loaded doctors: {listing}", f"guidance.doctors[{i}].name"
                )

    def list_models(self) -> ModelList:
        cards = [ModelCard(id=self.patient, kind="patient", max_model_len=self.engine.max_model_len)]
        for adapter in sorted(self.engine.adapters(), key=lambda a: (a.kind, a.name)):
            kind = "patient_adapter" if adapter.kind == "patient" else "doctor"
            cards.append(ModelCard(id=adapter.name, kind=kind, parent=adapter.base_model,
                                   dimension=_text(adapter.meta.get("dimension")), eval=_eval_row(adapter.meta)))
        return ModelList(data=cards)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _eval_row(meta: dict) -> DoctorEval | None:
    """llmdoctor.json's recipe eval row; None when there is none or it is not the recipe's shape
    (a hand-written llmdoctor.json must not break the listing)."""
    recipe = meta.get("recipe")
    if not isinstance(recipe, dict):
        return None
    try:
        return DoctorEval.model_validate(recipe.get("eval"))
    except ValidationError:
        return None
