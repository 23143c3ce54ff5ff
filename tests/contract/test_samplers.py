"""One contract suite run over every sampler name in :data:`autotune.search.samplers.SAMPLERS`.

Each sampler builds for the objectives it supports and refuses the others with a one-line SpecError;
driven by the real :class:`~autotune.study.driver.Driver` (analytic evaluator in this process, a tmp
SQLite file) on the tiny model and the ``cpu`` space, it proposes only points of that space and runs to
its budget, for a single objective (throughput) and, where supported, a Pareto one.
"""

from __future__ import annotations

import json

import optuna
import pytest

from autotune.errors import SpecError
from autotune.search.samplers import SAMPLERS, check_sampler, make_sampler
from autotune.search.space import load_space
from autotune.spec import parse_spec
from autotune.store.storage import Storage
from autotune.study.driver import Driver, RunOptions
from tests.integration.studydb import LocalPool

SINGLE_ONLY = {"gp", "thompson"}  # samplers that optimise one objective
N_TRIALS = 6


def _spec(objective: str) -> dict:
    return {"name": f"contract-{objective}", "model": "tiny", "cluster": {"gpu": "cpu", "gpus_per_node": 4, "nodes": 1},
            "training": {"seq_len": 128, "global_batch": 8, "precision": "fp32", "tokens": 1.0e6},
            "search": {"space": "cpu", "sampler": "tpe", "n_trials": N_TRIALS, "workers": 1, "seed": 0},
            "objective": objective}


def _space():
    # tiny: 4 layers, 4 heads; seq 128, global batch 8, 4 GPUs (as the driver specialises it)
    return load_space("cpu").specialise(layers=4, heads=4, seq_len=128, global_batch=8, gpu_counts=[4])


def test_the_cpu_space_has_288_points() -> None:
    # tp x pp meshes of 4 GPUs: 1x1 (1 variant), 2x1 (sequence parallel or not: 2), 1x2 (1F1B with vpp 1
    # or 2, or GPipe: 3), 2x2 (2 x 3 = 6): 12 variants; x zero 0-3 x micro-batch 1, 2 x 3 recompute modes.
    assert sum(1 for _ in _space().points()) == 12 * 4 * 2 * 3 == 288


def test_the_sampler_list_is_the_spec_choice() -> None:
    with pytest.raises(SpecError) as info:
        check_sampler("cmaes", multi_objective=False)
    assert str(info.value) == f"search.sampler: unknown sampler 'cmaes' (allowed: {', '.join(SAMPLERS)})"


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("multi", [False, True], ids=["single", "pareto"])
def test_builds_or_refuses_in_one_line(name: str, multi: bool) -> None:
    if multi and name in SINGLE_ONLY:
        with pytest.raises(SpecError, match=f"^search.sampler: {name} optimises one objective") as info:
            make_sampler(name, 0, multi, _space())
        assert "\n" not in str(info.value)
        return
    check_sampler(name, multi)
    assert isinstance(make_sampler(name, 0, multi, _space()), optuna.samplers.BaseSampler)


CASES = [(n, o) for n in SAMPLERS for o in ("throughput", "pareto") if not (o == "pareto" and n in SINGLE_ONLY)]


@pytest.mark.parametrize(("name", "objective"), CASES)
def test_a_small_study_runs_to_its_budget_on_points_of_the_space(name, objective, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("autotune.study.dispatch.RayPool", LocalPool)
    store = Storage(f"sqlite:///{tmp_path / 's.db'}")
    spec = parse_spec(_spec(objective))
    driver = Driver(spec, store, RunOptions(n_trials=N_TRIALS, sampler=name, evaluator="analytic", workers=1,
                                            seed=0))
    study = driver.open(create=True)
    progress = driver.run(study)
    space = _space()
    points = [space.active_params(p) for p in space.points()]
    allowed = {json.dumps(p, sort_keys=True) for p in points}
    trials = study.get_trials(deepcopy=False)
    assert progress.done == N_TRIALS and len(trials) == N_TRIALS
    assert {t.state for t in trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    proposed = [json.dumps(t.params, sort_keys=True) for t in sorted(trials, key=lambda t: t.number)]
    assert set(proposed) <= allowed
    rows = store.evaluations(spec.name)
    assert sorted(r.trial for r in rows) == list(range(N_TRIALS))
    if name == "grid":  # exhaustive: the space's first points, in enumeration order
        assert proposed == [json.dumps(p, sort_keys=True) for p in points[:N_TRIALS]]
    store.close()
