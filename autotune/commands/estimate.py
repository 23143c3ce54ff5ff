"""``autotune estimate``: memory, time and verdict for one layout.

The command takes a flag for every field of :class:`~autotune.config.ParallelConfig` that is not derived
(the names in :data:`autotune.config.DERIVE_KEYS`) and for every field of
:class:`~autotune.spec.TrainingSpec`; each flag is the field name with dashes (``--pp-schedule``,
``--grad-buffers``, booleans as ``--X/--no-X``). A flag left out keeps the SPEC file's value, else the
field's default. :mod:`autotune.results.reproduce` writes the same flags to print a stored layout's command.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, get_args

import typer
from pydantic import ValidationError

from autotune.config import PP_SCHEDULES, RECOMPUTE_MODES, ParallelConfig, derive, layout_kwargs
from autotune.costmodel import estimate
from autotune.errors import InfeasibleConfig, SpecError
from autotune.overrides import spec_with_overrides
from autotune.results.render import print_estimate
from autotune.results.reproduce import flag
from autotune.spec import ModelSpec, ReliabilitySpec, TrainingSpec, format_validation_error, parse_spec
from autotune.study.dispatch import data_plane
from autotune.study.resolve import Problem, resolve

__all__ = ["estimate_cmd"]

#: Cluster flags (parameter name -> spec path); ``gpus`` is split into gpus_per_node x nodes.
CLUSTER_FLAGS = {"gpu": "cluster.gpu", "gpus": "gpus", "gpus_per_node": "cluster.gpus_per_node",
                 "price_per_gpu_hour": "cluster.price_per_gpu_hour", "profile": "cluster.profile"}


def _dryrun_text(result: dict[str, Any]) -> str:
    """The dry run's memory breakdown as aligned lines."""
    mem = result["memory_gib"]
    rows = [f"{k:12s} {mem[k]:9.2f} GiB" for k in mem]
    verdict = "fits" if result["fits"] else "does NOT fit"
    return "\n".join([f"{result['model']} on {result['gpus']} x {result['gpu']} (dry run, worst stage "
                      f"{result['worst_stage']})", *rows,
                      f"{verdict} in {result['capacity_gib']:.1f} GiB usable; "
                      f"{result['flops']:.3e} FLOPs/rank/iteration"])


def _training_help(name: str) -> str:
    """Help for a TrainingSpec flag: the field's description, its choices and its default."""
    field = TrainingSpec.model_fields[name]
    choices = [str(c) for c in get_args(field.annotation) if isinstance(c, str)]
    text = field.description or name
    text += f" ({' | '.join(choices)})" if choices else ""
    return text + ("" if field.default is None or field.is_required() else f" [default: {field.default}]")


def _model_ref(model: str | None) -> str | ModelSpec | None:
    """``--model``: a preset or path as given, or an inline JSON object of ModelSpec fields."""
    if model is None or not model.lstrip().startswith("{"):
        return model
    try:
        return ModelSpec.model_validate(json.loads(model))
    except json.JSONDecodeError as e:
        raise SpecError(f"--model: inline model is not a valid JSON object: {e.msg} (column {e.colno})") from e
    except ValidationError as e:
        raise SpecError(f"--model: {format_validation_error(e, ModelSpec)}") from e


def _name_flag(err: SpecError, given: dict[str, str]) -> SpecError:
    """``err`` with its leading spec path replaced by the flag that set it (``--seq-len: ...``)."""
    path, sep, rest = str(err).partition(": ")
    for prefix, name in given.items():
        if sep and path == prefix:
            return SpecError(f"{name}: {rest}")
        if sep and path.startswith(prefix + "."):
            return SpecError(f"{name} ({path}): {rest}")
    return err


def _flag_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """Spec overrides (dotted path -> value) of the model, cluster and training flags."""
    out = {"model": _model_ref(params["model"])}
    out |= {path: params[name] for name, path in CLUSTER_FLAGS.items()} | _reliability_overrides(params)
    return out | {f"training.{name}": params[name] for name in TrainingSpec.model_fields}


def _reliability_help(name: str) -> str:
    """Help for a ReliabilitySpec flag: the field's description and its default."""
    field = ReliabilitySpec.model_fields[name]
    default = f"{field.default:.4g}" if isinstance(field.default, float) else field.default
    return (field.description or name) + ("" if field.default is None else f" [default: {default}]")


