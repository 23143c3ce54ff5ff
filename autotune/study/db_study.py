"""A study's record in the database: the Optuna study (what optuna-dashboard and ``resume`` open) and
autotune's ``autotune_studies`` row (the spec as submitted, with the versions that scored it)."""

from __future__ import annotations

import optuna

from autotune import __version__
from autotune.costmodel.estimate import COST_MODEL_VERSION
from autotune.store.storage import Storage
from autotune.study.plan import StudyPlan

__all__ = ["open_db_study"]


def open_db_study(plan: StudyPlan, storage: Storage, create: bool) -> optuna.Study:
    """Create (``create``; a concurrent driver may have created it first) or load the study in the DB."""
    ostore = storage.optuna()
    recorder = optuna.samplers.RandomSampler()  # the DB study only records; sampling runs elsewhere
    if not create:
        return optuna.load_study(study_name=plan.spec.name, storage=ostore, sampler=recorder)
    study = optuna.create_study(study_name=plan.spec.name, storage=ostore, sampler=recorder,
                                directions=list(plan.objective.directions), load_if_exists=True)
    storage.add_study(plan.spec.name, plan.spec.model_dump(mode="json"), __version__, COST_MODEL_VERSION)
    return study
