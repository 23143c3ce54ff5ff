"""A study as one self-contained HTML page: plotly figures with plotly.js inlined, no network needed.

Sections: best layout, Pareto fronts (tokens/s vs memory; time-to-train vs GPUs when the study spans
several cluster sizes), memory and step-time breakdowns of the top layouts, optimisation history,
parameter importances (Optuna's PED-ANOVA on the study's Optuna trials), rejection reasons and a
sortable table of every evaluation. Every string that comes from the user or the database goes
through :func:`html.escape` (plotly renders its labels as HTML too).
"""

from __future__ import annotations

import html
import re
import warnings
from collections import Counter
from typing import Any

import optuna
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from autotune.costmodel.estimate import MEMORY_KEYS
from autotune.results.best import FIDELITY_RANK, best_report, fidelity_labels
from autotune.results.render import fidelity_summary, layout_summary
from autotune.search.objectives import Objective, objective_for
from autotune.spec import parse_spec
from autotune.store.storage import EvaluationRecord, Storage
from autotune.study.resolve import resolve

__all__ = ["render_report", "default_filename", "MIN_IMPORTANCE_TRIALS"]

MIN_IMPORTANCE_TRIALS = 10
"""Completed Optuna trials needed before parameter importances are computed."""
TOP = 10
"""Layouts shown in the memory and time breakdowns."""
_MEMORY_PARTS = tuple(k for k in MEMORY_KEYS if k != "total")
_CONFIG = {"displaylogo": False, "responsive": True}
_CSS = """body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{margin-bottom:4px}.sub{color:#666;margin-top:0}section{margin:28px 0}.card{border:1px solid #ddd;
border-radius:8px;padding:12px 18px;background:#fafafa}.card dl{display:grid;grid-template-columns:repeat(4,1fr);
gap:6px 18px;margin:8px 0}.card dt{color:#666;font-size:12px}.card dd{margin:0;font-weight:600}
.note{color:#8a5300}table{border-collapse:collapse;font-size:12px;width:100%}th,td{border-bottom:1px solid #eee;
padding:3px 6px;text-align:left}th{cursor:pointer;background:#f3f3f3;position:sticky;top:0}th:hover{background:#e6e6e6}
code{font-size:13px}"""
_SORT_JS = """document.querySelectorAll("table.sortable th").forEach((th, i) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], asc = th.dataset.dir !== "asc";
  th.dataset.dir = asc ? "asc" : "desc";
  const key = r => { const c = r.cells[i], n = parseFloat(c.dataset.v); return isNaN(n) ? c.textContent : n; };
  const rows = [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b);
    const d = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return asc ? d : -d;
  });
  rows.forEach(r => body.appendChild(r));
}));"""


