"""TAG's simple-spread heuristic (Sec. 5): the paper's assign-once variant and our re-planning one."""
import pytest
import torch
from gymnasium import spaces

from hmarl.algorithms.heuristic import HeuristicConfig, SpreadHeuristic
from hmarl.learner import AgentIO
from hmarl.spec import EnvSpec

# two agents, two landmarks; an observation is [velocity (2), offsets to landmark 0, 1 (4)]
SPEC = EnvSpec(n_agents=2, obs_dim=6, action_space=spaces.Box(-1.0, 1.0, (2,)), max_steps=10, num_envs=1,
               obs_slices={"velocity": slice(0, 2), "landmarks": slice(2, 6)})


def heuristic(assignment: str) -> SpreadHeuristic:
    io = AgentIO(n_agents=2, obs_dim=6, child_obs_dim=6, action_space=SPEC.action_space)
    return SpreadHeuristic(io, HeuristicConfig(speed_gain=1.0, assignment=assignment), SPEC)


def observation(*offsets: tuple[float, float, float, float]) -> torch.Tensor:
    """[1 copy, 2 agents, 6]: at rest, each agent's offsets to landmarks 0 and 1 along x."""
    return torch.tensor([[[0.0, 0.0, a, 0.0, b, 0.0] for a, b in offsets]])


# Step 0: agent 0 is 1 from landmark 0 and 3 from landmark 1, agent 1 is 2 and 5 away. Identity:
# 1 + 5 = 6; swapped: 3 + 2 = 5, so agent 0 heads for landmark 1 (+3) and agent 1 for landmark 0 (+2).
START = observation((1.0, 3.0), (2.0, 5.0))
# Step 1, after a push: identity 0.5 + 0.25 beats swapped 4 + 4.
PUSHED = observation((0.5, 4.0), (4.0, -0.25))


def test_the_paper_heuristic_keeps_the_assignment_of_the_first_step():
    """TAG Sec. 5: "assigns and directs each agent to a specific goal along the shortest path from
    their initial position"; the force is speed_gain * offset - velocity, clipped to [-1, 1]."""
    paper = heuristic("initial")
    assert paper.recurrent
    state = paper.initial_state(1)
    action, _, state = paper.act_recurrent(START, state)
    torch.testing.assert_close(state, torch.tensor([[2.0, 1.0]]))  # landmark + 1: 1 and 0
    torch.testing.assert_close(action, torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))  # +3 and +2, clipped
    action, _, state = paper.act_recurrent(PUSHED, state)
    torch.testing.assert_close(state, torch.tensor([[2.0, 1.0]]))  # kept
    torch.testing.assert_close(action, torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))  # +4 and +4, clipped
    # a copy whose episode starts again (its state zeroed by the Level) assigns anew
    _, _, state = paper.act_recurrent(PUSHED, torch.zeros_like(state))
    torch.testing.assert_close(state, torch.tensor([[1.0, 2.0]]))


def test_the_replanning_heuristic_reassigns_at_every_step():
    replan = heuristic("replan")
    assert not replan.recurrent
    torch.testing.assert_close(replan.act(START)[0], torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))
    # after the push the identity is best: agent 0 to landmark 0 (+0.5), agent 1 to landmark 1 (-0.25)
    torch.testing.assert_close(replan.act(PUSHED)[0], torch.tensor([[[0.5, 0.0], [-0.25, 0.0]]]))


def test_an_unknown_assignment_is_refused():
    with pytest.raises(ValueError, match="unknown assignment 'nearest'; available: replan, initial"):
        HeuristicConfig(assignment="nearest")
