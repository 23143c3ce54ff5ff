"""One pass from a validated spec to everything a study run needs.

``submit`` and ``resume`` call :func:`plan_study` once; the driver, the analytic stage and the
multi-fidelity stages take the resulting :class:`StudyPlan` instead of resolving the spec again.
A plan answers one or more *cases*: every cluster size of ``cluster.nodes`` times every global batch
size of ``training.global_batch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autotune.search.objectives import Objective, objective_for
from autotune.search.samplers import check_sampler
from autotune.search.space import SearchSpace, load_space
from autotune.spec import ClusterSpec, GPUSpec, StudySpec, TrainingSpec
from autotune.study.resolve import Problem, resolve

__all__ = ["CASE_KEYS", "Case", "StudyPlan", "plan_study"]

#: What distinguishes the cases of a study, as stored layouts and sampled params name it.
CASE_KEYS = ("nodes", "global_batch")


@dataclass(frozen=True)
class Case:
    """One cluster size and global batch size a study answers."""

    nodes: int
    global_batch: int


@dataclass(frozen=True)
class StudyPlan:
    """A study's spec, resolved problem, objective, specialised space and cases."""

    spec: StudySpec
    problem: Problem
    objective: Objective
    space: SearchSpace
    cases: tuple[Case, ...]

    @property
    def node_counts(self) -> list[int]:
        """Cluster sizes of the study, in spec order."""
        return self.spec.cluster.node_counts

    @property
    def batch_sizes(self) -> list[int]:
        """Global batch sizes of the study, in spec order."""
        return self.spec.training.batch_sizes

    @property
    def enumerates(self) -> bool:
        """Whether the study is the analytic stage alone: every layout scored in one vectorised pass (an
        ``analytic`` study whose sampler is ``auto``); otherwise the Optuna driver runs it."""
        s = self.spec.search
        return s.final_evaluator == "analytic" and s.sampler == "auto" and not s.fidelities

    def values_of(self, key: str) -> list[int]:
        """The study's values of a case key (:data:`CASE_KEYS`)."""
        return {"nodes": self.node_counts, "global_batch": self.batch_sizes}[key]

    def sampled(self, case: Case) -> dict[str, Any]:
        """The case keys a sampler chooses (those with more than one value in the study), at ``case``."""
        return {k: getattr(case, k) for k in CASE_KEYS if len(self.values_of(k)) > 1}

    def cluster(self, nodes: int) -> ClusterSpec:
        """The cluster at one of the study's sizes."""
        return self.problem.cluster.model_copy(update={"nodes": nodes})

    def training(self, global_batch: int) -> TrainingSpec:
        """The training target at one of the study's global batch sizes."""
        return self.spec.training.at_batch(global_batch)

    def tags(self, case: Case) -> dict[str, Any]:
        """What a stored layout records of its case: ``nodes`` always, ``global_batch`` when the study lists
        several batch sizes."""
        return {"nodes": case.nodes} | ({"global_batch": case.global_batch} if len(self.batch_sizes) > 1 else {})

    def case_of(self, layout: dict[str, Any]) -> Case:
        """The case a stored layout (or proposed point) belongs to."""
        return Case(nodes=layout.get("nodes", self.node_counts[0]),
                    global_batch=layout.get("global_batch", self.batch_sizes[0]))


def plan_study(spec: StudySpec, *, gpu: GPUSpec | None = None, storage: str | None = None) -> StudyPlan:
    """Resolve ``spec`` (model, GPU or stored profile at ``storage``), check its objective and sampler, and
    specialise its space to the model and every case; raises :class:`autotune.errors.SpecError`."""
    problem = resolve(spec, gpu=gpu, storage=storage)
    objective = objective_for(spec)
    check_sampler(spec.search.sampler, objective.multi)
    m, t = problem.model, spec.training
    space = load_space(spec.search.space).specialise(
        layers=m.layers, heads=m.heads, seq_len=t.seq_len, global_batch=t.batch_sizes,
        gpu_counts=[n * spec.cluster.gpus_per_node for n in spec.cluster.node_counts], experts=m.experts)
    cases = tuple(Case(n, b) for n in spec.cluster.node_counts for b in t.batch_sizes)
    return StudyPlan(spec=spec, problem=problem, objective=objective, space=space, cases=cases)
