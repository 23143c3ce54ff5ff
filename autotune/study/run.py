"""Running a study, as ``submit``/``resume`` (and a service) do: one entry point over both paths.

- An ``analytic`` study with ``sampler: auto`` is the analytic stage alone (:mod:`autotune.study.analytic`):
  the whole space of every case scored in one vectorised pass and stored in bulk. Its
  :data:`DASHBOARD_TRIALS` best layouts are also written as COMPLETE Optuna trials, so optuna-dashboard
  shows them (user attribute ``evaluation`` names their evaluation row).
- Every other study runs the Optuna driver (:class:`autotune.study.driver.Driver`): an analytic study with
  a named sampler (how ``benchmarks/search_efficiency.py`` compares samplers), ``dryrun`` and ``measure``
  studies (``auto`` runs TPE there), and multi-fidelity studies (:mod:`autotune.study.fidelity`), whose
  first stage is the same analytic stage.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.distributions import CategoricalDistribution

from autotune.store.budget import reserve
from autotune.store.mirror import FinishedTrial, record_finished
from autotune.store.optuna_adapter import study_id
from autotune.store.storage import Storage
from autotune.study.analytic import Stage, run_analytic
from autotune.study.db_study import open_db_study
from autotune.study.driver import Driver
from autotune.study.fidelity import run_fidelities
from autotune.study.plan import CASE_KEYS, StudyPlan
from autotune.study.run_options import Progress, RunOptions
from autotune.study.trial_outcome import trial_user_attrs

__all__ = ["DASHBOARD_TRIALS", "run_study"]

DASHBOARD_TRIALS = 10
"""Best layouts of an enumerated study written as Optuna trials."""


def run_study(plan: StudyPlan, storage: Storage, options: RunOptions, *, create: bool,
              on_progress: Callable[[Progress], None] | None = None) -> Progress:
    """Run (or continue: ``create=False``) the study ``plan`` describes to its end."""
    if plan.enumerates:
        study = open_db_study(plan, storage, create)
        progress, stage = run_analytic(plan, storage, numbered=True, on_progress=on_progress)
        _mirror_best(plan, storage, study, stage)
        return progress
    driver = Driver(plan.spec, storage, options, plan)
    study = driver.open(create=create)
    fidelities = plan.spec.search.fidelities
    if fidelities and len(fidelities) > 1:
        return run_fidelities(driver, study, list(fidelities), plan.spec.search.top_k, on_progress)
    return driver.run(study, on_progress)


def _mirror_best(plan: StudyPlan, storage: Storage, study: optuna.Study, stage: Stage) -> None:
    """Write the stage's best layouts as Optuna trials, once per study: trial n is the n-th best.

    The slots are taken under the study's budget lock (:func:`autotune.store.budget.reserve`), so a second
    driver finds none left; then every trial still RUNNING is written: the slots just taken, or those of a
    driver killed between taking and writing them. A trial is written only while RUNNING and its content
    follows from its number, so drivers writing the same trial at once store it once, and the same.
    """
    ranked = stage.ranked(plan)[:DASHBOARD_TRIALS]
    ostore, sid = storage.optuna(), study_id(study)
    reserve(ostore, sid, len(ranked), len(ranked))
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    choices = {d.name: d.choices for d in plan.space.dimensions} | {k: tuple(plan.values_of(k)) for k in CASE_KEYS}
    finished = []
    for trial in running:
        if trial.number >= len(ranked):
            continue
        i = ranked[trial.number]
        row, params = stage.rows[i], stage.params[i]
        finished.append(FinishedTrial(
            trial_id=ostore.get_trial_id_from_study_id_trial_number(sid, trial.number),
            state=optuna.trial.TrialState.COMPLETE, values=plan.objective.values(row.metrics),
            params=params, distributions={k: CategoricalDistribution(choices[k]) for k in params},
            user_attrs=trial_user_attrs(row) | {"evaluation": row.trial}, system_attrs={}))
    record_finished(ostore, finished)
