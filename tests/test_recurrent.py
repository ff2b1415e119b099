"""Recurrent policies (PPOConfig ``recurrent: gru``): the Level's per-copy hidden state, chunked
BPTT, a memory task only a recurrent policy solves, GRU levels in hierarchies, checkpoints."""
from __future__ import annotations

import math

import pytest
import torch
from gymnasium import spaces

from hmarl import EnvSpec, Learner, TimeStep, UpdateContext, UpdateResult
from hmarl.algorithms.build import build_levels
from hmarl.algorithms.onpolicy import clipped_surrogate, clipped_value_loss, standardize, weighted_mean
from hmarl.algorithms.ppo import PPOConfig
from hmarl.comm import COMMUNICATION
from hmarl.run.experiment import CONFIG_DIR, RunConfig, Trainer, load_yaml
from hmarl.hierarchy import Hierarchy
from hmarl.level import Level
from hmarl.rewards import SumUp
from hmarl.strategies import Termination
from tests.toys import EpisodesEnv, ToyEnv, fit_interrupted


class StepCounter(Learner):
    """A recurrent learner whose state counts the steps it acted since its state was last zeroed."""

    recurrent = True

    def initial_state(self, num_envs, device="cpu"):
        return torch.zeros(num_envs, 1)

    def act_recurrent(self, obs, state, deterministic=False):
        b, n = obs.shape[:2]
        return torch.zeros(b, n, dtype=torch.long), torch.zeros(b, n), state + 1

    def update(self, rollout, ctx):
        return UpdateResult()


class EveryOtherStep(Termination):
    """Holds: a new action at episode starts and every second step."""

    holds = True

    def decide(self, now):
        return (now.age % 2 == 0) | now.fresh


def counting_level(env, termination=None) -> Hierarchy:
    io_level = Level(env, StepCounter(None), COMMUNICATION["concat"](env.spec.n_agents, env.spec.obs_dim),
                     SumUp(env.spec, 1), grouping=[[i] for i in range(env.spec.n_agents)], termination=termination)
    io_level.learner.io = io_level.io
    return Hierarchy(env, [io_level])


def stored_states(hierarchy: Hierarchy, steps: int) -> list[list[int]]:
    """The state each of ``steps`` steps started from, per copy."""
    level = hierarchy.levels[0]
    hierarchy.reset(0)
    hierarchy.rollout(steps)
    return level.buffer.rollout(level.bootstrap_observation()).state[..., 0].T.int().tolist()


def test_the_state_is_zeroed_exactly_where_a_copys_episode_starts():
    """By hand: copy 0's episodes last 2 steps, copy 1's 3. A state that counts the steps acted
    reads 0 at each episode's first step and counts up within it, never reset elsewhere; the
    rollout stores the state each step started from."""
    states = stored_states(counting_level(EpisodesEnv([2, 3], [1.0, 1.0], max_steps=50)), 7)
    assert states == [[0, 1, 0, 1, 0, 1, 0], [0, 1, 2, 0, 1, 2, 0]]


def test_under_a_holding_termination_the_state_advances_only_for_the_deciding_copies():
    """By hand: deciding at episode starts and every second step, in episodes of 2 and 3 steps,
    the count advances at ages 0 and 2 only: copy 1 (3-step episodes) holds its state at its
    second step."""
    states = stored_states(counting_level(EpisodesEnv([2, 3], [1.0, 1.0], max_steps=50), EveryOtherStep()), 7)
    assert states == [[0, 1, 0, 1, 0, 1, 0], [0, 1, 1, 0, 1, 1, 0]]


def test_evaluation_carries_its_own_state():
    """An attached (evaluation) hierarchy over other env copies has its own states, from zeros."""
    hierarchy = counting_level(EpisodesEnv([5, 5], [1.0, 1.0], max_steps=50))
    hierarchy.reset(0)
    hierarchy.rollout(3)
    evaluator = hierarchy.attach(EpisodesEnv([5, 5, 5], [1.0, 1.0, 1.0], max_steps=50)).train(False)
    evaluator.reset(0)
    evaluator.top.step(None)
    assert evaluator.levels[0]._state.flatten().tolist() == [1, 1, 1]
    assert hierarchy.levels[0]._state.flatten().tolist() == [3, 3]