def _reliability_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """Spec overrides of the reliability flags: ``--no-reliability`` -> ``cluster.reliability: off``;
    ``--reliability`` -> the defaults (replacing a spec's ``off``); each field flag -> its field."""
    fields = {f"cluster.reliability.{k}": params[k] for k in ReliabilitySpec.model_fields if params[k] is not None}
    if params["reliability"] is False and fields:
        named = ", ".join(flag(k.rpartition(".")[2]) for k in fields)
        raise SpecError(f"--no-reliability: cannot be combined with {named}")
    switch = {None: None, True: {}, False: "off"}[params["reliability"]]
    return {"cluster.reliability": switch} | fields


def _layout(problem: Problem, params: dict[str, Any]) -> ParallelConfig:
    """derive() with the layout flags given (the rest keep derive's defaults); a bad value names its flag."""
    kwargs = layout_kwargs({k: v for k, v in params.items() if v is not None})
    try:
        return derive(problem.model, problem.training, problem.gpus, **kwargs)
    except InfeasibleConfig as e:
        bad = re.match(r"(\w+)=\S+ must be ", str(e))
        if bad and bad.group(1) in kwargs:
            raise SpecError(f"{flag(bad.group(1))}: {e}") from e
        raise


def estimate_cmd(
    ctx: typer.Context,
    spec: Path | None = typer.Argument(None, help="Study spec (YAML/TOML); flags override its fields."),
    model: str | None = typer.Option(None, help="Model preset, model YAML, HF config.json, or an inline JSON "
                                                "object of model fields ('{\"layers\": 2, ...}')."),
    gpu: str | None = typer.Option(None, help="GPU name (a100-40gb, a100-80gb, h100-sxm, h200, b200, mi300x, cpu) "
                                              "or GPU YAML."),
    gpus: int | None = typer.Option(None, help="Total GPUs."),
    gpus_per_node: int | None = typer.Option(None, help="GPUs per node [default: 8]."),
    price_per_gpu_hour: float | None = typer.Option(None, help="Cost of one GPU-hour (adds `cost`)."),
    seq_len: int | None = typer.Option(None, help=_training_help("seq_len")),
    global_batch: int | None = typer.Option(None, help=_training_help("global_batch")),
    precision: str | None = typer.Option(None, help=_training_help("precision")),
    optimizer: str | None = typer.Option(None, help=_training_help("optimizer")),
    grad_buffers: str | None = typer.Option(None, help=_training_help("grad_buffers")),
    flash_attention: bool | None = typer.Option(None, "--flash-attention/--no-flash-attention",
                                                help=_training_help("flash_attention")),
    tokens: float | None = typer.Option(None, help=_training_help("tokens")),
    samples: int | None = typer.Option(None, help=_training_help("samples")),
    epochs: float | None = typer.Option(None, help=_training_help("epochs")),
    tp: int | None = typer.Option(None, help="Tensor-parallel degree [default: 1]."),
    pp: int | None = typer.Option(None, help="Pipeline-parallel degree [default: 1]."),
    cp: int | None = typer.Option(None, help="Context-parallel degree [default: 1]."),
    vpp: int | None = typer.Option(None, help="Virtual pipeline chunks per stage [default: 1]."),
    zero: int | None = typer.Option(None, help="ZeRO stage 0-3 [default: 0]."),
    dp_shard: int | None = typer.Option(None, help="ZeRO shard group size [default: dp] (< dp: HSDP)."),
    ep: int | None = typer.Option(None, help="Expert-parallel degree (MoE models; divides experts) [default: 1]."),
    etp: int | None = typer.Option(None, help="Expert tensor-parallel degree (MoE models) [default: 1]."),
    micro_batch: int | None = typer.Option(None, help="Micro-batch size [default: 1]."),
    recompute: str | None = typer.Option(None, help=f"{' | '.join(RECOMPUTE_MODES)} [default: none]."),
    recompute_layers: int | None = typer.Option(None, help="Layers per stage to recompute (full only) "
                                                           "[default: all]."),
    sequence_parallel: bool | None = typer.Option(None, "--sequence-parallel/--no-sequence-parallel",
                                                  "--sp/--no-sp", help="Sequence parallelism (needs tp > 1) "
                                                                       "[default: off]."),
    pp_schedule: str | None = typer.Option(None, help=f"{' | '.join(PP_SCHEDULES)} (1f1b interleaves when vpp > 1) "
                                                      "[default: 1f1b]."),
    tp_comm_overlap: bool | None = typer.Option(None, "--tp-comm-overlap/--no-tp-comm-overlap",
                                                help="Overlap TP collectives with GEMMs (needs tp > 1) "
                                                     "[default: off]."),
    overlap_grad_reduce: bool | None = typer.Option(None, "--overlap-grad-reduce/--no-overlap-grad-reduce",
                                                    help="Overlap the DP gradient reduction with backward "
                                                         "[default: on]."),
    overlap_param_gather: bool | None = typer.Option(None, "--overlap-param-gather/--no-overlap-param-gather",
                                                     help="Overlap ZeRO parameter all-gathers with compute "
                                                          "[default: on]."),
    reliability: bool | None = typer.Option(None, "--reliability/--no-reliability",
                                            help="Expected time to train with failures, checkpoints and restarts "
                                                 "beside the ideal one [default: on]."),
    failures_per_gpu_day: float | None = typer.Option(None, help=_reliability_help("failures_per_gpu_day")),
    restart_min: float | None = typer.Option(None, help=_reliability_help("restart_min")),
    checkpoint_write_gbps_per_node: float | None = typer.Option(
        None, help=_reliability_help("checkpoint_write_gbps_per_node")),
    checkpoint_read_gbps_per_node: float | None = typer.Option(
        None, help=_reliability_help("checkpoint_read_gbps_per_node")),
    storage_write_gbps: float | None = typer.Option(None, help=_reliability_help("storage_write_gbps")),
    storage_read_gbps: float | None = typer.Option(None, help=_reliability_help("storage_read_gbps")),
    async_checkpoint: bool | None = typer.Option(None, "--async-checkpoint/--no-async-checkpoint",
                                                 help=_reliability_help("async_checkpoint")),
    snapshot_gbps: float | None = typer.Option(None, help=_reliability_help("snapshot_gbps")),
    checkpoint_interval_min: float | None = typer.Option(None, help=_reliability_help("checkpoint_interval_min")),
    profile: str | None = typer.Option(None, help="Stored calibrated profile NAME or NAME@VERSION (replaces --gpu)."),
    storage: str | None = typer.Option(None, help="SQLAlchemy URL holding --profile [default: $AUTOTUNE_STORAGE "
                                                   "or sqlite:///autotune.db]."),
    fidelity: str = typer.Option(
        "analytic", help="analytic (cost model) | dryrun (exact per-rank memory and FLOPs from a fake-tensor run)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Per-rank memory breakdown, step time, tokens/s, MFU, fit verdict and training time of one layout.

    Every layout field and training switch has a flag; flags override the SPEC's fields. ``autotune best``
    prints the command that reproduces its layouts. ``--fidelity dryrun`` runs the layout at full size on
    fake tensors instead (seconds to a minute; needs torch) and prints the same memory keys plus ``flops``
    and ``fidelity``.
    """
    if fidelity not in ("analytic", "dryrun"):
        raise SpecError(f"fidelity: must be analytic or dryrun (got {fidelity!r})")
    overrides = _flag_overrides(ctx.params)
    given = {path: flag(path.rpartition(".")[2]) for path, value in overrides.items() if value is not None}
    try:
        data = spec_with_overrides(spec, overrides)
        data.setdefault("cluster", {}).setdefault("gpu", profile)
        problem = resolve(parse_spec(data), storage=storage)
    except SpecError as e:
        raise _name_flag(e, given) from e
    if isinstance(problem.training.global_batch, list):
        raise SpecError(f"--global-batch: the spec lists several global batch sizes {problem.training.global_batch}; "
                        "give one")
    cfg = _layout(problem, ctx.params)
    if fidelity == "dryrun":
        dryrun_estimate = data_plane("dryrun_estimate")  # imports torch: only when asked for
        result = dryrun_estimate(problem.model, problem.training, problem.gpu, cfg)
        typer.echo(json.dumps(result, indent=2) if json_out else _dryrun_text(result))
        return
    result = estimate(problem.model, problem.training, problem.gpu, problem.cluster, cfg)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        print_estimate(result)
