"""The one module that touches Optuna's private API; everything else uses Optuna's public API or this.

autotune writes a driver's trials in batches and enforces a study's budget across drivers inside the
database, which Optuna's public storage API cannot do in one transaction (:mod:`autotune.store.budget`,
:mod:`autotune.store.mirror`): both use Optuna's ORM models of its RDB schema. A study's id and storage
are read from the study object without the extra query the public
``storage.get_study_id_from_name`` costs. ``tests/unit/test_optuna_adapter.py`` checks every name and
column relied on here against the installed Optuna and fails loudly when an upgrade changes them;
pyproject.toml bounds Optuna to the major version that was verified (5).
"""

from __future__ import annotations

import optuna
from optuna.storages._rdb import models as _models

__all__ = ["StudyModel", "TrialModel", "TrialParamModel", "TrialValueModel", "TrialUserAttributeModel",
           "TrialSystemAttributeModel", "TrialHeartbeatModel", "study_id", "study_storage"]

StudyModel = _models.StudyModel
TrialModel = _models.TrialModel
TrialParamModel = _models.TrialParamModel
TrialValueModel = _models.TrialValueModel
TrialUserAttributeModel = _models.TrialUserAttributeModel
TrialSystemAttributeModel = _models.TrialSystemAttributeModel
TrialHeartbeatModel = _models.TrialHeartbeatModel


def study_id(study: optuna.Study) -> int:
    """The database id of ``study`` (what ``storage.get_study_id_from_name`` returns)."""
    return study._study_id


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage ``study`` was opened on."""
    return study._storage
