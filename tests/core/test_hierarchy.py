"""The Hierarchy's coordinated update: which transitions count, what rollouts bootstrap from,
when each level updates, and what the level above sees after a communication function learns."""
import pytest
import torch

from hmarl import LevelSpec, build_hierarchy
from hmarl.comm import Autoencoder, Communication
from hmarl.learner import UpdateResult
from tests.toys import Scripted, ToyEnv


class Recording(Scripted):
    """A scripted learner that counts as on-policy and keeps the rollouts it is updated on."""

    on_policy = True
    publishes = frozenset({"advantages"})

    def __init__(self, io, policy, transitions_per_update=None):
        super().__init__(io, policy)
        self.transitions_per_update = transitions_per_update
        self.rollouts = []

    def update(self, rollout, ctx):
        self.rollouts.append(rollout)
        return UpdateResult()


def build(env, specs, policies, transitions=None, comm=None):
    learners = []

    def make(spec, io, index):
        learners.append(Recording(io, policies[index], (transitions or {}).get(index)))
        return learners[-1]

    hierarchy = build_hierarchy(env, specs, make)
    if comm is not None:  # a communication function the registry does not know (a user's own)
        bottom = hierarchy.levels[0]
        bottom.comm = comm
        hierarchy.comms[0] = comm
    return hierarchy, learners


def plays(value):
    return lambda obs, call: torch.full(obs.shape[:2], value, dtype=torch.long)


def test_steps_after_an_episode_ends_inside_the_upper_period_count_in_no_loss():
    """Episodes last 3 env steps, the level above decides every 5. The first episode ends at
    step 3 of the first period: the bottom's steps 4 and 5 act on the ended episode's command
    and are masked. The level above decides in the second episode, which ends at the first
    step of that period: its steps 2 to 5 are masked."""
    env = ToyEnv(num_envs=2, n_agents=4, max_steps=3)
    specs = [LevelSpec("x"), LevelSpec("x", group_size=4, period=5, command="discrete(5)")]
    hierarchy, (bottom, top) = build(env, specs, [plays(0), plays(3)])
    hierarchy.reset(0)
    hierarchy.rollout(10)
    hierarchy.update(0.0)
    mask = bottom.rollouts[0].mask  # [10, B, 4]
    expected = torch.tensor([1, 1, 1, 0, 0, 1, 0, 0, 0, 0], dtype=torch.bool)
    assert mask.shape == (10, 2, 4)
    assert torch.equal(mask, expected[:, None, None].expand(10, 2, 4))
    assert top.rollouts[0].mask.all()  # the top holds no command: its every step counts
    # the masked steps start a new episode (t = 0) under the previous episode's command
    assert bottom.rollouts[0].obs[3, :, :, 1].eq(0).all()


class DeathsToy(ToyEnv):
    """ToyEnv whose agents in ``dead`` are reported dead (``info["alive"]``) from the start."""

    def __init__(self, dead, **kwargs):
        super().__init__(**kwargs)
        self.dead = dead

    def _alive(self, ts):
        alive = torch.ones(self.spec.num_envs, self.spec.n_agents, dtype=torch.bool)
        alive[:, self.dead] = False
        ts.info["alive"] = alive
        return ts

    def reset(self, seed=None):
        return self._alive(super().reset(seed))

    def step(self, actions):
        return self._alive(super().step(actions))


def test_dead_agents_count_in_no_loss_and_an_upper_agent_lives_while_a_child_does():
    env = DeathsToy(dead=[1, 2, 3], num_envs=2, n_agents=4)
    specs = [LevelSpec("x"), LevelSpec("x", group_size=2, command="discrete(5)")]
    hierarchy, (bottom, upper) = build(env, specs, [plays(0), lambda obs, call: torch.zeros(obs.shape[:2],
                                                                                         dtype=torch.long)])
    hierarchy.reset(0)
    hierarchy.rollout(3)
    hierarchy.update(0.0)
    assert bottom.rollouts[0].mask.tolist() == [[[True, False, False, False]] * 2] * 3
    # upper agent 0 owns units 0 (alive) and 1; agent 1 owns units 2 and 3 (both dead)
    assert upper.rollouts[0].mask.tolist() == [[[True, False]] * 2] * 3
    # per child slot: only unit 0 (agent 0's slot 0) is alive
    assert upper.rollouts[0].child_mask.tolist() == [[[[True, False], [False, False]]] * 2] * 3