def default_filename(study: str) -> str:
    """``<study>-report.html`` with the name reduced to letters, digits, ``._-`` (no path traversal)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", study).strip("._") or "study"
    return f"{safe}-report.html"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _summary(layout: dict[str, Any]) -> str:
    """The layout in one line; a rejected proposal (no derived dp) as its raw ``key=value`` pairs."""
    if "dp" not in layout:
        return " ".join(f"{k}={v}" for k, v in sorted(layout.items()))
    return layout_summary(layout) + (f" nodes={layout['nodes']}" if "nodes" in layout else "")


def _fig(fig: go.Figure, div_id: str, height: int = 380) -> str:
    fig.update_layout(template="plotly_white", margin={"l": 60, "r": 20, "t": 40, "b": 50}, height=height)
    return fig.to_html(full_html=False, include_plotlyjs=False, config=_CONFIG, div_id=div_id,
                       default_height=f"{height}px")


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _best_card(report: dict[str, Any]) -> str:
    if report["config"] is None:
        return _note("No layout fits: every evaluated layout was rejected (see the reasons below).")
    m = report["metrics"]
    items = {"trial": report["trial"], "fidelity": fidelity_summary(report), "GPUs": m.get("gpus"),
             "tokens/s": f"{m.get('tokens_per_s', 0):,.0f}", "step time": f"{m.get('step_time_s', 0):.3f} s",
             "MFU": f"{m.get('mfu', 0):.1%}", "memory / rank": f"{(m.get('memory_gib') or {}).get('total', 0):.1f} GiB",
             "training days": f"{m['training_days']:.1f}" if m.get("training_days") is not None else "-"}
    if m.get("expected_training_days") is not None:
        items |= {"expected days (failures)": f"{m['expected_training_days']:.1f}",
                  "goodput": f"{m['goodput']:.1%}" if m.get("goodput") is not None else "-"}
    cells = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in items.items())
    return f'<div class="card"><code>{_e(_summary(report["config"]))}</code><dl>{cells}</dl></div>'


def _front(points: list[tuple[float, float, EvaluationRecord]]) -> list[tuple[float, float, EvaluationRecord]]:
    """Points (x to minimise, y to maximise) not dominated by another."""
    front, best = [], float("-inf")
    for x, y, r in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y, r))
            best = y
    return front


def _scatter(points, front, xlabel: str, ylabel: str, div_id: str) -> str:
    fig = go.Figure()
    fig.add_scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="markers", name="fits",
                    marker={"color": "#9bb"}, text=[_e(f"#{r.trial} {_summary(r.layout)}") for *_, r in points])
    fig.add_scatter(x=[p[0] for p in front], y=[p[1] for p in front], mode="lines+markers", name="Pareto front",
                    line={"shape": "hv", "color": "#d62728"},
                    text=[_e(f"#{r.trial} {_summary(r.layout)}") for *_, r in front])
    fig.update_layout(xaxis_title=xlabel, yaxis_title=ylabel)
    return _fig(fig, div_id)


def _pareto(ok: list[EvaluationRecord]) -> str:
    pts = [((r.metrics.get("memory_gib") or {}).get("total"), r.metrics.get("tokens_per_s"), r) for r in ok]
    pts = [p for p in pts if p[0] is not None and p[1] is not None]
    if not pts:
        return _note("No successful layout to plot.")
    out = _scatter(pts, _front(pts), "memory per rank (GiB)", "tokens/s", "fig-pareto-memory")
    sizes = {r.metrics.get("gpus") for r in ok}
    days = [(r.metrics["gpus"], r.metrics["training_days"], r) for r in ok
            if r.metrics.get("gpus") and r.metrics.get("training_days") is not None]
    expected = [(x, r.metrics["expected_training_days"], r) for x, _, r in days
                if r.metrics.get("expected_training_days") is not None]
    if len(sizes) > 1 and days and not expected:
        front = [(x, -y, r) for x, y, r in _front([(x, -y, r) for x, y, r in days])]
        out += _scatter(days, front, "GPUs", "time to train (days)", "fig-pareto-gpus")
    elif len(sizes) > 1 and expected:
        # time to train over cluster sizes: ideal (steps x step time) and expected with failures, checkpoints
        # and restarts (autotune.costmodel.reliability); each front is the fastest layout per size that no
        # smaller cluster beats
        fig = go.Figure()
        for name, pts, color, dash in (("ideal (no failures)", days, "#1f77b4", "dash"),
                                       ("expected with failures", expected, "#d62728", "solid")):
            front = [(x, -y, r) for x, y, r in _front([(x, -y, r) for x, y, r in pts])]
            fig.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name=f"{name}: layouts",
                            marker={"color": color, "opacity": 0.25},
                            text=[_e(f"#{r.trial} {_summary(r.layout)}") for *_, r in pts])
            hover = [_e(f"#{r.trial} {_summary(r.layout)}; ideal {r.metrics['training_days']:.1f} d, expected "
                        f"{r.metrics.get('expected_training_days', float('nan')):.1f} d") for *_, r in front]
            fig.add_scatter(x=[p[0] for p in front], y=[p[1] for p in front], mode="lines+markers",
                            name=f"{name}: Pareto front", line={"shape": "hv", "color": color, "dash": dash},
                            text=hover)
        fig.update_layout(xaxis_title="GPUs", yaxis_title="time to train (days)", xaxis_type="log")
        out += _fig(fig, "fig-pareto-gpus")
    return out


def _stacked(rows: list[EvaluationRecord], parts: dict[str, list[float]], ylabel: str, div_id: str) -> str:
    labels = [f"#{r.trial}" for r in rows]
    hover = [_e(_summary(r.layout)) for r in rows]
    fig = go.Figure([go.Bar(name=_e(k), x=labels, y=v, hovertext=hover) for k, v in parts.items()])
    fig.update_layout(barmode="stack", yaxis_title=ylabel, xaxis_title="trial (best first)")
    return _fig(fig, div_id)


def _from(report: dict[str, Any], half: str) -> str:
    """`` (memory: dryrun)``: the fidelity of the best layout's memory or time figures, for a section title."""
    fid = report.get(f"{half}_fidelity")
    return f" ({half}: {fid})" if fid else ""


