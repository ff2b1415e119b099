"""Hand-made envs and scripted learners with outcomes known in advance."""
from __future__ import annotations

import torch
from gymnasium import spaces
from torch import nn

from hmarl import AgentIO, EnvSpec, Learner, Rollout, TimeStep, UpdateResult


class ToyEnv:
    """obs[b, i] = [i, t, last action of i]; reward[b, i] = action of i (+1 per step copy b).

    Copy b terminates when any agent plays ``terminal_action``; every copy is
    truncated at ``max_steps``. Records every action batch it receives. With
    ``positions(t) -> [B, N, 2]`` (t ``[B]``, the copies' step counters) it has positions;
    ``facts`` are more ``EnvSpec`` keywords (``obs_slices``, ``entities``).
    """

    def __init__(self, num_envs=2, n_agents=4, n_actions=5, max_steps=100, terminal_action=None,
                 continuous=False, facts=None, positions=None):
        space = spaces.Box(-1.0, 1.0, (2,)) if continuous else spaces.Discrete(n_actions)
        self.positions = positions
        self.spec = EnvSpec(n_agents=n_agents, obs_dim=3, action_space=space, max_steps=max_steps,
                            num_envs=num_envs, name="toy", positions=2 if positions else None, **(facts or {}))
        self.terminal_action = terminal_action
        self.t = torch.zeros(num_envs)
        self.last = torch.zeros(num_envs, n_agents)
        self.received: list[torch.Tensor] = []

    def _obs(self):
        b, n = self.spec.num_envs, self.spec.n_agents
        ids = torch.arange(n, dtype=torch.float).expand(b, n)
        return torch.stack([ids, self.t[:, None].expand(b, n), self.last], dim=-1)

    def reset(self, seed=None):
        self.t.zero_()
        self.last.zero_()
        b, n = self.spec.num_envs, self.spec.n_agents
        no = torch.zeros(b, dtype=torch.bool)
        info = {"positions": self.positions(self.t)} if self.positions else {}
        return TimeStep(obs=self._obs(), reward=torch.zeros(b, n), terminated=no, truncated=no.clone(),
                        info=info)

    def step(self, actions):
        self.received.append(actions.clone())
        value = actions.float() if actions.dim() == 2 else actions[..., 0]
        self.t += 1
        self.last = value
        reward = value + torch.arange(self.spec.num_envs, dtype=torch.float)[:, None]
        terminated = ((actions == self.terminal_action).any(1) if self.terminal_action is not None
                      else torch.zeros(self.spec.num_envs, dtype=torch.bool))
        truncated = (self.t >= self.spec.max_steps) & ~terminated
        final_obs = self._obs()
        info = {"final_obs": final_obs}
        if self.positions:
            info["final_positions"] = self.positions(self.t)
        done = terminated | truncated
        self.t[done] = 0
        self.last[done] = 0
        if self.positions:
            info["positions"] = self.positions(self.t)
        return TimeStep(obs=self._obs(), reward=reward, terminated=terminated, truncated=truncated, info=info)


class Scripted(Learner):
    """Plays ``policy(obs, call)``; records the observations it was shown."""

    def __init__(self, io: AgentIO, policy):
        super().__init__(io)
        self.policy = policy
        self.seen: list[torch.Tensor] = []

    def act(self, obs, deterministic=False):
        self.seen.append(obs.clone())
        action = self.policy(obs, len(self.seen) - 1)
        return action, torch.zeros(obs.shape[:2])

    def update(self, rollout, ctx):
        return UpdateResult()


def _io(n: int, obs_dim: int, space) -> AgentIO:
    return AgentIO(n_agents=n, obs_dim=obs_dim, child_obs_dim=obs_dim, action_space=space)


class Fn(nn.Module):
    """A network replaced by a known function."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def bandit_rollout(learner, make_obs, reward_fn, T: int, B: int, n: int) -> Rollout:
    """T steps of one-step episodes (every step terminated, final_obs = obs) played by ``learner``.

    ``make_obs(B, n) -> (obs, info)``; ``reward_fn(action, info) -> reward [B, n]``.
    """
    obs, actions, log_probs, rewards = [], [], [], []
    for _ in range(T):
        o, info = make_obs(B, n)
        a, lp = learner.act(o)
        obs.append(o)
        actions.append(a)
        log_probs.append(lp)
        rewards.append(reward_fn(a, info))
    obs = torch.stack(obs)
    ones = torch.ones(T, B, dtype=torch.bool)
    return Rollout(obs=obs, action=torch.stack(actions), log_prob=torch.stack(log_probs),
                   reward=torch.stack(rewards), terminated=ones, done=ones.clone(),
                   final_obs=obs.clone(), last_obs=make_obs(B, n)[0])


class EpisodesEnv:
    """Copy b's episodes last ``lengths[b]`` steps and return ``returns[b]``: every step pays
    each agent ``returns[b] / lengths[b]``; episodes end terminated (truncated at ``max_steps``).

    On the step that ends copy b's k-th episode (k counts from 0 since the last reset) ``info``
    reports ``success = success(b, k)`` and the episode metric ``completed = completed(b, k)``
    (0 on every other step). Actions are ignored; observations are zeros.
    """

    def __init__(self, lengths, returns, max_steps, success=lambda b, k: 0.0, completed=lambda b, k: 0.0,
                 n_agents=2, eval_groups=()):
        self.lengths = torch.tensor(lengths)
        self.per_step = torch.tensor(returns, dtype=torch.float) / self.lengths
        self.success, self.completed = success, completed
        self.spec = EnvSpec(n_agents=n_agents, obs_dim=1, action_space=spaces.Discrete(2), max_steps=max_steps,
                            num_envs=len(lengths), name="episodes",
                            episode_metrics=("success", "completed"), eval_groups=eval_groups)
        self.t = torch.zeros(len(lengths), dtype=torch.long)
        self.episode = torch.zeros(len(lengths), dtype=torch.long)

    def _obs(self):
        return torch.zeros(self.spec.num_envs, self.spec.n_agents, 1)

    def reset(self, seed=None):
        self.t.zero_()
        self.episode.zero_()
        no = torch.zeros(self.spec.num_envs, dtype=torch.bool)
        return TimeStep(obs=self._obs(), reward=torch.zeros(self.spec.num_envs, self.spec.n_agents),
                        terminated=no, truncated=no.clone(), info={})

    def step(self, actions):
        self.t += 1
        truncated = self.t >= self.spec.max_steps
        terminated = (self.t >= self.lengths) & ~truncated
        done = terminated | truncated
        outcome = lambda fn: torch.tensor([fn(b, int(k)) if d else 0.0  # noqa: E731
                                           for b, (k, d) in enumerate(zip(self.episode, done))])
        info = {"final_obs": self._obs(), "success": outcome(self.success), "completed": outcome(self.completed)}
        reward = self.per_step[:, None].expand(-1, self.spec.n_agents).clone()
        self.t[done] = 0
        self.episode += done.long()
        return TimeStep(obs=self._obs(), reward=reward, terminated=terminated, truncated=truncated, info=info)


def fit_interrupted(trainer, at_update: int) -> None:
    """Run ``trainer.fit()`` until Ctrl-C arrives at the ``at_update``-th coordinated update (which
    does not run), as a user interrupting a run would."""
    import pytest

    update, calls = trainer.hierarchy.update, []

    def interrupted(progress):
        calls.append(progress)
        if len(calls) == at_update:
            raise KeyboardInterrupt
        return update(progress)

    trainer.hierarchy.update = interrupted
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
