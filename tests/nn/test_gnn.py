"""GNN layers, the disjoint-union batching, the dense form, and children -> parent pooling."""
from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import GATv2Conv, GraphConv

from hmarl.nn.gnn import (GNN_LAYERS, GraphEncoder, NeighbourConv, batched_edge_index, children_to_parent,
                          edges_to_adjacency, make_gnn_layer, parent_to_children, row_normalise)

DENSE_TYPES = ["neighbour", "graphconv"]


def _random_edges(batch: int, n: int, n_edges: int, generator: torch.Generator) -> torch.Tensor:
    """Random directed edges per copy; duplicates, self loops and isolated nodes all possible."""
    return torch.randint(n, (batch, 2, n_edges), generator=generator)


def _randomize(module: torch.nn.Module) -> None:
    # Zero-initialised biases would hide a wrong bias path.
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)


def test_registry_builds_each_type():
    assert isinstance(make_gnn_layer("neighbour", 3, 4), NeighbourConv)
    graphconv = make_gnn_layer("graphconv", 3, 4)
    assert isinstance(graphconv, GraphConv) and graphconv.aggr == "mean"
    assert isinstance(make_gnn_layer("gatv2", 3, 4), GATv2Conv)
    with pytest.raises(ValueError, match="unknown GNN layer type 'gcn'.*neighbour"):
        make_gnn_layer("gcn", 3, 4)


def test_neighbour_conv_by_hand():
    """Node 0 hears nodes 1 and 2, node 1 hears node 0, node 2 hears nobody."""
    torch.manual_seed(0)
    conv = NeighbourConv(2, 3, message_channels=4)
    _randomize(conv)
    x = torch.randn(3, 2)
    edges = torch.tensor([[1, 2, 0], [0, 0, 1]])
    relu = torch.relu

    def msg(i, j):
        return relu(conv.lin_target(x[i]) + conv.lin_source(x[j]))

    aggr = torch.stack([(msg(0, 1) + msg(0, 2)) / 2, msg(1, 0), torch.zeros(4)])
    expected = conv.lin_root(x) + conv.lin_aggr(aggr)
    torch.testing.assert_close(conv(x, edges), expected)


@pytest.mark.parametrize("layer_type", list(GNN_LAYERS))
def test_permutation_equivariance(layer_type):
    """Permuting the nodes and relabelling the edges permutes the outputs."""
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    layer = make_gnn_layer(layer_type, 5, 6)
    n = 7
    x = torch.randn(n, 5, generator=g)
    edges = _random_edges(1, n, 20, g)[0]
    perm = torch.randperm(n, generator=g)  # new node a is old node perm[a]
    relabel = torch.empty_like(perm)
    relabel[perm] = torch.arange(n)
    torch.testing.assert_close(layer(x[perm], relabel[edges]), layer(x, edges)[perm])


def test_batched_edge_index_offsets_copies():
    shared = torch.tensor([[0, 1], [1, 2]])
    torch.testing.assert_close(batched_edge_index(shared, 3, 2), torch.tensor([[0, 1, 3, 4], [1, 2, 4, 5]]))
    per_copy = torch.tensor([[[0], [1]], [[2], [0]]])
    torch.testing.assert_close(batched_edge_index(per_copy, 3, 2), torch.tensor([[0, 5], [1, 3]]))
    with pytest.raises(ValueError, match=r"\[2, E\] or \[3, 2, E\]"):
        batched_edge_index(per_copy, 3, 3)


@pytest.mark.parametrize("layer_type", list(GNN_LAYERS))
@pytest.mark.parametrize("shared", [False, True], ids=["per-copy", "shared"])
def test_disjoint_union_equals_each_copy_alone(layer_type, shared):
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    batch, n, d = 5, 6, 3
    encoder = GraphEncoder(d, 8, layers=2, layer_type=layer_type)
    x = torch.randn(batch, n, d, generator=g)
    edges = _random_edges(1 if shared else batch, n, 10, g)
    edges = edges[0] if shared else edges
    out = encoder(x, edges)
    assert out.shape == (batch, n, 8)
    for b in range(batch):
        h = x[b]
        for conv in encoder.convs:
            h = torch.tanh(conv(h, edges if shared else edges[b]))
        torch.testing.assert_close(out[b], h)


def test_encoder_accepts_extra_leading_dims():
    g = torch.Generator().manual_seed(3)
    encoder = GraphEncoder(3, 4, layers=1)
    x = torch.randn(2, 5, 6, 3, generator=g)  # [T, B, n, d]
    edges = _random_edges(10, 6, 8, g).view(2, 5, 2, 8)
    out = encoder(x, edges)
    assert out.shape == (2, 5, 6, 4)
    torch.testing.assert_close(out[1, 3], encoder(x[1, 3:4], edges[1, 3:4])[0])


def test_edges_to_adjacency_counts_edges_into_rows():
    edges = torch.tensor([[1, 1, 2], [0, 0, 1]])  # 1 -> 0 twice, 2 -> 1
    adj = edges_to_adjacency(edges, 3, 2)
    expected = torch.tensor([[0., 2, 0], [0, 0, 1], [0, 0, 0]])
    torch.testing.assert_close(adj, expected.expand(2, 3, 3))
    torch.testing.assert_close(row_normalise(adj)[0], torch.tensor([[0., 1, 0], [0, 0, 1], [0, 0, 0]]))


