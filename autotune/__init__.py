"""autotune: find the fastest parallel layout for training a large model on a cluster.

The control plane (this package) imports no torch at import time.
"""

from autotune.config import ParallelConfig, derive
from autotune.errors import AutotuneError, EvaluationError, InfeasibleConfig, SpecError, StorageError
from autotune.spec import ClusterSpec, GPUSpec, ModelSpec, StudySpec, TrainingSpec, load_spec

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "AutotuneError",
    "ClusterSpec",
    "EvaluationError",
    "GPUSpec",
    "InfeasibleConfig",
    "ModelSpec",
    "ParallelConfig",
    "SpecError",
    "StorageError",
    "StudySpec",
    "TrainingSpec",
    "derive",
    "load_spec",
]
