"""Random streams of the torch envs."""
from __future__ import annotations

import torch


def cpu_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (from the OS if None).

    The envs draw spawns on the CPU and move them to their device, so a seed gives the same
    episodes on every device.
    """
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
