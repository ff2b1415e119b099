"""Message passing over the B env copies of a level's graph, as one disjoint union.

A level's graph comes as an edge index (``[2, E]`` shared by every copy, or
``[B, 2, E]`` per copy; edge ``(j, i)`` sends ``j``'s message to ``i``), as
neighbour lists when every node has the same in-degree ``k`` (``[n, k]`` or
``[B, n, k]``, row ``i`` the sources of ``i``'s edges: kNN and complete graphs) or,
for small graphs, as a dense adjacency ``[B, n, n]`` with ``adj[b, i, j]`` the
number of edges ``j -> i``. All forms compute the same thing. Neighbour lists
gather each node's ``k`` messages into one block and average it, which spares
torch-geometric's per-edge target gather, its scatter and its Python dispatch; the
dense form replaces gather/scatter by batched matmuls. Measured on one CPU thread (B = 64,
two layers): dense is 1.1-3x faster for ``graphconv`` up to n = 32; for
``neighbour`` the two tie at n = 8, and at n = 32 sparse wins on k-nearest-
neighbour graphs (dense computes all n^2 messages), dense on complete graphs.

Shapes (``B`` copies, ``n`` nodes per copy, leading dims ``...`` allowed where said):
    node features ``[B, n, d]``, edge index ``[B, 2, E]`` or ``[2, E]``, neighbours
    ``[B, n, k]`` or ``[n, k]``, adjacency ``[B, n, n]``, assignment (parent of each child)
    ``[B, n_children]``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch_geometric.nn import GATv2Conv, GraphConv, MessagePassing

from hmarl.nn.mlp import ACTIVATIONS

Tensor = torch.Tensor
"""Shorthand for ``torch.Tensor`` in annotations (hidden from the API reference). @private"""
EdgeIndex = Tensor
"""``[2, E]`` or ``[B, 2, E]`` int64; row 0 the source ``j``, row 1 the target ``i``."""
Adjacency = Tensor
"""``[B, n, n]`` float; ``adj[b, i, j]`` counts the edges ``j -> i``."""
Neighbours = Tensor
"""``[n, k]`` or ``[B, n, k]`` int64; ``neighbours[b, i]`` are the ``k`` sources of the edges into ``i``."""


class NeighbourConv(MessagePassing):
    r"""HiMPo's message-passing step (Eq. 1): MLP messages, mean aggregation.

    .. math::
        m_{j \to i} = \sigma(W_1 x_i + W_2 x_j + b_m), \qquad
        x_i' = W_3 x_i + W_4 \frac{1}{|\mathcal{N}(i)|} \sum_{j \in \mathcal{N}(i)} m_{j \to i} + b

    The message is a one-hidden-layer MLP of ``(x_i, x_j)`` whose output
    layer ``W_4`` is applied after the mean (a linear map commutes with it).
    A node without in-neighbours aggregates zero. No output activation:
    :class:`GraphEncoder` applies one between layers.

    Args:
        in_channels: node feature size.
        out_channels: output feature size.
        message_channels: hidden size of the message MLP (default ``out_channels``).
        activation: ``sigma``, a name in :data:`hmarl.nn.mlp.ACTIVATIONS` (default ``"relu"``).

    Shapes:
        ``forward``: x ``[num_nodes, in]``, edge_index ``[2, E]`` -> ``[num_nodes, out]``.
        ``forward_dense``: x ``[..., n, in]``, adj ``[..., n, n]`` -> ``[..., n, out]``.
        ``forward_neighbours``: x ``[B, n, in]`` -> ``[B, n, out]``.
    """

    def __init__(self, in_channels: int, out_channels: int, message_channels: int | None = None,
                 activation: str = "relu"):
        super().__init__(aggr="mean")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; available: {', '.join(ACTIVATIONS)}")
        hidden = message_channels or out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.activation = ACTIVATIONS[activation]
        self.lin_target = nn.Linear(in_channels, hidden)  # W_1, b_m
        self.lin_source = nn.Linear(in_channels, hidden, bias=False)  # W_2
        self.lin_root = nn.Linear(in_channels, out_channels)  # W_3, b
        self.lin_aggr = nn.Linear(hidden, out_channels, bias=False)  # W_4

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_target, self.lin_source, self.lin_root, self.lin_aggr):
            lin.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        # Project per node, not per edge: E >= n, and W_1 x_i + W_2 x_j splits.
        return self.propagate(edge_index, x=x, target=self.lin_target(x), source=self.lin_source(x))

    def message(self, target_i: Tensor, source_j: Tensor) -> Tensor:
        return self.activation(target_i + source_j)

    def update(self, aggr_out: Tensor, x: Tensor) -> Tensor:
        return self.lin_root(x) + self.lin_aggr(aggr_out)

    def forward_neighbours(self, x: Tensor, gather: "NeighbourGather", k: int) -> Tensor:
        """The same layer when every node hears ``k`` others: ``gather`` maps node rows
        ``[B, n, h]`` to each node's neighbours' rows ``[B, n, k, h]`` (see :class:`GraphEncoder`)."""
        # W_1 x before W_2 x, as torch-geometric's layer: x's gradients then add up in the same order
        target = self.lin_target(x)
        if k and self.activation in _MESSAGE_BACKWARD:
            aggr = _MeanMessages.apply(self.lin_source(x), target, gather, self.activation)
        else:
            # the gathered block as the first operand: torch then loops over its layout, a third faster
            aggr = _mean_of_block(self.activation(gather(self.lin_source(x)) + target.unsqueeze(-2)))
        return self.lin_root(x) + self.lin_aggr(aggr)

    def forward_dense(self, x: Tensor, adj: Adjacency) -> Tensor:
        """The same layer on a dense adjacency (see the class docstring for shapes)."""
        messages = self.activation(self.lin_target(x).unsqueeze(-2) + self.lin_source(x).unsqueeze(-3))
        weights = row_normalise(adj).unsqueeze(-2)  # [..., n, 1, n]
        aggr = torch.matmul(weights, messages).squeeze(-2)  # [..., n, 1, n] @ [..., n, n, h]
        return self.lin_root(x) + self.lin_aggr(aggr)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels})"


GNN_LAYERS: dict[str, Callable[[int, int], MessagePassing]] = {
    "neighbour": NeighbourConv,
    "graphconv": lambda i, o: GraphConv(i, o, aggr="mean"),
    "gatv2": lambda i, o: GATv2Conv(i, o),
}
"""Layer type name -> ``factory(in_channels, out_channels)``. ``graphconv`` is
:math:`x_i' = W_1 x_i + W_2 \\operatorname{mean}_j x_j`; ``gatv2`` adds self loops."""


DENSE_LAYER_TYPES = ("neighbour", "graphconv")
"""Layer types with a dense form (:meth:`GraphEncoder.forward_dense`)."""


def make_gnn_layer(layer_type: str, in_channels: int, out_channels: int) -> MessagePassing:
    """Build a layer of :data:`GNN_LAYERS` by name."""
    if layer_type not in GNN_LAYERS:
        raise ValueError(f"unknown GNN layer type {layer_type!r}; available: {', '.join(GNN_LAYERS)}")
    return GNN_LAYERS[layer_type](in_channels, out_channels)


def row_normalise(adj: Adjacency) -> Tensor:
    """Divide each row by its degree; empty rows stay zero (mean over no neighbours).

    Shapes:
        ``[..., n, n]`` -> ``[..., n, n]``.
    """
    return adj / adj.sum(-1, keepdim=True).clamp(min=1)


def _check_edge_index(edge_index: Tensor, batch_size: int) -> Tensor:
    if edge_index.dim() == 2:
        edge_index = edge_index.unsqueeze(0).expand(batch_size, -1, -1)
    if edge_index.dim() != 3 or edge_index.shape[:2] != (batch_size, 2):
        raise ValueError(f"edge_index must be [2, E] or [{batch_size}, 2, E]; got {tuple(edge_index.shape)}")
    return edge_index


def batched_edge_index(edge_index: EdgeIndex, num_nodes: int, batch_size: int) -> Tensor:
    """The edges of ``batch_size`` graph copies as one disjoint union.

    Node ``v`` of copy ``b`` becomes node ``b * num_nodes + v``, matching node
    features flattened from ``[B, n, d]`` to ``[B * n, d]``.

    Shapes:
        ``[B, 2, E]`` (or ``[2, E]``, shared by every copy) -> ``[2, B * E]``.
    """
    edge_index = _check_edge_index(edge_index, batch_size)
    offset = torch.arange(batch_size, device=edge_index.device).mul_(num_nodes).view(-1, 1, 1)
    return (edge_index + offset).transpose(0, 1).reshape(2, -1)


def edges_to_adjacency(edge_index: EdgeIndex, num_nodes: int, batch_size: int,
                       dtype: torch.dtype = torch.float32) -> Adjacency:
    """Dense adjacency with ``adj[b, i, j]`` = number of edges ``j -> i`` in copy ``b``.

    Shapes:
        ``[B, 2, E]`` or ``[2, E]`` -> ``[B, n, n]``.
    """
    edge_index = _check_edge_index(edge_index, batch_size)
    source, target = edge_index.unbind(1)
    flat = (torch.arange(batch_size, device=edge_index.device).view(-1, 1) * num_nodes + target) * num_nodes + source
    adj = torch.zeros(batch_size * num_nodes * num_nodes, dtype=dtype, device=edge_index.device)
    adj.index_add_(0, flat.reshape(-1), torch.ones(flat.numel(), dtype=dtype, device=adj.device))
    return adj.view(batch_size, num_nodes, num_nodes)


def neighbour_rows(neighbours: Neighbours, num_nodes: int, batch_size: int) -> Tensor:
    """The rows of node features flattened to ``[B * n, d]`` that the edges into each node read,
    node by node (the disjoint union's sources, as in :func:`batched_edge_index`).

    Shapes:
        ``[B, n, k]`` or ``[n, k]`` -> ``[B * n * k]`` int64.
    """
    if neighbours.dim() == 2:
        neighbours = neighbours.unsqueeze(0).expand(batch_size, -1, -1)
    if neighbours.dim() != 3 or neighbours.shape[:2] != (batch_size, num_nodes):
        raise ValueError(f"neighbours must be [{num_nodes}, k] or [{batch_size}, {num_nodes}, k]; "
                         f"got {tuple(neighbours.shape)}")
    offset = torch.arange(batch_size, device=neighbours.device).mul_(num_nodes).view(-1, 1, 1)
    return (neighbours + offset).reshape(-1)


class NeighbourGather:
    """Each node's neighbours' rows: ``[B, n, h]`` -> ``[B, n, k, h]`` by one ``index_select``,
    along the node dim for one list shared by every copy (``dim`` 1), else over the rows
    flattened to ``[B * n, h]`` (``dim`` 0); ``scatter`` is its backward (what autograd runs for
    ``index_select``: zeros, then ``index_add_``)."""

    def __init__(self, index: Tensor, dim: int, copies: int, n: int, k: int):
        self.index, self.dim, self.copies, self.n, self.k = index, dim, copies, n, k

    def __call__(self, h: Tensor) -> Tensor:
        if self.dim == 1:
            return h.index_select(1, self.index).view(self.copies, self.n, self.k, h.shape[-1])
        return h.reshape(self.copies * self.n, -1).index_select(0, self.index).view(
            self.copies, self.n, self.k, h.shape[-1])

    def scatter(self, grad: Tensor) -> Tensor:
        """The gradient of the rows ``[B, n, h]`` from that of the block ``[B, n, k, h]``."""
        copies, n, h = self.copies, self.n, grad.shape[-1]
        if self.dim == 1:
            return grad.new_zeros(copies, n, h).index_add_(1, self.index, grad.view(copies, n * self.k, h))
        return grad.new_zeros(copies * n, h).index_add_(0, self.index, grad.view(-1, h)).view(copies, n, h)


#: message activation -> (its in-place form, its backward from its output as autograd computes it)
_MESSAGE_BACKWARD = {
    torch.relu: (torch.relu_, lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0)),
    torch.tanh: (torch.tanh_, lambda grad, out: torch.ops.aten.tanh_backward(grad, out)),
}


class _MeanMessages(torch.autograd.Function):
    """``mean_k sigma(source[neighbour k of i] + target[i])`` ``[B, n, h]`` from ``source`` and
    ``target`` ``[B, n, h]``: NeighbourConv's message block, with the numbers autograd computes for
    ``_mean_of_block(sigma(gather(source) + target.unsqueeze(-2)))``, forward and backward, bit for
    bit (tests/nn/test_gnn.py), in fewer passes over the ``[B, n, k, h]`` block, the largest tensor
    of a minibatch: the sum and the activation run in place on the gathered block, and the mean's
    gradient is divided by ``k`` before it is broadcast over the block instead of after (autograd
    writes the broadcast block, then divides it: two more passes)."""

    @staticmethod
    def forward(ctx, source: Tensor, target: Tensor, gather: NeighbourGather, activation) -> Tensor:
        block = gather(source)  # a fresh tensor: free to overwrite
        block.add_(target.unsqueeze(-2))
        in_place, ctx.backward_of = _MESSAGE_BACKWARD[activation]
        messages = in_place(block)
        ctx.save_for_backward(messages)
        ctx.gather = gather
        return messages.mean(-2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        messages, = ctx.saved_tensors
        k = messages.shape[-2]
        # mean's backward: the gradient over k, then broadcast (elementwise: the same numbers)
        grad_block = ctx.backward_of((grad / k).unsqueeze(-2).expand_as(messages), messages)
        # the sum's: the block's gradient as is to the gathered source, summed over k to the target
        # (the reduction autograd's sum_to_size runs: keepdim over the broadcast dim)
        grad_target = grad_block.sum(-2, keepdim=True).squeeze(-2)
        return ctx.gather.scatter(grad_block), grad_target, None, None


def _mean_of_block(x: Tensor) -> Tensor:
    """Mean over each node's ``k`` neighbours ``[B, n, k, h]`` -> ``[B, n, h]``, zeros when ``k = 0``:
    torch-geometric's sum-then-divide scatter mean, in the same order."""
    return x.mean(-2) if x.shape[-2] else x.sum(-2)


def _neighbour_layer(layer: nn.Module, x: Tensor, gather: NeighbourGather, k: int,
                     edges: Callable[[], Tensor]) -> Tensor:
    if isinstance(layer, NeighbourConv):
        return layer.forward_neighbours(x, gather, k)
    if isinstance(layer, GraphConv) and layer.aggr == "mean":
        return layer.lin_rel(_mean_of_block(gather(x))) + layer.lin_root(x)
    return layer(x.reshape(-1, x.shape[-1]), edges()).view(*x.shape[:-1], -1)


def _dense_layer(layer: nn.Module, x: Tensor, adj: Adjacency) -> Tensor:
    if isinstance(layer, NeighbourConv):
        return layer.forward_dense(x, adj)
    if isinstance(layer, GraphConv) and layer.aggr == "mean":
        return layer.lin_rel(torch.matmul(row_normalise(adj), x)) + layer.lin_root(x)
    raise ValueError(f"{layer} has no dense form; call GraphEncoder.forward with an edge index, "
                     f"or use layer_type 'neighbour' or 'graphconv'")


class GraphEncoder(nn.Module):
    """``layers`` GNN layers with an activation after each, over B graph copies at once.

    The copies run as one disjoint-union graph (``forward``), as blocks of each
    node's ``k`` neighbours (``forward_neighbours``, graphs of one in-degree) or as
    batched dense matmuls (``forward_dense``, for ``neighbour`` and ``graphconv``
    layers); all give the same result. Weights are shared by every node.

    Args:
        in_dim: node feature size.
        hidden: size of every layer's output.
        layers: number of message-passing rounds (>= 1).
        layer_type: a name in :data:`GNN_LAYERS` (default ``"neighbour"``).
        activation: a name in :data:`hmarl.nn.mlp.ACTIVATIONS` (default ``"tanh"``).

    Shapes:
        x ``[..., B, n, in_dim]`` with edge_index ``[..., B, 2, E]`` or ``[2, E]``, neighbours
        ``[..., B, n, k]`` or ``[n, k]``, or adj ``[..., B, n, n]`` -> ``[..., B, n, hidden]``.
    """

    def __init__(self, in_dim: int, hidden: int, layers: int = 1, layer_type: str = "neighbour",
                 activation: str = "tanh"):
        super().__init__()
        if layers < 1:
            raise ValueError(f"GraphEncoder needs layers >= 1; got {layers}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; available: {', '.join(ACTIVATIONS)}")
        self.activation = ACTIVATIONS[activation]
        self.out_dim = hidden
        self.convs = nn.ModuleList(make_gnn_layer(layer_type, in_dim if i == 0 else hidden, hidden)
                                   for i in range(layers))

    def forward(self, x: Tensor, edge_index: EdgeIndex) -> Tensor:
        lead, (n, d) = x.shape[:-2], x.shape[-2:]
        copies = lead.numel()
        if edge_index.dim() > 2:  # (an explicit count: -1 is ambiguous for an empty edge list)
            edge_index = edge_index.reshape(edge_index.shape[:-2].numel(), *edge_index.shape[-2:])
        edges = batched_edge_index(edge_index, n, copies)
        h = x.reshape(copies * n, d)
        for conv in self.convs:
            h = self.activation(conv(h, edges))
        return h.view(*lead, n, -1)

    def forward_neighbours(self, x: Tensor, neighbours: Neighbours) -> Tensor:
        """The same rounds when every node has ``k`` in-edges, listed as ``neighbours``
        ``[..., B, n, k]`` or ``[n, k]`` (shared by every copy). ``neighbour`` and ``graphconv``
        layers gather each node's block of ``k`` messages; other layers run on the
        equivalent edge index."""
        lead, (n, d) = x.shape[:-2], x.shape[-2:]
        copies, k = lead.numel(), neighbours.shape[-1]
        shared = neighbours.dim() == 2
        if shared:  # one list for every copy: gather along the node dim, with no per-copy index to build
            gather = NeighbourGather(neighbours.reshape(-1), 1, copies, n, k)
        else:
            rows = neighbour_rows(neighbours.reshape(copies, n, k), n, copies)
            gather = NeighbourGather(rows, 0, copies, n, k)

        def edges() -> Tensor:
            sources = neighbour_rows(neighbours, n, copies) if shared else rows
            target = torch.arange(copies * n, device=sources.device).repeat_interleave(k)
            return torch.stack([sources, target])

        h = x.reshape(copies, n, d)
        for conv in self.convs:
            h = self.activation(_neighbour_layer(conv, h, gather, k, edges))
        return h.view(*lead, n, -1)

    def forward_dense(self, x: Tensor, adj: Adjacency) -> Tensor:
        """The same rounds on a dense adjacency ``[..., B, n, n]`` (layers with a dense form only)."""
        h = x
        for conv in self.convs:
            h = self.activation(_dense_layer(conv, h, adj))
        return h


def children_to_parent(x_children: Tensor, assignment: Tensor, n_parents: int) -> Tensor:
    """Mean of each parent's children's features; a parent without children gets zeros.

    Shapes:
        x_children ``[..., n_children, d]``, assignment ``[..., n_children]`` int64
        (the parent of each child, in ``[0, n_parents)``) -> ``[..., n_parents, d]``.
    """
    index = assignment.unsqueeze(-1).expand_as(x_children)
    out = x_children.new_zeros(*x_children.shape[:-2], n_parents, x_children.shape[-1])
    return out.scatter_reduce(-2, index, x_children, reduce="mean", include_self=False)


def parent_to_children(x_parents: Tensor, assignment: Tensor) -> Tensor:
    """Each child's copy of its parent's features (top-down, e.g. goals or embeddings).

    Shapes:
        x_parents ``[..., n_parents, d]``, assignment ``[..., n_children]`` -> ``[..., n_children, d]``.
    """
    index = assignment.unsqueeze(-1).expand(*assignment.shape, x_parents.shape[-1])
    return x_parents.gather(-2, index)
