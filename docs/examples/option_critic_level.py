"""A fifth mechanism from the library's registries alone: an option level with a learned termination.

Bacon, Harb and Precup (2017), *The Option-Critic Architecture*. Each env agent's worker (PPO)
acts under an option ``w`` chosen by the agent's option level above it (a ``discrete(K)``
command appended to the worker's observation, the way TAG's commands reach their agents).
Unlike TAG's fixed period, an option lasts until its learned termination ``beta_w(s)`` fires,
separately in every env copy. The option level's learner, ``option_critic``, learns

- the option values ``Q(s, w)`` by one-step intra-option Q-learning (Sec. 3, the utility
  ``U(s', w) = (1 - beta_w(s')) Q(s', w) + beta_w(s') max_w' Q(s', w')``):
  target ``r + gamma (1 - terminal) U(s', w)``;
- the terminations by the termination gradient (Theorem 2): loss
  ``beta_w(s') (Q(s', w) - V(s') + xi)`` with ``V(s') = max_w Q(s', w)`` and the advantage held
  constant, so an option ends where it is worse than the best one by more than ``xi``;

picks options epsilon-greedily from ``Q``, and publishes ``Q`` (``option_values``) for the
level below. Nothing in ``hmarl/`` changes for it; what is new enters through registries:

- ``LearnedTermination``, a holding ``hmarl.strategies.Termination`` that samples
  ``beta_w(s)`` for each copy's held option (``TERMINATIONS["learned"]``);
- ``OptionCritic``, a ``hmarl.Learner`` (``LEARNERS["option_critic"]``);
- the level entry ``{"learner": "option_critic", "command": "discrete(4)", "termination": "learned"}``.

    python docs/examples/option_critic_level.py --steps 200000 --num-envs 32
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch

from hmarl import AgentIO, Learner, Rollout, UpdateContext, UpdateResult
from hmarl.algorithms import LEARNERS
from hmarl.algorithms.build import build_levels
from hmarl.envs import make_env
from hmarl.run.experiment import evaluate
from hmarl.hierarchy import describe_hierarchy
from hmarl.run.monitor import EpisodeMonitor
from hmarl.nn import AgentMLP
from hmarl.strategies import TERMINATIONS, Moment, Termination


@dataclass
class OptionCriticConfig:
    """Options of the option-critic level."""

    learning_rate: float = 1e-3
    """Adam step size of the option values and the terminations."""
    gamma: float = 0.99
    """Discount factor (per step of the level below)."""
    hidden: int = 64
    """Width of the hidden layer of both networks."""
    epsilon: float = 0.1
    """Probability of a uniformly random option at a decision."""
    termination_reg: float = 0.01
    """xi: the margin by which an option must be worse than the best before it ends."""


class OptionCritic(Learner):
    """Option values ``Q(s, w)`` and terminations ``beta_w(s)`` of every agent of a level (one network
    each, stacked); acting picks an option, :class:`LearnedTermination` ends it.

    Shapes: obs ``[B, N, obs_dim]`` -> option ``[B, N]``; ``beta(obs)`` ``[B, N, K]``.
    """

    config_class = OptionCriticConfig
    publishes = frozenset({"option_values"})

    def __init__(self, io: AgentIO, config: OptionCriticConfig):
        super().__init__(io)
        self.config = c = config
        self.n_options = int(io.action_space.n)
        self.q = AgentMLP(io.n_agents, io.obs_dim, [c.hidden], self.n_options)
        self.termination = AgentMLP(io.n_agents, io.obs_dim, [c.hidden], self.n_options)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=c.learning_rate)

    def beta(self, obs: torch.Tensor) -> torch.Tensor:
        """Each option's probability of ending in ``obs``."""
        return torch.sigmoid(self.termination(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        greedy = self.q(obs).argmax(-1)
        no_log_prob = obs.new_zeros(obs.shape[:2])
        if deterministic:
            return greedy, no_log_prob
        explore = torch.rand(greedy.shape, device=obs.device) < self.config.epsilon
        return torch.where(explore, torch.randint_like(greedy, self.n_options), greedy), no_log_prob

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def update(self, rollout: Rollout, ctx: UpdateContext) -> UpdateResult:
        c = self.config
        option = rollout.action.unsqueeze(-1)  # [T, B, N, 1]: the option held at each step
        next_obs = rollout.next_obs()
        q = self.q(rollout.obs)
        with torch.no_grad():
            next_q = self.q(next_obs)
            next_beta = self.beta(next_obs).gather(-1, option).squeeze(-1)
            utility = (1 - next_beta) * next_q.gather(-1, option).squeeze(-1) + next_beta * next_q.amax(-1)
            target = rollout.reward + c.gamma * (~rollout.terminated).float().unsqueeze(-1) * utility
            advantage = next_q.gather(-1, option).squeeze(-1) - next_q.amax(-1) + c.termination_reg
        q_loss = (q.gather(-1, option).squeeze(-1) - target).pow(2).mean()
        termination_loss = (self.beta(next_obs).gather(-1, option).squeeze(-1) * advantage).mean()
        self.optimizer.zero_grad()
        (q_loss + termination_loss).backward()
        self.optimizer.step()
        metrics = {"q_loss": q_loss.detach(), "termination_loss": termination_loss.detach(),
                   "decisions": rollout.decision.float().mean()}
        return UpdateResult(metrics, {"option_values": q.detach()})


class LearnedTermination(Termination):
    """An option ends where its learned ``beta_w(s)`` says so: sampled while training, ``beta > 1/2``
    when acting greedily; a fresh episode always picks a new option."""

    holds = True

    def bind(self, level) -> None:
        self.level = level

    def decide(self, now: Moment) -> torch.Tensor:
        if now.held is None:
            return torch.ones_like(now.fresh)
        with torch.no_grad():
            beta = self.level.learner.beta(now.obs).gather(-1, now.held.unsqueeze(-1)).squeeze(-1)  # [B, N]
        ends = torch.rand_like(beta) < beta if self.level.training else beta > 0.5
        return now.fresh | ends.any(-1)  # the copy's agents decide together (one decision flag per copy)


LEARNERS["option_critic"] = OptionCritic
TERMINATIONS["learned"] = LearnedTermination

LEVELS = [
    {"learner": "ppo"},
    {"learner": "option_critic", "command": "discrete(4)", "termination": "learned"},
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="vmas_balance", help="a registered env")
    parser.add_argument("--n-agents", type=int, default=4, help="env agents")
    parser.add_argument("--steps", type=int, default=200_000, help="env steps of training, all copies together")
    parser.add_argument("--num-envs", type=int, default=32, help="env copies stepping together")
    parser.add_argument("--rollout-steps", type=int, default=64, help="env steps per copy between updates")
    parser.add_argument("--max-steps", type=int, default=100, help="episode length")
    parser.add_argument("--eval-envs", type=int, default=8, help="copies of the greedy evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    def env(num_envs: int, seed: int) -> EpisodeMonitor:
        return EpisodeMonitor(make_env(args.env, num_envs=num_envs, seed=seed, n_agents=args.n_agents,
                                       max_steps=args.max_steps))

    train_env = env(args.num_envs, args.seed)
    hierarchy = build_levels(train_env, LEVELS, {"ppo": {"transitions_per_update": None}})
    evaluator = hierarchy.attach(env(args.eval_envs, args.seed + 10_000))
    print(describe_hierarchy(hierarchy))

    iterations = max(1, args.steps // (args.num_envs * args.rollout_steps))
    hierarchy.reset(seed=args.seed)
    train_return = math.nan
    for iteration in range(iterations):
        hierarchy.rollout(args.rollout_steps)
        metrics = hierarchy.update(progress=iteration / iterations)
        mean_return, episodes = train_env.pop()
        if episodes:
            train_return = mean_return
            env_steps = (iteration + 1) * args.num_envs * args.rollout_steps
            decisions = float(metrics["level1/optioncritic/decisions"])
            print(f"env steps {env_steps:>9,}  train/return {train_return:9.3f}  "
                  f"options end at {decisions:.2f} of the steps")
    option_values = hierarchy.published[1].outputs["option_values"]  # [T, B, N, K]
    final = evaluate(evaluator, seed=args.seed + 10_000)
    print("final metrics:")
    print(f"  train/return {train_return:.3f}")
    for name, value in final.items():
        print(f"  {name} {value:.3f}")
    print(f"  option values: shape {tuple(option_values.shape)}")


if __name__ == "__main__":
    main()
