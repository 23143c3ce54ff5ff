"""Model and GPU presets, shipped as YAML package data; users may point at their own files.

``resolve_model`` accepts a preset name, a model YAML path or a Hugging Face ``config.json`` path;
``resolve_gpu`` accepts a GPU name or a GPU YAML path; ``resolve_stack`` a stack name (stacks.yaml) or a stack
YAML path, and ``default_stack`` names the stack a framework's layouts are scored on.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from autotune.catalog.hf import from_hf_config
from autotune.errors import SpecError
from autotune.spec import GPUSpec, ModelSpec, StackSpec, format_validation_error, read_mapping

__all__ = ["model_names", "gpu_names", "stack_names", "get_model", "get_gpu", "get_stack", "resolve_model",
           "resolve_gpu", "resolve_stack", "default_stack", "FRAMEWORK_STACKS", "from_hf_config", "is_stored_stack"]

#: The stack a framework's layouts are scored on unless ``training.stack`` names another.
FRAMEWORK_STACKS: dict[str, str] = {"megatron": "megatron-te", "deepspeed": "deepspeed",
                                    "torchtitan": "torchtitan-eager", "any": "eager"}

#: Defaults filled in for each ``family`` shorthand of models.yaml.
FAMILIES: dict[str, dict[str, Any]] = {
    "gpt": dict(activation="gelu", tied_embeddings=True, norm="layernorm", bias="all",
                position_embedding="learned", dropout=True),
    "llama": dict(activation="swiglu", tied_embeddings=False, norm="rmsnorm", bias="none",
                  position_embedding="rope", dropout=False),
}


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load(resources.files("autotune.catalog").joinpath(name).read_text(encoding="utf-8"))


def _expand_family(fields: dict[str, Any], where: str) -> dict[str, Any]:
    fields = dict(fields)
    family = fields.pop("family", None)
    if family is None:
        return fields
    if not isinstance(family, str) or family not in FAMILIES:
        raise SpecError(f"{where}.family: unknown family {family!r} (allowed: {', '.join(FAMILIES)})")
    return {**FAMILIES[family], **fields}


def _model_from_fields(fields: dict[str, Any], name: str, where: str) -> ModelSpec:
    try:
        return ModelSpec.model_validate({"name": name, **_expand_family(fields, where)})
    except ValidationError as e:
        raise SpecError(format_validation_error(e, ModelSpec, prefix=f"{where}.")) from e


@functools.cache
def _models() -> dict[str, dict[str, Any]]:
    return _load("models.yaml")


@functools.cache
def _gpus() -> dict[str, dict[str, Any]]:
    return _load("gpus.yaml")


@functools.cache
def _stacks() -> dict[str, dict[str, Any]]:
    return _load("stacks.yaml")


def stack_names() -> list[str]:
    """Names of the training stack profiles."""
    return list(_stacks())


@functools.cache
def get_stack(name: str) -> StackSpec:
    """A stack profile by name."""
    if name not in _stacks():
        raise SpecError(f"training.stack: unknown stack {name!r} (allowed: {', '.join(stack_names())}, or a file path)")
    return StackSpec.model_validate({"name": name, **_stacks()[name]})


def default_stack(framework: str) -> str:
    """The stack name scoring a framework's layouts (``any``: plain eager PyTorch)."""
    return FRAMEWORK_STACKS.get(framework, FRAMEWORK_STACKS["any"])


def resolve_stack(ref: str | StackSpec | None, framework: str = "any") -> StackSpec:
    """A StackSpec from a catalog name, a stack YAML path, or None (the framework's default stack)."""
    if isinstance(ref, StackSpec):
        return ref
    if ref is None:
        return get_stack(default_stack(framework))
    return get_stack(ref) if not _is_path(ref) else _profile_file(Path(ref), StackSpec, "training.stack")


def is_stored_stack(ref: str) -> bool:
    """Whether a ``training.stack`` reference names a stored stack profile (``autotune calibrate --stack``,
    resolved by :func:`autotune.study.resolve.resolve_training_stack`): neither a catalog stack nor a file
    path. Catalog names win, so a stored profile named like a catalog stack is referred to as NAME@V."""
    return ref not in _stacks() and not _is_path(ref)


def model_names() -> list[str]:
    """Names of the model presets."""
    return list(_models())


def gpu_names() -> list[str]:
    """Names of the GPU profiles."""
    return list(_gpus())


def get_model(name: str) -> ModelSpec:
    """A model preset by name."""
    if name not in _models():
        raise SpecError(f"model: unknown preset {name!r} (allowed: {', '.join(model_names())}, or a file path)")
    return _model_from_fields(_models()[name], name, "model")


def get_gpu(name: str) -> GPUSpec:
    """A GPU profile by name."""
    if name not in _gpus():
        raise SpecError(f"cluster.gpu: unknown GPU {name!r} (allowed: {', '.join(gpu_names())}, or a file path)")
    return GPUSpec.model_validate({"name": name, **_gpus()[name]})


def _is_path(ref: str) -> bool:
    return "/" in ref or ref.endswith((".yaml", ".yml", ".json", ".toml"))


def resolve_model(ref: str | ModelSpec) -> ModelSpec:
    """A ModelSpec from an inline spec, a preset name, a model YAML, or a Hugging Face config.json."""
    if isinstance(ref, ModelSpec):
        return ref
    if not _is_path(ref):
        return get_model(ref)
    path = Path(ref)
    if path.suffix == ".json":
        if not path.is_file():
            raise SpecError(f"model: file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SpecError(f"model: {path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise SpecError(f"model: {path} must hold a JSON object")
        return from_hf_config(data, name=path.parent.name or path.stem)
    return _model_from_fields(read_mapping(path, "model"), path.stem, "model")


def resolve_gpu(ref: str) -> GPUSpec:
    """A GPUSpec from a catalog name or a GPU YAML path."""
    return get_gpu(ref) if not _is_path(ref) else _profile_file(Path(ref), GPUSpec, "cluster.gpu")


def _profile_file(path: Path, kind: type[GPUSpec] | type[StackSpec], where: str) -> Any:
    """A GPU or stack profile from a YAML file, named after the file; field errors prefixed with ``where``."""
    try:
        return kind.model_validate({"name": path.stem, **read_mapping(path, where)})
    except ValidationError as e:
        raise SpecError(format_validation_error(e, kind, prefix=f"{where}.")) from e
