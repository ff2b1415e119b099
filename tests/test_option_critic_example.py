"""The option-critic learner of docs/examples/option_critic_level.py against Bacon, Harb and Precup
(2017) on a hand-made transition: the intra-option target with the utility U (Sec. 3:
U(s', w) = (1 - beta_w(s')) Q(s', w) + beta_w(s') max_w' Q(s', w')) and the termination
gradient's loss (Theorem 2: beta_w(s') (Q(s', w) - V(s') + xi), V = max_w Q)."""
from __future__ import annotations

import runpy
from pathlib import Path

import torch
from gymnasium import spaces
from torch import nn

from hmarl import AgentIO, Rollout, UpdateContext

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "option_critic_level.py"


class Table(nn.Module):
    """Outputs ``low`` where obs < 0.5 and ``high`` elsewhere (one learnable zero keeps it a module)."""

    def __init__(self, low, high):
        super().__init__()
        self.low, self.high = torch.tensor(low), torch.tensor(high)
        self.zero = nn.Parameter(torch.zeros(()))

    def forward(self, obs):
        return torch.where(obs[..., :1] > 0.5, self.high, self.low) + self.zero


def test_intra_option_target_and_termination_loss_by_hand():
    example = runpy.run_path(str(EXAMPLE))  # registers the learner and the termination (names only)
    config = example["OptionCriticConfig"](gamma=0.5, termination_reg=0.01)
    io = AgentIO(n_agents=1, obs_dim=1, child_obs_dim=1, action_space=spaces.Discrete(2))
    learner = example["OptionCritic"](io, config)
    learner.q = Table([1.0, 3.0], [2.0, 5.0])  # Q(s, .) = (1, 3), Q(s', .) = (2, 5)
    learner.termination = Table([0.0, 0.0], [0.0, 0.0])  # beta = sigmoid(0) = 1/2 everywhere
    s, s_next = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1)
    no = torch.zeros(1, 1, dtype=torch.bool)
    rollout = Rollout(obs=s, action=torch.zeros(1, 1, 1, dtype=torch.long), log_prob=torch.zeros(1, 1, 1),
                      reward=torch.ones(1, 1, 1), terminated=no, done=no, final_obs=s, last_obs=s_next,
                      decision=torch.ones(1, 1, dtype=torch.bool))
    result = learner.update(rollout, UpdateContext(0.0))
    # option w = 0: U(s', 0) = 1/2 * 2 + 1/2 * 5 = 3.5; target = 1 + 0.5 * 3.5 = 2.75; (Q(s, 0) - target)^2
    torch.testing.assert_close(result.metrics["q_loss"], torch.tensor((1.0 - 2.75) ** 2))
    # beta_0(s') (Q(s', 0) - V(s') + xi) = 1/2 * (2 - 5 + 0.01)
    torch.testing.assert_close(result.metrics["termination_loss"], torch.tensor(0.5 * (2.0 - 5.0 + 0.01)))
    torch.testing.assert_close(result.outputs["option_values"], torch.tensor([[[[1.0, 3.0]]]]))
