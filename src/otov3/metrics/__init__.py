"""Parameter and MAC counting (spec §7)."""

from otov3.metrics.counting import count_flops, count_params

__all__ = ["count_flops", "count_params"]
