"""Relative goals (HIRO / HRL-CG): a goal is a desired change of some observation dims.

A manager acting at ``s_t`` with goal ``g`` wants the goal dims to reach ``s_t + g``.
Between its decisions the goal is re-expressed from where the worker now is,
``h(s, g, s') = s + g - s'`` (Kreidieh et al. 2020, Eq. 6), so the absolute target
stays fixed; the worker's intrinsic reward is ``-||s + g - s'||`` (Eq. 5).

Shapes: ``s``, ``s'`` ``[..., obs_dim]`` (goal dims picked by ``index``), ``g`` ``[..., goal_dim]``.
"""
from __future__ import annotations

import torch


def goal_transition(s: torch.Tensor, g: torch.Tensor, s_next: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``h(s, g, s') = s + g - s'`` on the goal dims."""
    return s[..., index] + g - s_next[..., index]


def goal_distance(s: torch.Tensor, g: torch.Tensor, s_next: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``||s + g - s'||_2`` on the goal dims: ``[...]``."""
    return (s[..., index] + g - s_next[..., index]).norm(dim=-1)