def test_the_bootstrap_observation_carries_the_command_of_the_next_step():
    """A rollout ends where every level above decides anew: the bottom's last observation
    must carry the command the level above gives next (GAE's V(s_T) of the bottom's value
    function conditions on it), not the command of the rollout's last period."""
    env = ToyEnv(num_envs=2, n_agents=4)
    specs = [LevelSpec("x"), LevelSpec("x", group_size=4, period=2, command="discrete(5)")]
    # the top commands call index (0, 1, 2, ...) to every unit
    hierarchy, (bottom, top) = build(env, specs, [plays(0), lambda obs, call: torch.full(
        obs.shape[:2], call, dtype=torch.long) * (5 ** 4 - 1) // 4])
    hierarchy.reset(0)
    hierarchy.rollout(4)  # the top decides at env steps 0 and 2 (calls 0 and 1)
    hierarchy.update(0.0)
    commands = lambda obs: obs[..., 3:].argmax(-1)  # noqa: E731  the one-hot after the env's 3 features
    rollout = bottom.rollouts[0]
    assert commands(rollout.obs).flatten(1).tolist() == [[0] * 8, [0] * 8, [1] * 8, [1] * 8]
    assert commands(rollout.last_obs).flatten().tolist() == [2] * 8  # the top's next decision (call 2)


class Doubler(Communication):
    """A user-defined communication function that learns: each update doubles its scale."""

    def __init__(self, n_agents, in_dim):
        super().__init__(n_agents, in_dim)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, child_obs):
        return child_obs * self.scale

    def update(self, child_obs):
        with torch.no_grad():
            self.scale.mul_(2)
        return {}


@pytest.mark.parametrize("make_comm", [lambda: Autoencoder(4, 3), lambda: Doubler(4, 3)],
                         ids=["autoencoder", "user-defined"])
def test_the_next_rollout_starts_with_messages_of_the_updated_communication(make_comm):
    """TAG's learned phi changes at every update; the first observation of the next rollout
    seen by the level above must be encoded by the new phi, like every later one."""
    torch.manual_seed(0)
    env = ToyEnv(num_envs=2, n_agents=4)
    specs = [LevelSpec("x"), LevelSpec("x", group_size=4, command="discrete(5)")]
    hierarchy, (bottom, top) = build(env, specs, [plays(1), plays(0)], comm=make_comm())
    hierarchy.reset(0)
    hierarchy.rollout(2)
    hierarchy.update(0.0)
    level = hierarchy.levels[0]
    expected = level.comm(level._child_obs(level._below_ts.obs, None)).detach()  # [B, 4, out]
    hierarchy.rollout(2)
    # the top acted twice in rollout 1, once for the bottom's bootstrap command, then rollout 2
    first = top.seen[3][..., :expected[0].numel()]
    assert torch.allclose(first, expected.reshape(2, 1, -1))


def test_each_level_updates_when_its_buffer_holds_its_transitions():
    """TAG Appendix A gives each level a buffer of its own transitions: with 16 transitions
    each, 8-step rollouts on 2 copies fill the bottom's (8 x 2) every rollout, the middle's
    (acting every 2 env steps: 4 x 2) every 2 rollouts and the top's (2 x 2) every 4; the
    rollouts a level updates on are consecutive in time."""
    env = ToyEnv(num_envs=2, n_agents=4, max_steps=1000)
    specs = [LevelSpec("x"), LevelSpec("x", group_size=2, period=2, command="discrete(5)"),
             LevelSpec("x", group_size=2, period=2, command="discrete(5)")]
    hierarchy, learners = build(env, specs, [plays(0), plays(0), plays(0)], transitions={0: 16, 1: 16, 2: 16})
    assert hierarchy.rollouts_per_update(8) == [1, 2, 4]
    hierarchy.reset(0)
    updated = []
    for _ in range(4):
        hierarchy.rollout(8)
        updated.append([bool(m) for m in hierarchy.ready()])
        hierarchy.update(0.0)
    assert updated == [[True, False, False], [True, True, False], [True, False, False], [True, True, True]]
    assert [len(learner.rollouts) for learner in learners] == [4, 2, 1]
    top = learners[2].rollouts[0]
    assert top.obs.shape[0] == 8  # 4 rollouts x 2 top steps
    env_step = top.obs[:, 0, 0, 1]  # the env step counter seen by the top's first child
    assert env_step.tolist() == [4.0 * i for i in range(8)]


def test_a_level_learning_from_the_advantages_above_must_update_with_it():
    env = ToyEnv(num_envs=2, n_agents=4)
    specs = [LevelSpec("x", reward="upper_advantage"), LevelSpec("x", group_size=4, command="discrete(5)")]
    hierarchy, _ = build(env, specs, [plays(0), plays(0)], transitions={1: 64})
    with pytest.raises(ValueError, match="level 0 learns from the advantages of level 1, so the two must "
                                         "update together.*every 1 and 4 rollouts"):
        hierarchy.check_rollout_length(8)
