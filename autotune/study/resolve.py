"""Turn a validated :class:`StudySpec` into the concrete model, GPU, stack and cluster it names."""

from __future__ import annotations

from dataclasses import dataclass

from autotune.catalog import default_stack, is_stored_stack, resolve_gpu, resolve_model, resolve_stack
from autotune.spec import ClusterSpec, GPUSpec, ModelSpec, StackSpec, StudySpec, TrainingSpec

__all__ = ["Problem", "resolve", "study_stack", "resolve_training_stack", "pin_stack"]


@dataclass(frozen=True)
class Problem:
    """A study's fixed inputs with catalog names resolved; ``training`` has one global batch size (the first
    of a list), its ``stack`` the resolved StackSpec, and ``cluster`` its first node count."""

    model: ModelSpec
    gpu: GPUSpec
    cluster: ClusterSpec
    training: TrainingSpec

    @property
    def gpus(self) -> int:
        """GPU count of the (first) cluster size."""
        return self.cluster.gpus


def resolve(spec: StudySpec, gpu: GPUSpec | None = None, storage: str | None = None) -> Problem:
    """Resolve the model, GPU and stack references of ``spec``: ``gpu`` overrides; else ``cluster.profile``, a
    calibrated profile stored in the database at ``storage``; else ``cluster.gpu`` from the catalog. The stack
    (:func:`study_stack`) comes from the catalog, a file, or the stored stack profiles at ``storage``."""
    if gpu is None and spec.cluster.profile:
        from autotune.store.profiles import load_profile

        gpu = load_profile(spec.cluster.profile, storage)
    training = spec.training.model_copy(update={"stack": resolve_training_stack(study_stack(spec), storage)})
    return Problem(
        model=resolve_model(spec.model),
        gpu=gpu or resolve_gpu(spec.cluster.gpu),
        cluster=spec.cluster,
        training=training.at_batch(training.batch_sizes[0]),
    )


def study_stack(spec: StudySpec) -> str:
    """The training stack a study scores on: ``training.stack`` (an inline stack: its name), else its search
    space framework's default."""
    if isinstance(spec.training.stack, StackSpec):
        return spec.training.stack.name
    if spec.training.stack is not None:
        return spec.training.stack
    from autotune.search.space import load_space

    return default_stack(load_space(spec.search.space).framework)


def resolve_training_stack(ref: str | StackSpec, storage: str | None = None) -> StackSpec:
    """The StackSpec of a ``training.stack`` reference: catalog name, stack file, or stored stack profile
    NAME / NAME@V in the database at ``storage`` (errors name ``training.stack``)."""
    if isinstance(ref, str) and is_stored_stack(ref):
        from autotune.store.profiles import load_stack_profile

        return load_stack_profile(ref, storage)
    return resolve_stack(ref)


def pin_stack(spec: StudySpec, ref: str | None = None, storage: str | None = None) -> StudySpec:
    """``spec`` with ``training.stack`` set to ``ref`` when given (``submit --stack-profile``), and a stored stack
    profile reference pinned to its exact ``NAME@V`` in the database at ``storage``, so ``resume``, ``best``,
    ``report``, ``export`` and the reproduce commands score with that version after a newer one is stored (as
    ``cluster.profile`` is pinned); catalog stacks and files unchanged. An unknown profile is a one-line
    SpecError naming ``training.stack``."""
    stack = ref if ref is not None else spec.training.stack
    if isinstance(stack, str) and is_stored_stack(stack):
        from autotune.store.profiles import load_stack_profile

        stack = load_stack_profile(stack, storage).name
    return spec.model_copy(update={"training": spec.training.model_copy(update={"stack": stack})})
