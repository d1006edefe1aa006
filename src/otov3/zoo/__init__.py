"""The paper's super-networks, registered by name (spec §3.4, §3.5, §8).

Importing this package registers every model; `create_supernet(name)` builds one and `get_supernet_spec(name)`
gives its default dummy input shape and reference counts.
"""

from otov3.zoo.darts import DartsSuperNet, MixedEdge, SearchCell
from otov3.zoo.demo_supnet import DemoSupNet
from otov3.zoo.registry import (
    SupernetSpec,
    create_supernet,
    get_supernet_spec,
    list_supernets,
    register_supernet,
)
from otov3.zoo.stacked_unets import StackedUnets
from otov3.zoo.super_resnet import SuperResBlock, SuperResNet

__all__ = [
    "DartsSuperNet",
    "DemoSupNet",
    "MixedEdge",
    "SearchCell",
    "StackedUnets",
    "SuperResBlock",
    "SuperResNet",
    "SupernetSpec",
    "create_supernet",
    "get_supernet_spec",
    "list_supernets",
    "register_supernet",
]
