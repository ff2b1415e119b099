"""Episode returns measured at the env, accumulated on the device (no per-step sync)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from hmarl.spec import MultiAgentEnv, Tensor, TimeStep


@dataclass
class FirstEpisodes:
    """Each copy's first episode since the monitor's last reset, ``[B]`` per field."""

    finished: Tensor
    """Whether the copy has finished an episode since the reset (bool)."""
    returns: Tensor
    """Its return (NaN while unfinished)."""
    success: Tensor | None
    """Its ``info["success"]`` (NaN while unfinished); None if the env reports no success."""
    metrics: dict[str, Tensor]
    """Each ``episode_metrics`` scalar of it (NaN while unfinished)."""

    def mean(self, values: Tensor, among: Tensor | None = None) -> float:
        """The mean of ``values [B]`` over the finished copies (those of the ``among [B]`` mask if
        given), each copy once; NaN if none finished."""
        keep = self.finished if among is None else self.finished & among
        return float(values[keep].mean())


class EpisodeMonitor:
    """Wraps an env; sums each copy's reward (mean over agents) until its episode ends.

    ``pop()`` returns the mean return of the episodes finished since the last call
    (NaN if none) and their count. Envs whose ``EnvSpec.episode_metrics`` name ``success``
    (``info["success"]`` on the step that ends an episode) also get per-copy success counts
    (``pop_success``), and the other per-episode scalars they name (reported in ``info`` on
    the step that ends an episode) are averaged by ``pop_episode_metrics``.

    It also keeps each copy's *first* episode since the last ``reset`` (``first_episodes``):
    evaluation counts every copy once, so copies whose episodes end early do not weigh more.
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
        self._metric_names = [name for name in env.spec.episode_metrics if name != "success"]
        self._metrics = torch.zeros(len(self._metric_names), device=device)
        self._first_finished = torch.zeros(env.spec.num_envs, dtype=torch.bool, device=device)
        self._first_return = torch.full((env.spec.num_envs,), float("nan"), device=device)
        self._first_success = torch.full_like(self._first_return, float("nan"))
        self._first_metrics = torch.full((len(self._metric_names), env.spec.num_envs), float("nan"), device=device)
        self._reports_success = "success" in env.spec.episode_metrics

    def reset(self, seed: int | None = None) -> TimeStep:
        """Reset the env; returns in progress and the first episodes recorded are dropped."""
        self._running.zero_()
        self._first_finished.zero_()
        for record in (self._first_return, self._first_success, self._first_metrics):
            record.fill_(float("nan"))
        return self.env.reset(seed)

    def step(self, actions: Tensor) -> TimeStep:
        """Step the env and add the agent-mean reward to each copy's running return."""
        ts = self.env.step(actions)
        self._running += ts.reward.mean(-1)
        done = ts.done
        first = done & ~self._first_finished
        self._first_finished |= done
        self._first_return = torch.where(first, self._running, self._first_return)
        self._total += (self._running * done).sum()
        self._count += done.sum()
        self._running.masked_fill_(done, 0.0)
        if self._reports_success:
            self._successes += ts.info["success"]
            self._episodes += done
            self._first_success = torch.where(first, ts.info["success"].float(), self._first_success)
        for index, name in enumerate(self._metric_names):
            self._metrics[index] += (ts.info[name] * done).sum()
            self._first_metrics[index] = torch.where(first, ts.info[name].float(), self._first_metrics[index])
        return ts

    def close(self) -> None:
        """Close the env."""
        self.env.close()

    def render(self):
        """The env's frame (``uint8 [H, W, 3]``, copy 0)."""
        return self.env.render()

    def first_episodes(self) -> FirstEpisodes:
        """Each copy's first episode since the last ``reset``: return, success, episode metrics."""
        return FirstEpisodes(finished=self._first_finished.clone(), returns=self._first_return.clone(),
                             success=self._first_success.clone() if self._reports_success else None,
                             metrics={name: self._first_metrics[index].clone()
                                      for index, name in enumerate(self._metric_names)})

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
