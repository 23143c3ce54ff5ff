"""Turn a validated :class:`StudySpec` into the concrete model, GPU and cluster it names."""

from __future__ import annotations

from dataclasses import dataclass

from autotune.catalog import default_stack, resolve_gpu, resolve_model
from autotune.spec import ClusterSpec, GPUSpec, ModelSpec, StudySpec, TrainingSpec

__all__ = ["Problem", "resolve", "study_stack"]


@dataclass(frozen=True)
class Problem:
    """A study's fixed inputs with catalog names resolved; ``training`` has one global batch size (the first
    of a list) and ``cluster`` its first node count."""

    model: ModelSpec
    gpu: GPUSpec
    cluster: ClusterSpec
    training: TrainingSpec

    @property
    def gpus(self) -> int:
        """GPU count of the (first) cluster size."""
        return self.cluster.gpus


def resolve(spec: StudySpec, gpu: GPUSpec | None = None, storage: str | None = None) -> Problem:
    """Resolve the model and GPU references of ``spec``: ``gpu`` overrides; else ``cluster.profile``, a
    calibrated profile stored in the database at ``storage``; else ``cluster.gpu`` from the catalog."""
    if gpu is None and spec.cluster.profile:
        from autotune.store.profiles import load_profile

        gpu = load_profile(spec.cluster.profile, storage)
    training = spec.training.model_copy(update={"stack": study_stack(spec)})
    return Problem(
        model=resolve_model(spec.model),
        gpu=gpu or resolve_gpu(spec.cluster.gpu),
        cluster=spec.cluster,
        training=training.at_batch(training.batch_sizes[0]),
    )


def study_stack(spec: StudySpec) -> str:
    """The training stack a study scores on: ``training.stack``, else its search space framework's default."""
    if spec.training.stack is not None:
        return spec.training.stack
    from autotune.search.space import load_space

    return default_stack(load_space(spec.search.space).framework)