@pytest.mark.parametrize("layer_type", DENSE_TYPES)
@pytest.mark.parametrize("n, n_edges", [(4, 6), (8, 40), (12, 3)])
def test_dense_equals_sparse(layer_type, n, n_edges):
    g = torch.Generator().manual_seed(n)
    torch.manual_seed(n)
    batch = 6
    encoder = GraphEncoder(5, 7, layers=2, layer_type=layer_type)
    _randomize(encoder)
    x = torch.randn(batch, n, 5, generator=g, requires_grad=True)
    edges = _random_edges(batch, n, n_edges, g)
    sparse = encoder(x, edges)
    dense = encoder.forward_dense(x, edges_to_adjacency(edges, n, batch))
    torch.testing.assert_close(dense, sparse)
    weights = torch.randn(sparse.shape, generator=g)
    grad_sparse, = torch.autograd.grad((sparse * weights).sum(), x)
    grad_dense, = torch.autograd.grad((dense * weights).sum(), x)
    torch.testing.assert_close(grad_dense, grad_sparse)


@pytest.mark.parametrize("layer_type", list(GNN_LAYERS))
@pytest.mark.parametrize("shared", [False, True], ids=["per-copy", "shared"])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_neighbour_lists_equal_their_edge_index(layer_type, shared, k):
    """Every node hearing k others: the block form gives the edge index's outputs and gradients."""
    g = torch.Generator().manual_seed(10 + k)
    torch.manual_seed(10 + k)
    batch, n = 6, 5
    encoder = GraphEncoder(4, 7, layers=2, layer_type=layer_type)
    _randomize(encoder)
    x = torch.randn(2, batch, n, 4, generator=g, requires_grad=True)  # extra leading dim
    neighbours = torch.randint(n, (n, k) if shared else (2, batch, n, k), generator=g)
    copies = neighbours.expand(2, batch, n, k).reshape(2 * batch, n, k)
    target = torch.arange(n).repeat_interleave(k).expand(copies.shape[0], -1)
    edges = torch.stack([copies.flatten(1), target], 1)  # grouped by target, in list order
    sparse = encoder(x.reshape(2 * batch, n, 4), edges).view(2, batch, n, 7)
    block = encoder.forward_neighbours(x, neighbours)
    torch.testing.assert_close(block, sparse)
    weights = torch.randn(sparse.shape, generator=g)
    grad_sparse, = torch.autograd.grad((sparse * weights).sum(), x)
    grad_block, = torch.autograd.grad((block * weights).sum(), x)
    torch.testing.assert_close(grad_block, grad_sparse)


def test_dense_rejects_layers_without_a_dense_form():
    encoder = GraphEncoder(3, 4, layer_type="gatv2")
    with pytest.raises(ValueError, match="no dense form"):
        encoder.forward_dense(torch.zeros(1, 2, 3), torch.zeros(1, 2, 2))


def test_encoder_rejects_bad_options():
    with pytest.raises(ValueError, match="layers >= 1"):
        GraphEncoder(3, 4, layers=0)
    with pytest.raises(ValueError, match="unknown activation"):
        GraphEncoder(3, 4, activation="gelu")


def test_children_to_parent_by_hand():
    x = torch.tensor([[[1., 10], [2, 20], [3, 30], [4, 40]],
                      [[1., 10], [2, 20], [3, 30], [4, 40]]], requires_grad=True)
    assignment = torch.tensor([[0, 0, 2, 0], [1, 1, 1, 1]])
    out = children_to_parent(x, assignment, 3)
    expected = torch.tensor([[[7 / 3, 70 / 3], [0, 0], [3, 30]],  # parent 1 of copy 0 has no children
                             [[0., 0], [2.5, 25], [0, 0]]])
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    torch.testing.assert_close(x.grad[:, :, 0], torch.tensor([[1 / 3, 1 / 3, 1, 1 / 3], [0.25] * 4]))


def test_parent_to_children_gathers_each_childs_parent():
    parents = torch.tensor([[[1., 2], [3, 4]]])
    assignment = torch.tensor([[1, 0, 1]])
    torch.testing.assert_close(parent_to_children(parents, assignment),
                               torch.tensor([[[3., 4], [1, 2], [3, 4]]]))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("shared", [False, True], ids=["per-copy", "shared"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_fused_message_block_is_autograds_bit_for_bit(activation, shared, k):
    """NeighbourConv's message block (gathered sources plus targets, the activation, the mean over
    the k neighbours) runs as one autograd Function with fewer passes over the block: its outputs
    and every gradient are those of the plain autograd composition, bit for bit."""
    import hmarl.nn.gnn as gnn

    g = torch.Generator().manual_seed(20 + k)
    torch.manual_seed(20 + k)
    batch, n = 33, 5
    encoder = GraphEncoder(6, 8, layers=2)
    _randomize(encoder)
    for conv in encoder.convs:
        conv.activation = gnn.ACTIVATIONS[activation]
    x = torch.randn(batch, n, 6, generator=g, requires_grad=True)
    neighbours = torch.randint(n, (n, k) if shared else (batch, n, k), generator=g)
    weights = torch.randn(batch, n, 8, generator=g)

    def run():
        out = encoder.forward_neighbours(x, neighbours)
        grads = torch.autograd.grad((out * weights).sum(), [x, *encoder.parameters()])
        return [out, *grads]

    fused = run()
    saved = dict(gnn._MESSAGE_BACKWARD)
    gnn._MESSAGE_BACKWARD.clear()  # no fused form: the plain composition
    try:
        plain = run()
    finally:
        gnn._MESSAGE_BACKWARD.update(saved)
    assert all(torch.equal(a, b) for a, b in zip(fused, plain))
