"""A GRU per agent, batched over the agents of a level like :class:`~hmarl.nn.mlp.AgentMLP`.

.. math::
    r = \\sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}), \\quad
    z = \\sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}), \\\\
    n = \\tanh(W_{in} x + b_{in} + r \\odot (W_{hn} h + b_{hn})), \\quad
    h' = (1 - z) \\odot n + z \\odot h

(Cho et al. 2014; ``torch.nn.GRUCell``'s equations and gate order ``r, z, n``.)
"""
from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor
"""Shorthand for ``torch.Tensor`` in annotations (hidden from the API reference). @private"""


class AgentGRU(nn.Module):
    """``n_agents`` independent GRU cells whose weights are stacked ``[n, in, 3 hidden]`` (one cell
    for all agents with ``share_params``); initialised as ``torch.nn.GRUCell``.

    Shapes:
        ``forward``: x ``[..., N, in_dim]``, h ``[..., N, hidden]`` -> ``[..., N, hidden]``.
        ``sequence``: x ``[L, M, ..., N, in_dim]`` (time first), h ``[M, ..., N, hidden]``, reset and
        advance ``[L, M]`` -> outputs and carried states ``[L, M, ..., N, hidden]`` each.
    """

    def __init__(self, n_agents: int, in_dim: int, hidden: int, share_params: bool = False):
        super().__init__()
        self.n_nets = 1 if share_params else n_agents
        self.hidden = hidden
        bound = 1 / math.sqrt(hidden)
        uniform = lambda *shape: nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))  # noqa: E731
        self.weight_ih = uniform(self.n_nets, in_dim, 3 * hidden)
        self.weight_hh = uniform(self.n_nets, hidden, 3 * hidden)
        self.bias_ih = uniform(self.n_nets, 1, 3 * hidden)
        self.bias_hh = uniform(self.n_nets, 1, 3 * hidden)

    def _affine(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """``x W + b`` per agent: ``[..., N, d]`` -> ``[..., N, 3 hidden]``."""
        lead, (n, d) = x.shape[:-2], x.shape[-2:]
        if self.n_nets == 1:
            return torch.addmm(bias[0], x.reshape(-1, d), weight[0]).reshape(*lead, n, -1)
        out = torch.baddbmm(bias, x.reshape(-1, n, d).transpose(0, 1), weight)  # [N, M, 3H]
        return out.transpose(0, 1).reshape(*lead, n, -1)

    def input_gates(self, x: Tensor) -> Tensor:
        """The input's part of the gates, for many steps at once: ``[..., N, in]`` -> ``[..., N, 3 hidden]``."""
        return self._affine(x, self.weight_ih, self.bias_ih)

    def cell(self, gates_x: Tensor, h: Tensor) -> Tensor:
        """One step from :meth:`input_gates` and the state ``h``."""
        x_r, x_z, x_n = gates_x.chunk(3, -1)
        h_r, h_z, h_n = self._affine(h, self.weight_hh, self.bias_hh).chunk(3, -1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        """One step: the next state (also the output)."""
        return self.cell(self.input_gates(x), h)

    def sequence(self, x: Tensor, h: Tensor, reset: Tensor, advance: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run over ``L`` steps from ``h``: before step ``t`` the state is zeroed where ``reset[t]`` (an
        episode starts); after it the output becomes the state where ``advance[t]`` (None: everywhere;
        elsewhere the state is held, as for copies that took no new action). Returns every step's
        output and the state carried after each step (before the next step's reset)."""
        gates = self.input_gates(x)
        flags = lambda f: f.view(*f.shape, *([1] * (h.dim() - 1)))  # noqa: E731  [L, M] -> broadcast over h
        reset = flags(reset)
        advance = None if advance is None else flags(advance)
        outs, carried = [], []
        for t in range(x.shape[0]):
            h = torch.where(reset[t], 0.0, h)
            out = self.cell(gates[t], h)
            h = out if advance is None else torch.where(advance[t], out, h)
            outs.append(out)
            carried.append(h)
        return torch.stack(outs), (torch.stack(outs) if advance is None else torch.stack(carried))
