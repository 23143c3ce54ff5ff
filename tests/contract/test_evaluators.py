"""One contract suite run over every evaluator in :data:`workers.registry.EVALUATORS`.

The contract (:mod:`autotune.evaluation`): an evaluator is an :class:`Evaluator` whose ``fidelity`` is its
registry name; it never raises for a layout that cannot run (it returns a typed result); its status is one
of :data:`STATUSES`; a result that is not ``ok`` says why; an ``ok`` result carries the worst rank's memory
under every key of :data:`MEMORY_KEYS`, and a step time where the fidelity times the step. The registry's
batch entry point turns anything an evaluator raises (a bad option) into a typed ``error`` result.

Every case is the ``tiny`` model at world 2 on the ``cpu`` GPU profile (seq 64, 4 sequences, fp32), so the
dry run (a spawned process under a fake process group) and the measured trial (2 gloo ranks on Ray) take
seconds; those two are marked slow.
"""

from __future__ import annotations

import math

import pytest

from autotune.catalog import get_gpu, get_model
from autotune.config import derive
from autotune.costmodel.estimate import MEMORY_KEYS
from autotune.evaluation import STATUSES, EvalTask, Evaluator, TrialResult
from autotune.spec import TrainingSpec
from workers.registry import EVALUATORS, evaluate_batch, get_evaluator

MODEL = get_model("tiny")
TRAIN = TrainingSpec(seq_len=64, global_batch=4, precision="fp32")
CPU = get_gpu("cpu")
#: A GPU profile no layout of the tiny model fits (1 MiB): every evaluator must report ``oom``.
SMALL = CPU.model_copy(update={"name": "cpu-1mib", "memory_gib": 2.0**-10})
#: Whether an evaluator's ok result carries a step time: the dry run measures memory only (the driver
#: adds the screen's analytic time, labelled ``time_fidelity: analytic``), so it must claim none.
TIMED = {"analytic": True, "dryrun": False, "measure": True, "faults": True}
SLOW = {"dryrun", "measure"}  # torch.distributed (fake process group) and Ray ranks


def _task(gpu=CPU, trial: int = 0, options: dict | None = None, **layout) -> EvalTask:
    cfg = derive(MODEL, TRAIN, 2, **layout)
    return EvalTask(model=MODEL, training=TRAIN, gpu=gpu, gpus_per_node=2, config=cfg, trial=trial,
                    options={"steps": 2, "step_timeout_s": 60} | (options or {}))


@pytest.fixture(params=[pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in EVALUATORS])
def name(request) -> str:
    """Each registered evaluator; the measured one joins the session's local Ray runtime."""
    if request.param == "measure":
        request.getfixturevalue("ray_local")
    return request.param


def _check_contract(name: str, result: TrialResult) -> None:
    assert isinstance(result, TrialResult)
    assert result.status in STATUSES
    assert result.fidelity == name
    assert result.wall_s >= 0
    if result.status != "ok":
        assert isinstance(result.reason, str) and result.reason.strip(), result
        return
    mem = result.metrics["memory_gib"]
    assert set(mem) == set(MEMORY_KEYS)
    assert all(math.isfinite(v) and v >= 0 for v in mem.values()), mem
    assert mem["weights"] > 0 and mem["total"] >= mem["weights"] + mem["optimizer"]
    if TIMED[name]:
        step = result.metrics["step_time_s"]
        assert math.isfinite(step) and step > 0
        assert result.metrics["tokens_per_s"] == pytest.approx(4 * 64 / step)  # sequences x seq_len / step
    else:
        assert "step_time_s" not in result.metrics


def test_every_evaluator_has_a_contract_entry() -> None:
    assert TIMED.keys() == EVALUATORS.keys()


def test_is_an_evaluator_named_for_its_fidelity(name: str) -> None:
    evaluator = get_evaluator(name)
    assert isinstance(evaluator, Evaluator)
    assert evaluator.fidelity == name


@pytest.mark.parametrize("layout", [dict(), dict(tp=2)], ids=["dp2", "tp2"])
def test_a_layout_that_fits_is_ok(name: str, layout: dict) -> None:
    result = get_evaluator(name).evaluate(_task(**layout))
    _check_contract(name, result)
    assert result.status == "ok", result.reason
    # the tiny model in fp32: 4 B per parameter, all of them on each data-parallel rank
    weights = MODEL.param_count() * 4 / 2**30
    if not layout:
        assert result.metrics["memory_gib"]["weights"] == pytest.approx(weights, rel=0.02)


def test_a_layout_over_memory_is_oom_with_the_numbers(name: str) -> None:
    result = get_evaluator(name).evaluate(_task(gpu=SMALL))
    _check_contract(name, result)
    assert result.status == "oom"
    assert "GiB" in result.reason and "usable" in result.reason


def test_context_parallel_gets_a_typed_result(name: str) -> None:
    result = get_evaluator(name).evaluate(_task(cp=2))
    _check_contract(name, result)


def test_a_bad_option_becomes_a_typed_result_in_the_batch(name: str) -> None:
    bad = {"steps": "many", "price_per_gpu_hour": "free", "faults": {"0": "melt"}}
    results = evaluate_batch(name, [_task(options=bad), _task(trial=1)])
    assert len(results) == 2
    for result in results:
        _check_contract(name, result)
    assert results[0].status == ("ok" if name == "dryrun" else "error")  # the dry run reads no option
    assert results[1].status == "ok", results[1].reason


@pytest.mark.parametrize("kind", ["oom", "nan", "error"])
def test_faults_injects_typed_failures(kind: str) -> None:
    result = evaluate_batch("faults", [_task(options={"faults": {"0": kind}})])[0]
    _check_contract("faults", result)
    assert result.status == kind and "injected" in result.reason
