"""The ``autotune estimate`` command line that reproduces a stored layout's analytic estimate.

The command names every input the cost model reads, so it does not depend on defaults::

    autotune estimate --model M (--gpu G | --profile NAME@V --storage URL) --gpus N --gpus-per-node G
        [--price-per-gpu-hour P] --seq-len S --global-batch B --precision P ... (every TrainingSpec field
        that is set) --tp T --pp P ... (every field of autotune.config.DERIVE_KEYS the layout holds)
        (--no-reliability | --failures-per-gpu-day F ... (every cluster.reliability field that is set))

- model: a preset name or a file path exactly as the study's spec gave it (a path is relative to the
  directory the study was submitted from); an inline model mapping becomes one JSON object,
  ``--model '{"hidden": 1024, ...}'``, with every ModelSpec field, so no spec file is needed.
- GPU: ``--gpu`` as the spec gave it, or the calibrated profile pinned at submit (``NAME@V``) with the
  study's storage URL (a password in it is shown as ``***``: put the real URL in ``--storage``); a stored
  stack profile (``--stack NAME@V``, pinned at submit) brings the storage URL too.
- gpus: the layout's ``nodes`` (a study over several node counts stores one per layout) x gpus_per_node;
  global batch: the layout's ``global_batch`` when it carries one, else the spec's.
- Each value is quoted with :func:`shlex.join`; floats print as their shortest exact repr.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

from autotune.catalog import is_stored_stack
from autotune.config import layout_kwargs
from autotune.spec import StudySpec, TrainingSpec, parse_spec
from autotune.study.resolve import study_stack

__all__ = ["flag", "estimate_command"]


def flag(name: str) -> str:
    """The ``autotune estimate`` flag of a spec or layout field: ``pp_schedule`` -> ``--pp-schedule``."""
    return "--" + name.replace("_", "-")


def _args(name: str, value: Any) -> list[str]:
    """One field as flag arguments: nothing for None, ``--X``/``--no-X`` for booleans, else ``--X VALUE``."""
    if value is None:
        return []
    if isinstance(value, bool):
        return [flag(name) if value else "--no-" + flag(name)[2:]]
    return [flag(name), str(value)]


def estimate_command(spec: StudySpec | Mapping[str, Any], layout: Mapping[str, Any],
                     storage_url: str | None = None, stack: str | None = None) -> str:
    """The shell command that re-estimates ``layout`` (a stored evaluation row's layout) under ``spec``
    (the study's spec, or its stored mapping); ``storage_url`` is where a calibrated profile named by the
    spec lives; ``stack``: the study's :func:`~autotune.study.resolve.study_stack` when the caller has it."""
    study = spec if isinstance(spec, StudySpec) else parse_spec(dict(spec))
    cluster = study.cluster
    model = study.model if isinstance(study.model, str) else json.dumps(
        study.model.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    args = ["autotune", "estimate", "--model", model]
    if cluster.profile:
        args += ["--profile", cluster.profile] + (["--storage", storage_url] if storage_url else [])
    else:
        args += ["--gpu", cluster.gpu]
    nodes = layout.get("nodes", cluster.node_counts[0])
    args += ["--gpus", str(nodes * cluster.gpus_per_node), "--gpus-per-node", str(cluster.gpus_per_node)]
    args += _args("nics_per_node", cluster.nics_per_node)
    args += _args("price_per_gpu_hour", cluster.price_per_gpu_hour)
    training = study.training.model_dump(mode="json") | {"stack": stack or study_stack(study)}
    if "global_batch" in layout:
        training["global_batch"] = layout["global_batch"]
    for name in TrainingSpec.model_fields:
        args += _args(name, training[name])
    if is_stored_stack(training["stack"]) and not cluster.profile and storage_url:
        args += ["--storage", storage_url]
    for name, value in layout_kwargs(dict(layout)).items():
        args += _args(name, value)
    if cluster.reliability_on:
        for name, value in cluster.reliability.model_dump().items():
            args += _args(name, value)
    else:
        args += ["--no-reliability"]
    return shlex.join(args)
