"""``autotune estimate``: memory, time and verdict for one layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from autotune.config import derive
from autotune.costmodel import estimate
from autotune.errors import SpecError
from autotune.results.render import print_estimate
from autotune.spec import parse_spec, read_mapping
from autotune.study.resolve import resolve

__all__ = ["estimate_cmd", "spec_with_overrides"]


def _put(d: dict[str, Any], path: str, value: Any) -> None:
    if value is None:
        return
    *parents, leaf = path.split(".")
    for p in parents:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise SpecError(f"{p}: must be a mapping")
    d[leaf] = value


def spec_with_overrides(spec: Path | None, overrides: dict[str, Any], name: str = "estimate") -> dict[str, Any]:
    """Spec file contents (or an empty spec) with the non-None ``overrides`` (dotted paths) applied."""
    data = read_mapping(spec) if spec else {"name": name}
    if not isinstance(data.get("cluster", {}), dict):
        raise SpecError(f"cluster: must be a mapping (gpu, gpus_per_node, nodes), got {data['cluster']!r}")
    gpus = overrides.pop("gpus", None)
    gpn = overrides.get("cluster.gpus_per_node") or data.get("cluster", {}).get("gpus_per_node", 8)
    if gpus is not None:
        if not isinstance(gpn, int) or isinstance(gpn, bool) or gpn < 1:
            raise SpecError(f"cluster.gpus_per_node: must be a positive integer (got {gpn!r})")
        if gpus < 1:
            raise SpecError(f"gpus: must be >= 1 (got {gpus})")
        if gpus <= gpn:
            overrides["cluster.gpus_per_node"], overrides["cluster.nodes"] = gpus, 1
        elif gpus % gpn:
            raise SpecError(f"gpus: {gpus} is not a multiple of gpus_per_node={gpn}")
        else:
            overrides["cluster.gpus_per_node"], overrides["cluster.nodes"] = gpn, gpus // gpn
    for path, value in overrides.items():
        _put(data, path, value)
    return data


def _dryrun_text(result: dict[str, Any]) -> str:
    """The dry run's memory breakdown as aligned lines."""
    mem = result["memory_gib"]
    rows = [f"{k:12s} {mem[k]:9.2f} GiB" for k in mem]
    verdict = "fits" if result["fits"] else "does NOT fit"
    return "\n".join([f"{result['model']} on {result['gpus']} x {result['gpu']} (dry run, worst stage "
                      f"{result['worst_stage']})", *rows,
                      f"{verdict} in {result['capacity_gib']:.1f} GiB usable; "
                      f"{result['flops']:.3e} FLOPs/rank/iteration"])


def estimate_cmd(
    spec: Path | None = typer.Argument(None, help="Study spec (YAML/TOML); flags override its fields."),
    model: str | None = typer.Option(None, help="Model preset, model YAML or HF config.json."),
    gpu: str | None = typer.Option(None, help="GPU name (a100-40gb, a100-80gb, h100-sxm, h200, b200, mi300x, cpu)."),
    gpus: int | None = typer.Option(None, help="Total GPUs."),
    gpus_per_node: int | None = typer.Option(None, help="GPUs per node [default: 8]."),
    seq_len: int | None = typer.Option(None, help="Sequence length."),
    global_batch: int | None = typer.Option(None, help="Global batch in sequences."),
    precision: str | None = typer.Option(None, help="fp32 | bf16 | fp16 | fp8 [default: bf16]."),
    tokens: float | None = typer.Option(None, help="Dataset size in tokens (for training time)."),
    tp: int = typer.Option(1, help="Tensor-parallel degree."),
    pp: int = typer.Option(1, help="Pipeline-parallel degree."),
    cp: int = typer.Option(1, help="Context-parallel degree."),
    vpp: int = typer.Option(1, help="Virtual pipeline chunks per stage."),
    zero: int = typer.Option(0, help="ZeRO stage 0-3."),
    dp_shard: int | None = typer.Option(None, help="ZeRO shard group size [default: dp] (< dp: HSDP)."),
    micro_batch: int = typer.Option(1, help="Micro-batch size."),
    recompute: str = typer.Option("none", help="none | selective | full."),
    recompute_layers: int | None = typer.Option(None, help="Layers per stage to recompute (full only)."),
    sp: bool = typer.Option(False, "--sp/--no-sp", help="Sequence parallelism (needs tp > 1)."),
    profile: str | None = typer.Option(None, help="Stored calibrated profile NAME or NAME@VERSION (replaces --gpu)."),
    storage: str | None = typer.Option(None, help="SQLAlchemy URL holding --profile [default: $AUTOTUNE_STORAGE "
                                                   "or sqlite:///autotune.db]."),
    fidelity: str = typer.Option(
        "analytic", help="analytic (cost model) | dryrun (exact per-rank memory and FLOPs from a fake-tensor run)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Per-rank memory breakdown, step time, tokens/s, MFU, fit verdict and training time of one layout.

    ``--fidelity dryrun`` runs the layout at full size on fake tensors instead (seconds to a minute; needs
    torch) and prints the same memory keys plus ``flops`` and ``fidelity``.
    """
    if fidelity not in ("analytic", "dryrun"):
        raise SpecError(f"fidelity: must be analytic or dryrun (got {fidelity!r})")
    data = spec_with_overrides(spec, {
        "model": model, "cluster.gpu": gpu, "gpus": gpus, "cluster.gpus_per_node": gpus_per_node,
        "training.seq_len": seq_len, "training.global_batch": global_batch,
        "training.precision": precision, "training.tokens": tokens, "cluster.profile": profile,
    })
    data.setdefault("cluster", {}).setdefault("gpu", profile)
    problem = resolve(parse_spec(data), storage=storage)
    cfg = derive(problem.model, problem.training, problem.gpus, tp=tp, pp=pp, cp=cp, vpp=vpp, zero=zero,
                 dp_shard=dp_shard, micro_batch=micro_batch, recompute=recompute,
                 recompute_layers=recompute_layers, sequence_parallel=sp)
    if fidelity == "dryrun":
        from workers.dryrun import dryrun_estimate  # imports torch: only when asked for

        result = dryrun_estimate(problem.model, problem.training, problem.gpu, cfg)
        typer.echo(json.dumps(result, indent=2) if json_out else _dryrun_text(result))
        return
    result = estimate(problem.model, problem.training, problem.gpu, problem.cluster, cfg)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        print_estimate(result)
