"""H2SPG (spec §5.5) as a torch.optim.Optimizer, and the pure kernels it is built from."""

from otov3.optim.h2spg import H2SPG

__all__ = ["H2SPG"]
