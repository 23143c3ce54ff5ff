"""``best`` on an MoE study says what the winner's expert parallelism bought (autotune.results.best.ep_bought).

The stored rows are written by hand (throughput objective, Mixtral 8x7B on 16 GPUs at 64 x 4,096 tokens per
step: tokens/s = 262,144 / step s), so the baseline each study must pick and every difference below is
worked out from the tables in the test comments.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from autotune.catalog import get_model
from autotune.config import derive
from autotune.results import render
from autotune.results.best import best_report
from autotune.search.objectives import objective_for
from autotune.spec import TrainingSpec, parse_spec
from autotune.store.storage import EvaluationRecord, Storage

SPEC = {"name": "moe-hand", "model": "mixtral-8x7b", "cluster": {"gpu": "h100-sxm", "gpus_per_node": 8, "nodes": 2},
        "training": {"seq_len": 4096, "global_batch": 64}, "search": {"space": "megatron"}}
TOKENS = 64 * 4096
MEMORY_KEYS = ("weights", "gradients", "optimizer", "activations", "other")


def _layout(**kw) -> dict:
    cfg = derive(get_model("mixtral-8x7b"), TrainingSpec(seq_len=4096, global_batch=64), 16, **kw)
    return dataclasses.asdict(cfg)


def _ok(trial: int, layout: dict, step: float, time: dict, memory: tuple[float, ...]) -> EvaluationRecord:
    mem = dict(zip(MEMORY_KEYS, memory, strict=True)) | {"total": sum(memory)}
    metrics = {"step_time_s": step, "tokens_per_s": TOKENS / step, "mfu": 0.3, "fits": True,
               "time_breakdown_s": time, "memory_gib": mem}
    return EvaluationRecord(study="moe-hand", trial=trial, fidelity="analytic", layout=layout, metrics=metrics,
                            status="ok")


def _rejected(trial: int, layout: dict, status: str, kind: str, reason: str) -> EvaluationRecord:
    return EvaluationRecord(study="moe-hand", trial=trial, fidelity="analytic", layout=layout, metrics={},
                            status=status, reason=reason, reason_kind=kind)


#     trial layout                step s  compute tp_comm ep_comm dp_exp | weights grads optim activ other
# W   0     ep 8                  10.0    8.0     0       1.5     0.5    | 6       12    9     40    1.5 (68.5)
# A   1     ep 1, tp 2 sp         12.5    9.0     2.0     0       1.5    | 12      24    9     25    1.5 (71.5)
# B   2     ep 1, tp 4 sp         14.0    (slower than A: not the baseline)
# C   3     ep 2                  11.0    (faster than A, but ep 2: the baseline is ep 1 while one fits)
# D   4,5   ep 1, pp 2 / pp 4     infeasible, memory
# E   6     ep 1, tp 2, no sp     unsupported
WINNER = _ok(0, _layout(ep=8, zero=1), 10.0, {"compute": 8.0, "tp_comm": 0.0, "ep_comm": 1.5, "dp_comm_exposed": 0.5},
             (6.0, 12.0, 9.0, 40.0, 1.5))
A = _ok(1, _layout(ep=1, tp=2, sequence_parallel=True, zero=1), 12.5,
        {"compute": 9.0, "tp_comm": 2.0, "ep_comm": 0.0, "dp_comm_exposed": 1.5}, (12.0, 24.0, 9.0, 25.0, 1.5))
B = _ok(2, _layout(ep=1, tp=4, sequence_parallel=True, zero=1), 14.0,
        {"compute": 9.5, "tp_comm": 3.0, "ep_comm": 0.0, "dp_comm_exposed": 1.5}, (6.0, 12.0, 9.0, 20.0, 1.5))
C = _ok(3, _layout(ep=2, zero=1), 11.0, {"compute": 8.5, "tp_comm": 0.0, "ep_comm": 1.0, "dp_comm_exposed": 1.5},
        (20.0, 40.0, 9.0, 5.0, 1.5))
D = [_rejected(4, _layout(ep=1, pp=2, zero=1), "infeasible", "memory", "memory: 120.0 GiB > 75.6 GiB usable"),
     _rejected(5, _layout(ep=1, pp=4, zero=1), "infeasible", "memory", "memory: 90.0 GiB > 75.6 GiB usable")]
E = _rejected(6, {**_layout(ep=1, zero=1), "tp": 2}, "unsupported", "megatron: tp=N with sequence_parallel=False",
              "megatron: tp=2 with sequence_parallel=False is not supported")


def _report(tmp_path, rows: list[EvaluationRecord]) -> dict:
    store = Storage(f"sqlite:///{tmp_path / 'moe.db'}")
    store.add_study("moe-hand", SPEC, "test", "test")
    store.add_evaluations(rows)
    return best_report(store, "moe-hand", objective_for(parse_spec(SPEC)))


def test_the_fastest_fitting_ep1_layout_and_what_ep8_bought(tmp_path):
    report = _report(tmp_path, [WINNER, A, B, C, *D, E])
    assert report["trial"] == 0
    bought = report["ep_bought"]
    assert (bought["ep"], bought["versus_ep"], bought["baseline"]["trial"]) == (8, 1, 1)
    assert "ep1_rejected" not in bought
    assert bought["step_time_s"] == pytest.approx(10.0 - 12.5)
    # winner - baseline per part: compute 8 - 9, tp_comm 0 - 2, ep_comm 1.5 - 0, dp_comm_exposed 0.5 - 1.5
    assert bought["time_breakdown_s"] == pytest.approx({"compute": -1.0, "tp_comm": -2.0, "ep_comm": 1.5,
                                                        "dp_comm_exposed": -1.0})
    # weights 6 - 12, gradients 12 - 24, optimizer 9 - 9, activations 40 - 25, other 0; total 68.5 - 71.5
    assert bought["memory_gib"] == pytest.approx({"weights": -6.0, "gradients": -12.0, "optimizer": 0.0,
                                                  "activations": 15.0, "other": 0.0, "total": -3.0})
    # the ep 1 layout's largest excess is tp_comm, 2 s; 12.5 / 10 - 1 = +25 %
    assert bought["lost_by"] == "tp_comm +2.000 s/step (+25.0% step time)"
    assert "--ep 1" in bought["baseline"]["estimate_command"] and "--tp 2" in bought["baseline"]["estimate_command"]
    json.dumps(report)  # `best --json` and the service's /best serve this object as it is
    with render.console.capture() as cap:
        render.print_best(report)
    text = cap.get()
    assert "What ep=8 bought over the fastest ep=1 layout (trial" in " ".join(text.split())
    assert "-2.500" in text and "+15.00" in text and "-3.00" in text


def test_no_ep1_layout_fits_names_the_top_reason_and_compares_the_next_smaller_ep(tmp_path):
    report = _report(tmp_path, [WINNER, C, *D, E])
    bought = report["ep_bought"]
    # ep 1 rows: 2 memory rejections, 1 unsupported -> 3 rows, "infeasible: memory" twice
    assert bought["ep1_rejected"] == {"count": 3, "top_reason": "infeasible: memory", "top_reason_count": 2}
    assert (bought["versus_ep"], bought["baseline"]["trial"]) == (2, 3)
    assert bought["step_time_s"] == pytest.approx(10.0 - 11.0)
    assert bought["memory_gib"]["weights"] == pytest.approx(6.0 - 20.0)
    with render.console.capture() as cap:
        render.print_best(report)
    text = " ".join(cap.get().split())
    assert "No ep=1 layout fits: 3 evaluated, most often rejected by infeasible: memory (2)" in text
    assert "What ep=8 bought over the fastest ep=2 layout (trial 3" in text


def test_no_smaller_ep_fits(tmp_path):
    bought = _report(tmp_path, [WINNER, *D])["ep_bought"]
    assert bought["baseline"] is None and bought["versus_ep"] is None
    assert bought["ep1_rejected"]["count"] == 2


def test_an_ep1_winner_has_nothing_to_explain(tmp_path):
    assert "ep_bought" not in _report(tmp_path, [A, B, *D])
