"""A submitted spec to a study plan, as ``submit`` and the service both check it before anything is written."""

from __future__ import annotations

from typing import Any

from autotune.search.samplers import make_sampler
from autotune.spec import parse_spec
from autotune.store.profiles import load_profile
from autotune.study.plan import StudyPlan, plan_study
from autotune.study.resolve import pin_stack

__all__ = ["plan_submission", "preflight"]


def plan_submission(data: dict[str, Any], storage: str | None) -> StudyPlan:
    """Validate ``data`` (a spec mapping, overrides applied) and plan the study; a stored calibrated GPU profile
    (``cluster.profile``) or stack profile (``training.stack``), NAME or NAME@V, is pinned to its exact version
    in the plan's spec, for resume, report and export. Raises :class:`autotune.errors.SpecError` /
    :class:`~autotune.errors.StorageError`."""
    spec = parse_spec(data)
    ref = spec.cluster.profile
    gpu = load_profile(ref, storage) if ref else None
    if gpu is not None:
        spec = spec.model_copy(update={"cluster": spec.cluster.model_copy(update={"profile": gpu.name})})
    return plan_study(pin_stack(spec, storage=storage), gpu=gpu, storage=storage)


def preflight(plan: StudyPlan) -> None:
    """The checks a study's run makes before its first trial, made before anything is written: the sampler
    (a driven study) and one point of the space drawn, which evaluates every ``when`` condition."""
    if not plan.enumerates:
        s = plan.spec.search
        make_sampler(s.sampler, s.seed, plan.objective.multi, plan.space)
    next(plan.space.points(), None)
    plan.space.sample(lambda name, choices: choices[-1])