def gru_level(n_agents=2, copies=3, chunk=12, steps=12, **options):
    """A one-level GRU PPO over a ToyEnv whose copies end episodes at different steps, with a
    rollout of ``steps`` collected (its first step at a reset)."""
    torch.manual_seed(0)
    env = ToyEnv(num_envs=copies, n_agents=n_agents, n_actions=3, max_steps=5, terminal_action=2)
    config = dict(recurrent="gru", rnn_hidden=8, bptt_chunk=chunk, hidden_sizes=[16], num_minibatches=1, **options)
    hierarchy = build_levels(env, [{"learner": "ppo", "options": config}], learner_options={})
    hierarchy.reset(0)
    hierarchy.rollout(steps)
    level = hierarchy.levels[0]
    return level.learner, level.buffer.rollout(level.bootstrap_observation())


def reference_outputs(learner, rollout):
    """The GRUs run step by step over the whole rollout with ``torch.nn.GRUCell`` (the learner's
    weights copied in, one cell per agent), from zeros, zeroed after each episode end: the actor's
    and the critic's outputs ``[T, B, N, ...]``, the actor's states ``[T, B, N, H]`` and the cells."""
    def cells(gru):
        out = []
        for i in range(gru.n_nets):
            cell = torch.nn.GRUCell(gru.weight_ih.shape[1], gru.hidden)
            cell.weight_ih, cell.weight_hh = (torch.nn.Parameter(w[i].T) for w in (gru.weight_ih, gru.weight_hh))
            cell.bias_ih, cell.bias_hh = (torch.nn.Parameter(b[i, 0]) for b in (gru.bias_ih, gru.bias_hh))
            out.append(cell)
        return out

    actor_cells, critic_cells = cells(learner.actor_rnn), cells(learner.critic_rnn)
    steps, copies, n = rollout.obs.shape[:3]
    h_actor = torch.zeros(copies, n, learner.config.rnn_hidden)
    h_critic = torch.zeros(copies, n, learner.config.rnn_hidden)
    actor_out, critic_out, states = [], [], []
    for t in range(steps):
        if t:
            keep = (~rollout.done[t - 1]).float().view(-1, 1, 1)
            h_actor, h_critic = h_actor * keep, h_critic * keep
        states.append(h_actor)
        obs = rollout.obs[t]
        h_actor = torch.stack([actor_cells[i](obs[:, i], h_actor[:, i]) for i in range(n)], 1)
        h_critic = torch.stack([critic_cells[i](obs[:, i], h_critic[:, i]) for i in range(n)], 1)
        actor_out.append(learner._actor_head(h_actor))
        critic_out.append(learner._critic_head(h_critic))
    return torch.stack(actor_out), torch.stack(critic_out), torch.stack(states), actor_cells + critic_cells


