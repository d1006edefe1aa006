"""otov3: automatic sub-network search in general super-networks."""

from otov3.api import OTO
from otov3.errors import (
    CaptureError,
    ConstructionError,
    DataError,
    DriftError,
    ExportError,
    OptimizerError,
    OTOError,
    SearchSpaceError,
)
from otov3.ops.user import register_op
from otov3.space import Group, GroupKind, ParamSlice

__all__ = [
    "OTO",
    "CaptureError",
    "ConstructionError",
    "DataError",
    "DriftError",
    "ExportError",
    "Group",
    "GroupKind",
    "OTOError",
    "OptimizerError",
    "ParamSlice",
    "SearchSpaceError",
    "register_op",
]
__version__ = "0.1.0"
