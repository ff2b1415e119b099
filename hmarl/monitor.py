"""Episode returns measured at the env, accumulated on the device (no per-step sync)."""
from __future__ import annotations

import torch

from hmarl.spec import MultiAgentEnv, Tensor, TimeStep


class EpisodeMonitor:
    """Wraps an env; sums each copy's reward (mean over agents) until its episode ends.

    ``pop()`` returns the mean return of the episodes finished since the last call
    (NaN if none) and their count. Envs that report ``info["success"]`` on the step
    that ends an episode also get per-copy success counts (``pop_success``), and the
    per-episode scalars an env names in its ``episode_metrics`` capability (reported in
    ``info`` on the step that ends an episode) are averaged by ``pop_episode_metrics``.
    """

    def __init__(self, env: MultiAgentEnv):
        self.env = env
        self.spec = env.spec
        device = env.spec.device
        self._running = torch.zeros(env.spec.num_envs, device=device)
        self._total = torch.zeros((), device=device)
        self._count = torch.zeros((), device=device)
        self._successes = torch.zeros(env.spec.num_envs, device=device)
        self._episodes = torch.zeros(env.spec.num_envs, device=device)
        self._metric_names = list(env.spec.capabilities.get("episode_metrics", []))
        self._metrics = torch.zeros(len(self._metric_names), device=device)

    def reset(self, seed: int | None = None) -> TimeStep:
        """Reset the env; returns in progress are dropped."""
        self._running.zero_()
        return self.env.reset(seed)

    def step(self, actions: Tensor) -> TimeStep:
        """Step the env and add the agent-mean reward to each copy's running return."""
        ts = self.env.step(actions)
        self._running += ts.reward.mean(-1)
        done = ts.done
        self._total += (self._running * done).sum()
        self._count += done.sum()
        self._running.masked_fill_(done, 0.0)
        if "success" in ts.info:
            self._successes += ts.info["success"]
            self._episodes += done
        for index, name in enumerate(self._metric_names):
            self._metrics[index] += (ts.info[name] * done).sum()
        return ts

    def pop_episode_metrics(self) -> dict[str, float]:
        """Mean of each ``episode_metrics`` scalar over the episodes finished since the last ``pop``
        (call before ``pop``, which counts those episodes)."""
        count = float(self._count)
        means = {name: float(total) / count for name, total in zip(self._metric_names, self._metrics)} if count else {}
        self._metrics.zero_()
        return means

    def pop_success(self) -> torch.Tensor | None:
        """Per-copy success rate over the episodes finished since the last call (None if the
        env reports no success)."""
        if not bool(self._episodes.any()):
            return None
        rate = self._successes / self._episodes.clamp(min=1)
        self._successes.zero_()
        self._episodes.zero_()
        return rate

    def pop(self) -> tuple[float, int]:
        """Mean return of the episodes finished since the last call (NaN if none) and their count."""
        count = int(self._count)
        mean = float(self._total) / count if count else float("nan")
        self._total.zero_()
        self._count.zero_()
        return mean, count