def _breakdowns(top: list[EvaluationRecord]) -> tuple[str, str]:
    if not top:
        return _note("No successful layout."), _note("No successful layout.")
    mem = {k: [(r.metrics.get("memory_gib") or {}).get(k, 0.0) for r in top] for k in _MEMORY_PARTS}
    terms = list(dict.fromkeys(k for r in top for k in r.metrics.get("time_breakdown_s") or {}))
    tim = {k: [(r.metrics.get("time_breakdown_s") or {}).get(k, 0.0) for r in top] for k in terms}
    return (_stacked(top, mem, "GiB per rank (worst rank)", "fig-memory"),
            _stacked(top, tim, "seconds per step", "fig-time"))


def _history(ok: list[EvaluationRecord], objective: Objective) -> str:
    if not ok:
        return _note("No successful trial yet.")
    key = objective.keys[0]
    pts = sorted((r.trial, float(r.metrics[key])) for r in ok if r.metrics.get(key) is not None)
    better = max if objective.directions[0] == "maximize" else min
    best, run = [], None
    for _, v in pts:
        run = v if run is None else better(run, v)
        best.append(run)
    fig = go.Figure([go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name="trial"),
                     go.Scatter(x=[p[0] for p in pts], y=best, mode="lines", name="best so far",
                                line={"shape": "hv"})])
    fig.update_layout(xaxis_title="trial", yaxis_title=_e(key))
    return _fig(fig, "fig-history")


def _importances(store: Storage, study: str) -> str:
    try:
        ostudy = optuna.load_study(study_name=study, storage=store.optuna())
    except KeyError:
        return _note(f"Parameter importances cannot be computed: no Optuna study named {study!r} in the database.")
    done = ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if done and all("evaluation" in tr.user_attrs for tr in done):
        return _note(f"Parameter importances are not computed: the analytic stage scored every layout, and its "
                     f"Optuna trials are only the {len(done)} best (a sample of winners says nothing of which "
                     "parameters matter); the table below lists every layout.")
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return _note(f"Parameter importances cannot be computed: {len(done)} completed trial(s), "
                     f"at least {MIN_IMPORTANCE_TRIALS} needed.")
    target = None
    if len(ostudy.directions) > 1:  # rank by the first objective; PED-ANOVA treats a target as lower-is-better
        sign = -1.0 if ostudy.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        target = lambda t: sign * t.values[0]  # noqa: E731
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*low `target` values")
            imp = optuna.importance.get_param_importances(
                ostudy, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target=target)
    except (RuntimeError, ValueError) as e:
        return _note(f"Parameter importances cannot be computed: {e}")
    if not imp:
        return _note("Parameter importances cannot be computed: no parameter varies across completed trials.")
    names = list(imp)[::-1]
    fig = go.Figure(go.Bar(x=[imp[n] for n in names], y=[_e(n) for n in names], orientation="h"))
    fig.update_layout(xaxis_title="importance (PED-ANOVA, first objective)", yaxis_automargin=True)
    return _fig(fig, "fig-importance", height=max(260, 40 * len(names)))


