"""Reading a study back: the best layout that fits, runners-up and why they lost, rejection counts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autotune.costmodel.reliability import EXPECTED_KEYS
from autotune.errors import AutotuneError
from autotune.results.reproduce import estimate_command
from autotune.search.objectives import Objective
from autotune.spec import FIDELITIES, parse_spec
from autotune.store.storage import EvaluationRecord, Storage
from autotune.study.resolve import study_stack

__all__ = ["FIDELITY_RANK", "best_report", "why_lost", "part_deltas", "ep_bought", "pareto_front",
           "fidelity_comparison", "fidelity_labels"]

#: Higher is more trustworthy: ``best`` ranks by the highest fidelity that has a successful result.
FIDELITY_RANK = {name: rank for rank, name in enumerate(FIDELITIES)}


def fidelity_labels(fidelity: str, metrics: dict[str, Any]) -> dict[str, str | None]:
    """How each half of an evaluation's figures was obtained: ``memory_fidelity`` and ``time_fidelity``.

    Memory comes from the evaluator that wrote the row (``analytic``: the cost model; ``dryrun``: exact
    per-rank bytes on fake tensors; ``measure``: the memory tracker's peak over a real step). Time is the
    evaluator's own unless the metrics say otherwise (a dry run times nothing: its step time, tokens/s
    and MFU are the cost model's, ``time_fidelity: analytic``). A half the row has no figures for is
    None (a layout rejected before evaluation, a measured trial that ended before its timed steps).
    """
    memory = fidelity if metrics.get("memory_gib") else None
    time = metrics.get("time_fidelity", fidelity) if metrics.get("step_time_s") is not None else None
    return {"memory_fidelity": memory, "time_fidelity": time}


def part_deltas(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """``b - a`` for every part of two breakdowns (time or memory), in ``a``'s order; a part one side lacks
    counts as 0 there."""
    return {k: b.get(k, 0.0) - a.get(k, 0.0) for k in dict.fromkeys([*a, *b])}


def why_lost(best: dict[str, Any], other: dict[str, Any]) -> str:
    """The time term by which ``other`` is slowest relative to ``best`` (per optimizer step)."""
    a, b = best.get("time_breakdown_s", {}), other.get("time_breakdown_s", {})
    if not a or not b:
        return f"step {other['step_time_s']:.3f} s vs {best['step_time_s']:.3f} s"
    deltas = part_deltas(a, b)
    term = max(deltas, key=lambda k: deltas[k])
    delta = deltas[term]
    slower = other["step_time_s"] / best["step_time_s"] - 1 if best["step_time_s"] else 0.0
    return f"{term} +{delta:.3f} s/step ({slower:+.1%} step time)"


def ep_bought(unique: list[EvaluationRecord], storage: Storage, study: str,
              command: Callable[[dict[str, Any]], str | None]) -> dict[str, Any] | None:
    """What the winner's expert parallelism bought (None unless the winner ``unique[0]`` has ep > 1).

    ``unique`` holds a study's fitting rows at its top fidelity, best first, one per layout. The baseline is the
    fastest of them with ep = 1, else with the smallest ep below the winner's that has a fitting layout;
    ``step_time_s``, ``time_breakdown_s`` and ``memory_gib`` are winner minus baseline (negative: what the
    winner's ep saved), ``lost_by`` is :func:`why_lost` of the baseline. When no ep = 1 layout fits,
    ``ep1_rejected`` counts the ep = 1 rows and their most common rejection reason. ``command(layout)`` gives
    the baseline's ``estimate_command``.
    """
    best = unique[0]
    ep = best.layout.get("ep", 1)
    if ep <= 1:
        return None
    eps = sorted({r.layout.get("ep", 1) for r in unique if r.layout.get("ep", 1) < ep})
    out: dict[str, Any] = {"ep": ep, "versus_ep": eps[0] if eps else None}
    if not eps or eps[0] != 1:
        total, reasons = storage.rejection_counts_where(study, lambda layout: layout.get("ep", 1) == 1)
        top = reasons.most_common(1)
        out["ep1_rejected"] = {"count": total, "top_reason": top[0][0] if top else None,
                               "top_reason_count": top[0][1] if top else 0}
    if not eps:
        return out | {"baseline": None}
    base = next(r for r in unique if r.layout.get("ep", 1) == eps[0])
    b, m = best.metrics, base.metrics
    return out | {
        "baseline": {"trial": base.trial, "config": base.layout, "metrics": _metrics_view(m),
                     "estimate_command": command(base.layout)},
        "step_time_s": b["step_time_s"] - m["step_time_s"],
        "time_breakdown_s": part_deltas(m.get("time_breakdown_s") or {}, b.get("time_breakdown_s") or {}),
        "memory_gib": part_deltas(m["memory_gib"], b["memory_gib"]),
        "lost_by": why_lost(b, m),
    }


def _metrics_view(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("step_time_s", "tokens_per_s", "mfu", "hfu", "tflops_per_gpu", "training_days", "gpu_hours", "cost",
            "gpus", *EXPECTED_KEYS, "reliability")
    return {k: m[k] for k in keys if k in m} | {"memory_gib": m.get("memory_gib"),
                                                 "time_breakdown_s": m.get("time_breakdown_s")}


def pareto_front(rows: list[EvaluationRecord], objective: Objective) -> list[EvaluationRecord]:
    """Non-dominated successful rows under ``objective`` (all minimised or maximised per direction)."""
    sign = [1.0 if d == "minimize" else -1.0 for d in objective.directions]
    pts = [(tuple(s * v for s, v in zip(sign, objective.values(r.metrics), strict=True)), r) for r in rows]
    front = [r for p, r in pts
             if not any(all(x <= y for x, y in zip(q, p, strict=True)) and q != p for q, _ in pts)]
    return sorted(front, key=lambda r: objective.values(r.metrics))


def fidelity_comparison(top: list[EvaluationRecord], lower: list[EvaluationRecord]) -> list[dict[str, Any]]:
    """Where cheaper fidelities disagree with the best one: step-time and memory ratios per layout."""
    out = []
    for r in top:
        for other in (o for o in lower if o.layout == r.layout):
            m, o = r.metrics, other.metrics
            out.append({
                "trial": r.trial, "config": r.layout, "fidelity": r.fidelity, "versus": other.fidelity,
                "step_time_ratio": (o["step_time_s"] / m["step_time_s"]) if m.get("step_time_s") and
                o.get("step_time_s") else None,
                "memory_ratio": (o["memory_gib"]["total"] / m["memory_gib"]["total"]) if m.get("memory_gib") and
                o.get("memory_gib") else None,
            })
    return out


def best_report(storage: Storage, study: str, objective: Objective, top: int = 5) -> dict[str, Any]:
    """The ``autotune best --json`` object."""
    total, reasons = storage.rejection_counts(study)
    if not total:
        raise AutotuneError(f"study: {study!r} has no evaluations (see `autotune studies`)")
    ok = [r for r in storage.evaluations(study, status="ok") if r.metrics.get("fits", True)]
    out: dict[str, Any] = {
        "study": study,
        "objective": objective.name,
        "evaluations": total,
        "infeasible": {"count": sum(reasons.values()), "reasons": dict(reasons.most_common())},
    }
    if not ok:
        return out | {"stack": None, "config": None, "metrics": None, "fidelity": None, "memory_fidelity": None,
                      "time_fidelity": None, "trial": None, "estimate_command": None, "runners_up": []}
    top_fid = max(FIDELITY_RANK.get(r.fidelity, 0) for r in ok)
    ranked = [r for r in ok if FIDELITY_RANK.get(r.fidelity, 0) == top_fid]
    reverse = objective.directions[0] == "maximize"
    ranked.sort(key=lambda r: objective.values(r.metrics)[0], reverse=reverse)
    unique: list[EvaluationRecord] = []
    seen: set[str] = set()
    for r in ranked:
        key = repr(sorted(r.layout.items()))
        if key not in seen:
            seen.add(key)
            unique.append(r)
    best = unique[0]
    saved = storage.study_spec(study)
    spec = None if saved is None else parse_spec(saved)
    stack = None if spec is None else study_stack(spec)

    def command(layout: dict[str, Any]) -> str | None:
        return None if spec is None else estimate_command(spec, layout, storage.display_url, stack)

    lower = [r for r in ok if FIDELITY_RANK.get(r.fidelity, 0) < top_fid]
    out |= {
        "stack": stack,
        "config": best.layout,
        "metrics": _metrics_view(best.metrics),
        "fidelity": best.fidelity,
        **fidelity_labels(best.fidelity, best.metrics),
        "trial": best.trial,
        "estimate_command": command(best.layout),
        "runners_up": [{"trial": r.trial, "config": r.layout, "fidelity": r.fidelity,
                        "estimate_command": command(r.layout),
                        **fidelity_labels(r.fidelity, r.metrics),
                        "metrics": _metrics_view(r.metrics), "lost_by": why_lost(best.metrics, r.metrics)}
                       for r in unique[1:top + 1]],
    }
    bought = ep_bought(unique, storage, study, command)
    if bought is not None:
        out["ep_bought"] = bought
    if lower:
        same = [r for r in lower if r.layout == best.layout]
        if same:
            out["lower_fidelity"] = {"fidelity": same[0].fidelity, **fidelity_labels(same[0].fidelity, same[0].metrics),
                                     "metrics": _metrics_view(same[0].metrics)}
        out["fidelity_comparison"] = fidelity_comparison(unique[:top + 1], lower)
    batches = sorted({r.layout["global_batch"] for r in unique if "global_batch" in r.layout})
    if batches:  # a study over several global batch sizes: the best of each (``unique`` is best first)
        firsts = {b: next(r for r in unique if r.layout.get("global_batch") == b) for b in batches}
        out["by_global_batch"] = {str(b): {"trial": r.trial, "config": r.layout, "metrics": _metrics_view(r.metrics),
                                           "estimate_command": command(r.layout)} for b, r in firsts.items()}
    if objective.multi:
        out["pareto_front"] = [{"trial": r.trial, "config": r.layout, "values": dict(zip(
            objective.keys, objective.values(r.metrics), strict=True))} for r in pareto_front(unique, objective)]
    return out
