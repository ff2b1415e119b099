"""Per-agent MLPs evaluated for all agents of a level in one batched call."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import nn

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class AgentMLP(nn.Module):
    """``n_agents`` independent MLPs whose weights are stacked ``[n, in, out]``.

    With ``share_params`` one MLP serves every agent. Either way every parameter
    has a leading agent dimension (1 when shared), which is what
    :func:`clip_grad_norm_per_agent` relies on.

    Shapes:
        input ``[..., N, in_dim]`` -> output ``[..., N, out_dim]``.
    """

    def __init__(self, n_agents: int, in_dim: int, hidden_sizes: Sequence[int], out_dim: int,
                 activation: str = "tanh", out_gain: float = 1.0, share_params: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; available: {', '.join(ACTIVATIONS)}")
        self.n_agents = n_agents
        self.n_nets = 1 if share_params else n_agents
        self.activation = ACTIVATIONS[activation]
        sizes = [in_dim, *hidden_sizes, out_dim]
        gains = [math.sqrt(2.0)] * len(hidden_sizes) + [out_gain]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out, gain in zip(sizes[:-1], sizes[1:], gains):
            weight = torch.empty(self.n_nets, fan_out, fan_in)
            for w in weight:  # orthogonal per agent, as in CleanRL's layer_init
                nn.init.orthogonal_(w, gain)
            self.weights.append(nn.Parameter(weight.transpose(1, 2).contiguous()))
            self.biases.append(nn.Parameter(torch.zeros(self.n_nets, 1, fan_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-2]
        n, d = x.shape[-2:]
        last = len(self.weights) - 1
        if self.n_nets == 1:
            for i, (w, b) in enumerate(zip(self.weights, self.biases)):
                x = torch.addmm(b[0], x.reshape(-1, x.shape[-1]), w[0])
                if i < last:
                    x = self.activation(x)
            return x.reshape(*lead, n, -1)
        x = x.reshape(-1, n, d).transpose(0, 1)  # [N, M, in]
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = self.activation(x)
        return x.transpose(0, 1).reshape(*lead, n, -1)


def clip_grad_norm_per_agent(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip gradients to ``max_norm`` separately for every agent.

    Parameters are grouped by their leading (agent) dimension: stacked
    independent parameters are clipped per agent, shared ones together, so
    independent learners stay independent. Returns the largest pre-clip norm.
    """
    groups: dict[int, list[torch.Tensor]] = {}
    for p in parameters:
        if p.grad is not None:
            groups.setdefault(p.shape[0], []).append(p.grad)
    largest = []
    for grads in groups.values():
        sq = torch.stack([g.pow(2).reshape(g.shape[0], -1).sum(1) for g in grads]).sum(0)
        norm = sq.sqrt()
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
        largest.append(norm.max())
    return torch.stack(largest).max() if largest else torch.zeros(())