def _reasons(report: dict[str, Any]) -> str:
    reasons = Counter(report["infeasible"]["reasons"])
    if not reasons:
        return _note("No layout was rejected.")
    items = reasons.most_common()[::-1]
    fig = go.Figure(go.Bar(x=[n for _, n in items], y=[_e(k[:90]) for k, _ in items], orientation="h",
                           hovertext=[_e(k) for k, _ in items]))
    fig.update_layout(xaxis_title="layouts", yaxis_automargin=True)
    return _fig(fig, "fig-reasons", height=max(260, 34 * len(items)))


def _table(rows: list[EvaluationRecord]) -> str:
    def num(v: Any, fmt: str) -> str:
        return '<td data-v="-Infinity">-</td>' if v is None else f'<td data-v="{float(v)!r}">{v:{fmt}}</td>'

    head = ("trial", "status", "fidelity", "layout", "GPUs", "tokens/s", "step s", "memory GiB", "MFU",
            "days", "reason")
    body = []
    for r in rows:
        m = r.metrics
        fidelity = fidelity_summary(fidelity_labels(r.fidelity, m))
        body.append(f'<tr><td data-v="{r.trial}">{r.trial}</td><td>{_e(r.status)}</td><td>{_e(fidelity)}</td>'
                    f"<td>{_e(_summary(r.layout))}</td>{num(m.get('gpus'), 'd')}{num(m.get('tokens_per_s'), ',.0f')}"
                    f"{num(m.get('step_time_s'), '.3f')}{num((m.get('memory_gib') or {}).get('total'), '.1f')}"
                    f"{num(m.get('mfu'), '.1%')}{num(m.get('training_days'), '.1f')}<td>{_e(r.reason or '')}</td></tr>")
    ths = "".join(f"<th>{h}</th>" for h in head)
    return (f'<p>Click a column header to sort.</p><table class="sortable"><thead><tr>{ths}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def render_report(store: Storage, study: str) -> str:
    """The HTML report of ``study`` (raises StorageError for an unknown study, AutotuneError if it is empty)."""
    saved = store.require_spec(study)
    spec = parse_spec(saved)
    objective = objective_for(spec)
    problem = resolve(spec, storage=store.url)
    report = best_report(store, study, objective, top=TOP - 1)
    rows = store.evaluations(study)
    ok = [r for r in rows if r.status == "ok" and r.metrics.get("fits", True)]
    by_trial = {(r.trial, r.fidelity): r for r in ok}
    top_trials = ([report["trial"]] if report["trial"] is not None else []) + [u["trial"] for u in report["runners_up"]]
    fid = report["fidelity"]
    top = [by_trial[(t, fid)] for t in top_trials if (t, fid) in by_trial]
    top_fid = max((FIDELITY_RANK.get(r.fidelity, 0) for r in ok), default=0)
    memory_html, time_html = _breakdowns(top)
    sizes = "/".join(str(n * spec.cluster.gpus_per_node) for n in spec.cluster.node_counts)
    sub = (f"{problem.model.name} on {sizes} x {spec.cluster.gpu} · objective {objective.name} · "
           f"{report['evaluations']} evaluations, {len(ok)} fit, {report['infeasible']['count']} rejected")
    sections = [
        _section("Best layout", _best_card(report)),
        _section("Pareto front", _pareto([r for r in ok if FIDELITY_RANK.get(r.fidelity, 0) == top_fid])),
        _section(f"Memory breakdown, top {len(top)} layouts{_from(report, 'memory')}", memory_html),
        _section(f"Step-time breakdown, top {len(top)} layouts{_from(report, 'time')}", time_html),
        _section("Optimisation history", _history(ok, objective)),
        _section("Parameter importances", _importances(store, study)),
        _section("Rejected layouts by reason", _reasons(report)),
        _section("All evaluations", _table(rows)),
    ]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>autotune: {_e(study)}</title>'
            f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body>"
            f'<h1>autotune study {_e(study)}</h1><p class="sub">{_e(sub)}</p>{"".join(sections)}'
            f"<script>{_SORT_JS}</script></body></html>\n")
