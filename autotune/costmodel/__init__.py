"""The analytic cost model: pure functions over layouts (ints or numpy arrays), no torch."""

from autotune.costmodel.estimate import estimate, estimate_arrays
from autotune.costmodel.layout import layout_arrays, layout_scalars
from autotune.costmodel.memory import memory_breakdown

__all__ = ["estimate", "estimate_arrays", "layout_arrays", "layout_scalars", "memory_breakdown"]
