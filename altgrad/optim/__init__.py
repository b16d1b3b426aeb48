"""Geometry-aware optimizers and the diagnostics that judge them.

Parameter groups carry each weight's grid geometry (``fmt``, ``scale``; see geometry.py).
ManifoldAdamW measures steps in ULPs, GridOptim keeps weights on the grid and moves them in
whole rungs (both step-matched to AdamW by build_optimizer), GridProjection / project_to_grid
make any optimizer store grid weights, and UpdateDiagnostics counts what each step changed
on the grid.
"""

from .build import build_optimizer, calibration_record
from .diagnostics import HIST_BINS, UpdateDiagnostics
from .geometry import (
    GridProjection,
    grid_position,
    grid_value,
    index_range,
    keep_geometry_out_of_state,
    project_to_grid,
    stiffness,
)
from .grid_optim import GridOptim
from .manifold import DEFAULT_MIN_STIFFNESS, ManifoldAdamW, ManifoldSGD
from .safety import (
    MANTISSA_LADDER,
    MantissaShift,
    one_more_mantissa_bit,
    partition_relative_clip,
)

__all__ = [
    "DEFAULT_MIN_STIFFNESS",
    "HIST_BINS",
    "MANTISSA_LADDER",
    "GridOptim",
    "GridProjection",
    "ManifoldAdamW",
    "ManifoldSGD",
    "MantissaShift",
    "UpdateDiagnostics",
    "build_optimizer",
    "calibration_record",
    "grid_position",
    "grid_value",
    "index_range",
    "keep_geometry_out_of_state",
    "one_more_mantissa_bit",
    "partition_relative_clip",
    "project_to_grid",
    "stiffness",
]
