"""Communication functions phi: what a level's agents send to the level above.

An agent's message is computed from its observation of the level below (the
concatenated messages of its children). TAG's default phi passes that
observation up unchanged; TAG's 3PPO-comm learns an 8-d code with an
autoencoder trained on the level's own rollouts.

Shapes: ``forward`` maps ``[..., N, in_dim]`` to ``[..., N, out_dim]``.
"""
from __future__ import annotations

import torch
from torch import nn

from hmarl.nn import AgentMLP
from hmarl.registry import Registry


class Communication(nn.Module):
    """Base class: identity messages, nothing to learn."""

    def __init__(self, n_agents: int, in_dim: int):
        super().__init__()
        self.in_dim = in_dim

    @property
    def out_dim(self) -> int:
        """Size of the message each agent sends up."""
        return self.in_dim

    def forward(self, child_obs: torch.Tensor) -> torch.Tensor:
        """The messages ``[..., N, out_dim]`` from the children's part of the agents' observations."""
        return child_obs

    def update(self, child_obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Learn from a rollout's child observations ``[T, B, N, in_dim]``."""
        return {}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer this function steps (checkpoints save them)."""
        return []


class Concat(Communication):
    """TAG's default: the message is the concatenation of the children's messages."""


class Autoencoder(Communication):
    """TAG 3PPO-comm: encoder in->32 ReLU ->8 Sigmoid, decoder 8->32 ReLU ->in, MSE.

    One autoencoder per agent (stacked), trained for ``epochs`` full-batch
    epochs on every rollout of its level, the same data its PPO agent uses.
    """

    def __init__(self, n_agents: int, in_dim: int, code_dim: int = 8, hidden: int = 32,
                 epochs: int = 50, learning_rate: float = 1e-3):
        super().__init__(n_agents, in_dim)
        self.code_dim = code_dim
        self.epochs = epochs
        self.encoder = AgentMLP(n_agents, in_dim, [hidden], code_dim, activation="relu")
        self.decoder = AgentMLP(n_agents, code_dim, [hidden], in_dim, activation="relu")
        self.optimizer = torch.optim.Adam(self.parameters(), lr=learning_rate)

    @property
    def out_dim(self) -> int:
        """Size of the message each agent sends up."""
        return self.code_dim

    def forward(self, child_obs: torch.Tensor) -> torch.Tensor:
        """The messages ``[..., N, out_dim]`` from the children's part of the agents' observations."""
        return torch.sigmoid(self.encoder(child_obs))

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def update(self, child_obs: torch.Tensor) -> dict[str, torch.Tensor]:
        x = child_obs.reshape(-1, *child_obs.shape[-2:])
        for _ in range(self.epochs):
            loss = (self.decoder(self(x)) - x).pow(2).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        return {"ae_loss": loss.detach()}


COMMUNICATION = Registry("comm", {"concat": Concat, "autoencoder": Autoencoder})
"""Communication functions by the name a level's ``comm`` gives; register new ones here."""
