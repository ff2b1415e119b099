"""AgentMLP (stacked per-agent weights) and clip_grad_norm_per_agent."""
from __future__ import annotations

import pytest
import torch

from hmarl.nn import AgentMLP, clip_grad_norm_per_agent


def _randomize_biases(mlp: AgentMLP) -> None:
    # Biases start at zero; give them values so that a wrong bias slice would show.
    with torch.no_grad():
        for b in mlp.biases:
            b.normal_()


def _reference(mlp: AgentMLP, x: torch.Tensor, activation=torch.tanh) -> torch.Tensor:
    """Each agent through its own weights, one agent at a time, as plain matmuls."""
    n = x.shape[-2]
    outs = []
    for agent in range(n):
        net = 0 if mlp.n_nets == 1 else agent
        h = x[..., agent, :]
        for i in range(len(mlp.weights)):
            h = h @ mlp.weights[i][net] + mlp.biases[i][net][0]
            if i < len(mlp.weights) - 1:
                h = activation(h)
        outs.append(h)
    return torch.stack(outs, dim=-2)


@pytest.mark.parametrize("lead", [(5,), (4, 5)], ids=["B", "T,B"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_independent_agents_match_per_agent_loop(lead, activation):
    torch.manual_seed(0)
    n, d_in, d_out = 3, 4, 2
    mlp = AgentMLP(n, d_in, [8, 6], d_out, activation=activation, out_gain=1.0)
    _randomize_biases(mlp)
    assert mlp.n_nets == n
    assert [tuple(w.shape) for w in mlp.weights] == [(n, 4, 8), (n, 8, 6), (n, 6, 2)]
    assert [tuple(b.shape) for b in mlp.biases] == [(n, 1, 8), (n, 1, 6), (n, 1, 2)]
    x = torch.randn(*lead, n, d_in)
    out = mlp(x)
    assert out.shape == (*lead, n, d_out)
    act = torch.tanh if activation == "tanh" else torch.relu
    torch.testing.assert_close(out, _reference(mlp, x, act), rtol=1e-5, atol=1e-6)
    # The agents really have different weights: same input, different outputs.
    same = x[..., :1, :].expand_as(x).contiguous()
    out_same = mlp(same)
    assert not torch.allclose(out_same[..., 0, :], out_same[..., 1, :])


def test_orthogonal_init_per_agent():
    torch.manual_seed(0)
    mlp = AgentMLP(2, 5, [5], 5, out_gain=0.5)
    for agent in range(2):
        w0 = mlp.weights[0][agent]  # [in, out], square: gain sqrt(2) orthogonal
        torch.testing.assert_close(w0.T @ w0, 2.0 * torch.eye(5), rtol=0, atol=1e-5)
        w1 = mlp.weights[1][agent]
        torch.testing.assert_close(w1.T @ w1, 0.25 * torch.eye(5), rtol=0, atol=1e-5)
    assert not torch.equal(mlp.weights[0][0], mlp.weights[0][1])
    assert all(torch.equal(b, torch.zeros_like(b)) for b in mlp.biases)


@pytest.mark.parametrize("lead", [(6,), (2, 6)], ids=["B", "T,B"])
def test_shared_params_same_net_for_every_agent(lead):
    torch.manual_seed(1)
    n, d_in = 4, 3
    mlp = AgentMLP(n, d_in, [7], 2, share_params=True)
    _randomize_biases(mlp)
    assert mlp.n_nets == 1
    assert all(p.shape[0] == 1 for p in mlp.parameters())
    x = torch.randn(*lead, n, d_in)
    out = mlp(x)
    assert out.shape == (*lead, n, 2)
    torch.testing.assert_close(out, _reference(mlp, x), rtol=1e-5, atol=1e-6)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(mlp(x[..., perm, :]), out[..., perm, :], rtol=1e-5, atol=1e-6)


def test_gradient_stays_in_own_agent_slice():
    torch.manual_seed(2)
    mlp = AgentMLP(2, 3, [5, 5], 2)
    _randomize_biases(mlp)
    x = torch.randn(7, 2, 3)
    mlp(x)[:, 0].pow(2).sum().backward()
    for p in mlp.parameters():
        assert p.grad[0].abs().sum() > 0
        assert torch.equal(p.grad[1], torch.zeros_like(p.grad[1]))


def test_unknown_activation_raises():
    with pytest.raises(ValueError, match="activation"):
        AgentMLP(2, 3, [4], 1, activation="gelu")


def _agent_norms(params) -> torch.Tensor:
    return torch.stack([p.grad.pow(2).reshape(p.shape[0], -1).sum(1) for p in params]).sum(0).sqrt()


def test_clip_grad_norm_per_agent():
    n = 3
    a = torch.nn.Parameter(torch.zeros(n, 2, 2))
    b = torch.nn.Parameter(torch.zeros(n, 4))
    # Agent norms split over two params: 3 = |(1.8, 2.4)|, 0.1 = |(0.06, 0.08)|, 10 = |(6, 8)|.
    a.grad = torch.zeros(n, 2, 2)
    b.grad = torch.zeros(n, 4)
    a.grad[:, 0, 1] = torch.tensor([1.8, 0.06, 6.0])
    b.grad[:, 2] = torch.tensor([2.4, 0.08, 8.0])
    # Two shared params (leading dim 1), clipped together on their own norm |(1.2, 1.6)| = 2.
    s1 = torch.nn.Parameter(torch.zeros(1, 3))
    s2 = torch.nn.Parameter(torch.zeros(1, 2))
    s1.grad = torch.tensor([[1.2, 0.0, 0.0]])
    s2.grad = torch.tensor([[0.0, 1.6]])
    # A param without grad is skipped.
    no_grad = torch.nn.Parameter(torch.zeros(n, 2))
    a1_before, b1_before = a.grad[1].clone(), b.grad[1].clone()

    largest = clip_grad_norm_per_agent([a, no_grad, s1, b, s2], max_norm=1.0)

    assert largest.item() == pytest.approx(10.0, rel=1e-6)
    torch.testing.assert_close(_agent_norms([a, b]), torch.tensor([1.0, 0.1, 1.0]), rtol=0, atol=1e-5)
    # Agent 1 is below the limit: untouched, bit for bit.
    assert torch.equal(a.grad[1], a1_before) and torch.equal(b.grad[1], b1_before)
    # Directions are kept: agent 0 scaled by 1/3, agent 2 by 1/10.
    torch.testing.assert_close(a.grad[:, 0, 1], torch.tensor([0.6, 0.06, 0.6]), rtol=0, atol=1e-5)
    torch.testing.assert_close(b.grad[:, 2], torch.tensor([0.8, 0.08, 0.8]), rtol=0, atol=1e-5)
    assert a.grad.count_nonzero() == 3 and b.grad.count_nonzero() == 3
    # Shared group: norm 2 -> 1, independent of the per-agent norms.
    torch.testing.assert_close(s1.grad, torch.tensor([[0.6, 0.0, 0.0]]), rtol=0, atol=1e-5)
    torch.testing.assert_close(s2.grad, torch.tensor([[0.0, 0.8]]), rtol=0, atol=1e-5)
    assert no_grad.grad is None


def test_clip_grad_norm_shared_below_limit_and_largest_from_shared():
    p = torch.nn.Parameter(torch.zeros(2, 3))
    p.grad = torch.tensor([[0.3, 0.0, 0.4], [0.0, 0.0, 0.0]])  # norms 0.5, 0
    s = torch.nn.Parameter(torch.zeros(1, 2))
    s.grad = torch.tensor([[3.0, 4.0]])  # norm 5: the largest
    largest = clip_grad_norm_per_agent([p, s], max_norm=2.0)
    assert largest.item() == pytest.approx(5.0, rel=1e-6)
    assert torch.equal(p.grad, torch.tensor([[0.3, 0.0, 0.4], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(s.grad, torch.tensor([[1.2, 1.6]]), rtol=0, atol=1e-5)


def test_clip_grad_norm_no_grads_returns_zero():
    p = torch.nn.Parameter(torch.zeros(2, 3))
    assert clip_grad_norm_per_agent([p], 1.0).item() == 0.0