def test_one_chunk_of_the_whole_rollout_gives_the_full_sequence_loss_and_gradient():
    """With ``bptt_chunk`` equal to the rollout length (12 steps, episodes ending at different
    steps per copy), the chunked losses and their gradients equal those of running the GRUs over
    the full sequence by hand (``torch.nn.GRUCell``, states zeroed at each episode start); and
    the states stored while acting are the hand-run states."""
    learner, rollout = gru_level()
    assert rollout.done.any() and not rollout.done.all()
    batch = learner.training_batch(rollout)
    assert batch.rows["obs"].shape[:2] == (3, 12)  # one chunk per copy
    terms = learner.losses(batch.rows)

    actor_out, critic_out, states, cells = reference_outputs(learner, rollout)
    torch.testing.assert_close(rollout.state[:, :, :2], states)  # the actor's rows of the stored state
    rows = lambda x: x.transpose(0, 1).flatten(0, 1)  # noqa: E731  [T, B, ...] -> the chunk rows' order
    mb = {key: value.flatten(0, 1) for key, value in batch.rows.items() if key not in ("state", "reset")}
    new_log_prob, entropy = learner._evaluate_out(rows(actor_out), mb["action"])
    weight, c = mb["weight"], learner.config
    pg_loss, approx_kl, _ = clipped_surrogate(new_log_prob, mb["log_prob"], standardize(mb["advantages"], weight),
                                              c.clip_coef)
    v_loss = clipped_value_loss(rows(critic_out), mb["values"], mb["returns"], c.clip_coef, c.clip_vloss)
    expected = {"pg_loss": weighted_mean(pg_loss, weight), "v_loss": weighted_mean(v_loss, weight),
                "entropy": weighted_mean(entropy, weight)}
    heads = [p for name, p in learner.named_parameters() if "rnn" not in name]
    grus = [getattr(gru, w) for gru in (learner.actor_rnn, learner.critic_rnn)
            for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    cell_params = [[getattr(cell, w) for cell in cells[k * 2:(k + 1) * 2]] for k in range(2)
                   for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value)
        got = torch.autograd.grad(terms[name].sum(), heads + grus, retain_graph=True, allow_unused=True,
                                  materialize_grads=True)
        want = torch.autograd.grad(value.sum(), heads + [p for group in cell_params for p in group],
                                   retain_graph=True, allow_unused=True, materialize_grads=True)
        for g, w in zip(got[:len(heads)], want[:len(heads)]):
            torch.testing.assert_close(g, w)
        per_cell = iter(want[len(heads):])
        for g, group in zip(got[len(heads):], cell_params):
            stacked = torch.stack([next(per_cell) for _ in group])  # [n, 3H, in] or [n, 3H]
            torch.testing.assert_close(g, stacked.transpose(1, 2) if stacked.dim() == 3 else stacked.unsqueeze(1))


def test_shorter_chunks_pad_and_start_from_the_stored_states():
    """``bptt_chunk`` 5 over 12 steps: 3 chunks per copy, the last padded with steps of weight 0;
    each chunk starts from the state stored at its first step."""
    learner, rollout = gru_level(chunk=5)
    rows = learner.training_batch(rollout).rows
    assert rows["obs"].shape[:2] == (9, 5)
    assert rows["weight"][6:, 2:].eq(0).all() and rows["weight"][:6].eq(1).all()
    torch.testing.assert_close(rows["state"][3:6], rollout.state[5])
    assert math.isfinite(float(learner.update(rollout, UpdateContext(0.0)).metrics["v_loss"]))


class CueEnv:
    """A memory task: a cue in {0, 1} is shown (as -1/+1) at an episode's first step only, zeros
    follow; at step ``k`` a flag asks for it and the agent earns 1 for playing the cue (0 else).
    Episodes last ``k + 1`` steps; the best return is 1, a memoryless policy's 1/2."""

    def __init__(self, num_envs: int, k: int = 4, seed: int = 0):
        self.k = k
        self.spec = EnvSpec(n_agents=1, obs_dim=2, action_space=spaces.Discrete(2), max_steps=k + 1,
                            num_envs=num_envs, name="cue")
        self.generator = torch.Generator().manual_seed(seed)
        self.t = torch.zeros(num_envs, dtype=torch.long)
        self.cue = torch.zeros(num_envs, dtype=torch.long)

    def _obs(self):
        cue = torch.where(self.t == 0, 2.0 * self.cue - 1, 0.0)
        return torch.stack([cue, (self.t == self.k).float()], -1).unsqueeze(1)

    def reset(self, seed=None):
        b = self.spec.num_envs
        self.t.zero_()
        self.cue = torch.randint(2, (b,), generator=self.generator)
        no = torch.zeros(b, dtype=torch.bool)
        return TimeStep(obs=self._obs(), reward=torch.zeros(b, 1), terminated=no, truncated=no.clone())

    def step(self, actions):
        reward = ((self.t == self.k) & (actions[:, 0] == self.cue)).float().unsqueeze(1)
        self.t += 1
        terminated = self.t > self.k
        final = self._obs()
        self.t[terminated] = 0
        self.cue = torch.where(terminated, torch.randint(2, self.cue.shape, generator=self.generator), self.cue)
        return TimeStep(obs=self._obs(), reward=reward, terminated=terminated,
                        truncated=torch.zeros_like(terminated), info={"final_obs": final})


def cue_return(recurrent, updates: int = 12, seed: int = 0) -> float:
    """Greedy return on 256 fresh episodes after ``updates`` PPO updates of 20 steps x 32 copies."""
    torch.manual_seed(seed)
    options = dict(recurrent=recurrent, rnn_hidden=16, bptt_chunk=10, hidden_sizes=[32], learning_rate=3e-3,
                   ent_coef=0.01, gamma=0.9)
    hierarchy = build_levels(CueEnv(32, seed=seed), [{"learner": "ppo", "options": options}], learner_options={})
    hierarchy.reset(seed)
    for i in range(updates):
        hierarchy.rollout(20)
        hierarchy.update(i / updates)
    evaluator = hierarchy.attach(CueEnv(256, seed=seed + 100)).train(False)
    evaluator.reset(0)
    return float(sum(evaluator.top.step(None).reward.sum() for _ in range(5)) / 256)


def test_only_the_recurrent_policy_remembers_the_cue():
    """The cue task (chunks of 10 steps span two episodes, so the state resets inside them): after
    12 updates the GRU policy plays the cue nearly always (measured 1.0 on seeds 0-4), the
    feed-forward one, which sees the same observation at every query, stays at chance (0.48-0.53)."""
    assert cue_return("gru") > 0.95
    assert abs(cue_return(False) - 0.5) < 0.12


def tiny_run(algorithm: str, env: str, tmp_path, block: str, options: dict, **updates) -> RunConfig:
    """The default config + two named configs, a tiny budget, ``options`` over the ``block`` learner block."""
    config = {**load_yaml(CONFIG_DIR / "default.yaml"), **load_yaml(CONFIG_DIR / "algorithms" / f"{algorithm}.yaml"),
              **load_yaml(CONFIG_DIR / "envs" / f"{env}.yaml")}
    config.update({"num_envs": 4, "rollout_steps": 40, "total_steps": 160, "eval_envs": 3, "eval_interval": 0,
                   "max_steps": 40, "progress": False, "checkpoint_dir": str(tmp_path / "ckpt"), **updates})
    config[block] = {**config[block], "transitions_per_update": None, **options}
    return RunConfig.from_config(config)


GRU = {"recurrent": "gru", "rnn_hidden": 16, "bptt_chunk": 8}


@pytest.mark.parametrize("algorithm, env, block", [
    ("tag_2ppo", "vmas_balance", None), ("mappo", "vmas_balance", "mappo"), ("himppo", "lbfws_hard", "graph_ppo"),
    ("tag_2mappo_ppo", "mpe_simple_spread", "mappo")])
def test_gru_levels_train_in_hierarchies(algorithm, env, block, tmp_path):
    """A GRU on the top of a 2-level TAG system (its level options), on MAPPO (flat; and the
    per-child heads of TAG's MAPPO levels) and on every graph PPO level of HiMPPO: each trains
    a few updates, moving its GRU's weights, with finite losses."""
    if block is None:  # only the top level is recurrent
        config = load_yaml(CONFIG_DIR / "algorithms" / f"{algorithm}.yaml")
        levels = [dict(level) for level in config["levels"]]
        levels[-1]["options"] = {**levels[-1].get("options", {}), **GRU}
        run = tiny_run(algorithm, env, tmp_path, "ppo", {}, levels=levels)
    else:
        run = tiny_run(algorithm, env, tmp_path, block, GRU)
    trainer = Trainer(run, lambda *entry: None, warn=None)
    recurrent = [level.learner.recurrent for level in trainer.hierarchy.levels]
    assert recurrent[-1] and (block is not None or not any(recurrent[:-1]))
    before = {k: v.clone() for k, v in trainer.hierarchy.state_dict().items() if "rnn" in k}
    assert before
    assert math.isfinite(trainer.fit())
    after = trainer.hierarchy.state_dict()
    assert any(not v.equal(after[k]) for k, v in before.items())
    assert all(math.isfinite(v) for n, v, _ in trainer.history if n.endswith("_loss"))


def test_a_recurrent_run_resumes_from_its_checkpoint_as_if_uninterrupted(tmp_path):
    """Checkpoints hold the GRUs' weights and optimizer state; hidden states are not saved, since
    every checkpoint restarts the episodes. A GRU TAG run crashed after its checkpoint and resumed
    ends with the uninterrupted run's weights and evaluations, bit for bit."""
    updates = dict(total_steps=4 * 80, rollout_steps=20, checkpoint_interval=160)
    uninterrupted = Trainer(tiny_run("tag_2ppo", "vmas_balance", tmp_path / "a", "ppo", GRU, **updates), warn=None)
    uninterrupted.fit()
    first = Trainer(tiny_run("tag_2ppo", "vmas_balance", tmp_path / "b", "ppo", GRU, **updates), warn=None)
    fit_interrupted(first, at_update=3)
    resumed = Trainer(tiny_run("tag_2ppo", "vmas_balance", tmp_path / "b", "ppo", GRU, resume=True, **updates),
                      warn=None)
    resumed.fit()
    assert resumed.start == 2
    expected, got = uninterrupted.hierarchy.state_dict(), resumed.hierarchy.state_dict()
    assert any("rnn" in k for k in expected) and expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    evals = lambda history: [v for n, v, s in history if n == "eval/return"]  # noqa: E731
    assert evals(resumed.history) == evals(uninterrupted.history)


@pytest.mark.parametrize("value, message", [("lstm", "recurrent must be false or gru, got 'lstm'"),
                                            (True, "recurrent must be false or gru, got True")])
def test_a_bad_recurrent_value_is_refused_in_one_line(value, message):
    with pytest.raises(ValueError, match=message):
        PPOConfig(recurrent=value)
    with pytest.raises(ValueError, match="bptt_chunk must be >= 1"):
        PPOConfig(recurrent="gru", bptt_chunk=0)
