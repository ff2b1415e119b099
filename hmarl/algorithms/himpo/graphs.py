"""HiMPo's hierarchical graph: worker clusters for sub-managers, and same-level edges.

Decisions (the paper does not specify them; see ``specs/himpo.md``):
sub-managers own balanced clusters of workers by position, found by greedy
nearest-centroid assignment with capacity ``ceil(N / M)`` (the *dynamic* graph,
recomputed whenever the sub-managers act); workers talk to their ``k`` nearest
workers; sub-managers form a complete graph. Envs without positions use
:func:`hmarl.strategies.static_clusters` (blocks of agent indices). A recomputed clustering keeps each
cluster's identity: :func:`match_labels` gives every new cluster the label of the old
cluster it overlaps most (a maximum-overlap matching), because a sub-manager's critic,
its transitions and its workers' rewards all refer to its label.

Edges follow torch-geometric: ``edge_index[0]`` is the source ``j``,
``edge_index[1]`` the target ``i`` that receives ``j``'s message. Graphs in which every
node has ``k`` in-edges (kNN, complete) also come as neighbour lists ``[..., N, k]``: row ``i``
holds the sources of the edges into ``i``, in the order of the edge index.

Shapes (``B`` env copies, ``N`` workers, ``M`` sub-managers, ``D`` position size,
usually 2; extra leading dims are allowed where ``B`` is):
    positions ``[B, N, D]``, assignment ``[B, N]`` int64, edge_index ``[B, 2, E]`` or ``[2, E]``.
"""
from __future__ import annotations

import functools
import itertools
import math

import torch

from hmarl.spec import TimeStep
from hmarl.strategies import Assignment, Grouping

Tensor = torch.Tensor
"""Shorthand for ``torch.Tensor`` in annotations (hidden from the API reference). @private"""


def _check_clusters(n_workers: int, n_clusters: int) -> None:
    if n_clusters < 1:
        raise ValueError(f"need at least one sub-manager; got n_clusters={n_clusters}")
    if n_clusters > n_workers:
        raise ValueError(f"more sub-managers than workers ({n_clusters} > {n_workers}): every "
                         f"sub-manager needs at least one worker; use at most {n_workers} sub-managers")


def _as_float(positions: Tensor) -> Tensor:
    return positions if positions.is_floating_point() else positions.float()


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    # Differences, not torch.cdist: cdist's matmul form is inexact for near points, and sizes are tiny.
    return (a.unsqueeze(-2) - b.unsqueeze(-3)).pow(2).sum(-1)


def _seed_centroids(positions: Tensor, n_clusters: int, generator: torch.Generator | None) -> Tensor:
    """``M`` workers' positions as initial centroids ``[B, M, D]``.

    Farthest-point seeding from the worker farthest from the mean, or k-means++
    sampling when a generator is given.
    """
    batch, n_workers, dim = positions.shape

    def at(worker: Tensor) -> Tensor:  # each copy's worker's position [B, 1, D]
        return positions.gather(1, worker.view(batch, 1, 1).expand(batch, 1, dim))

    if generator is None:
        first = _squared_distances(positions, positions.mean(1, keepdim=True)).squeeze(-1).argmax(1)
    else:
        first = torch.randint(n_workers, (batch,), generator=generator, device=generator.device).to(positions.device)
    seeds = [first]
    nearest = _squared_distances(positions, at(first)).squeeze(-1)  # [B, N]
    for i in range(n_clusters - 1):
        if generator is None:
            seed = nearest.argmax(1)
        else:
            # clamp: coincident workers leave all-zero weights, which multinomial rejects
            weights = nearest.clamp(min=torch.finfo(nearest.dtype).tiny)
            seed = torch.multinomial(weights.to(generator.device), 1, generator=generator).squeeze(1)
            seed = seed.to(positions.device)
        seeds.append(seed)
        if i < n_clusters - 2:  # the last seed's distances choose nothing
            nearest = torch.minimum(nearest, _squared_distances(positions, at(seed)).squeeze(-1))
    chosen = torch.stack(seeds, 1)
    return positions.gather(1, chosen.unsqueeze(-1).expand(batch, n_clusters, dim))


def _assign_with_capacity(positions: Tensor, centroids: Tensor, capacity: int) -> Tensor:
    """Greedy: each worker joins its nearest centroid that still has room.

    First every cluster takes its nearest free worker (closest pairs first), so
    none stays empty. Then, one worker per step, the free worker with the most
    to lose (largest gap between its nearest and second-nearest open cluster)
    goes first: processing the closest pairs first instead fills a cluster with
    its near workers and strands a far one in a distant cluster.
    """
    batch, n_workers, _ = positions.shape
    n_clusters = centroids.shape[1]
    distances = _squared_distances(positions, centroids)  # [B, N, M]
    assignment = torch.full((batch, n_workers), -1, dtype=torch.long, device=positions.device)
    sizes = torch.zeros(batch, n_clusters, dtype=torch.long, device=positions.device)
    one = torch.ones(batch, 1, dtype=torch.long, device=positions.device)
    for step in range(n_workers):
        assigned = assignment >= 0
        if step < n_clusters:
            closed = assigned.unsqueeze(2) | (sizes >= 1).unsqueeze(1)
            pair = distances.masked_fill(closed, math.inf).flatten(1).argmin(1, keepdim=True)
            worker, cluster = pair // n_clusters, pair % n_clusters  # [B, 1] each
        else:
            open_distances = distances.masked_fill((sizes >= capacity).unsqueeze(1), math.inf)
            nearest = open_distances.topk(min(2, n_clusters), dim=2, largest=False)
            if n_clusters == 1:
                regret = torch.zeros_like(nearest.values[..., 0])
            else:
                regret = nearest.values[..., 1] - nearest.values[..., 0]  # inf when one cluster is open
            worker = regret.masked_fill(assigned, -math.inf).argmax(1, keepdim=True)
            cluster = nearest.indices[..., 0].gather(1, worker)
        # scatters write one entry per copy, cheaper than indexing with (copy, worker) pairs
        assignment.scatter_(1, worker, cluster)
        sizes.scatter_add_(1, cluster, one)
    return assignment


def balanced_clusters(positions: Tensor, n_clusters: int, generator: torch.Generator | None = None,
                      iterations: int = 3) -> Tensor:
    """Balanced clusters of workers by position (the dynamic hierarchical graph).

    Seeds ``M`` centroids at workers' positions (farthest-point seeding, or
    k-means++ sampling from ``generator``), then ``iterations`` times assigns
    workers greedily to the nearest centroid with room (see
    :func:`_assign_with_capacity`; capacity
    ``ceil(N / M)``, every cluster gets at least one worker) and moves each
    centroid to its cluster's mean. Without a generator the result is
    deterministic and labels follow positions, not agent indices.

    Args:
        positions: workers' positions.
        n_clusters: ``M``, the number of sub-managers, ``1 <= M <= N``.
        generator: randomness for k-means++ seeding; ``None`` for farthest-point seeding.
        iterations: assignment rounds (>= 1).

    Shapes:
        positions ``[..., N, D]`` -> assignment ``[..., N]`` int64 in ``[0, M)``.
    """
    *lead, n_workers, dim = positions.shape
    _check_clusters(n_workers, n_clusters)
    if iterations < 1:
        raise ValueError(f"balanced_clusters needs iterations >= 1; got {iterations}")
    flat = _as_float(positions).reshape(-1, n_workers, dim)
    capacity = math.ceil(n_workers / n_clusters)
    centroids = _seed_centroids(flat, n_clusters, generator)
    for i in range(iterations):
        assignment = _assign_with_capacity(flat, centroids, capacity)
        if i < iterations - 1:
            index = assignment.unsqueeze(-1).expand_as(flat)
            centroids = centroids.scatter_reduce(1, index, flat, reduce="mean", include_self=False)
    return assignment.view(*lead, n_workers)


#: Up to this many clusters, :func:`match_labels` scores all ``M!`` relabellings (720 at 6).
EXACT_MATCHING_MAX = 6


@functools.lru_cache(maxsize=None)
def _permutations(n_clusters: int, device: torch.device) -> Tensor:
    """All permutations of ``range(M)`` ``[M!, M]``, the identity first."""
    return torch.tensor(list(itertools.permutations(range(n_clusters))), device=device)


def match_labels(previous: Tensor, clusters: Tensor, n_clusters: int) -> Tensor:
    """Relabel ``clusters`` so that each keeps the label of the ``previous`` cluster it overlaps most.

    The relabelling maximises the total overlap ``sum_k |new_k & old_pi(k)|`` over the
    permutations ``pi`` of the ``M`` labels, in each copy. Clustering labels follow
    positions (see :func:`balanced_clusters`), so an unchanged partition can come back
    permuted after a small move; this undoes that. Up to ``EXACT_MATCHING_MAX`` clusters
    all ``M!`` permutations are scored at once (exact; ties keep the clustering's own
    labels). Above, a batched greedy takes the largest remaining overlap ``M`` times: at
    least half the optimal overlap, and exact whenever every new cluster overlaps a
    different old cluster most, the usual case between two nearby decisions.

    Shapes:
        previous, clusters ``[B, N]`` int64 in ``[0, M)`` -> ``[B, N]``, ``clusters`` relabelled.
    """
    one_hot = lambda a: torch.nn.functional.one_hot(a, n_clusters).to(torch.float32)  # noqa: E731
    overlap = torch.einsum("bno,bnk->bok", one_hot(previous), one_hot(clusters))  # [B, old, new]
    if n_clusters <= EXACT_MATCHING_MAX:
        perms = _permutations(n_clusters, clusters.device)  # perms[p, k]: old label for new cluster k
        new = torch.arange(n_clusters, device=clusters.device)
        score = overlap[:, perms, new].sum(-1)  # [B, M!]
        label = perms[score.argmax(-1)]  # [B, M]
    else:
        label = torch.empty_like(clusters[:, :n_clusters])
        rows = torch.arange(clusters.shape[0], device=clusters.device)
        for _ in range(n_clusters):
            pair = overlap.flatten(1).argmax(1)
            old, new = pair // n_clusters, pair % n_clusters
            label[rows, new] = old
            overlap[rows, old, :] = -1.0  # taken: out of every later round
            overlap[rows, :, new] = -1.0
    return label.gather(1, clusters)


def knn_neighbours(positions: Tensor, k: int) -> Tensor:
    """Each worker's ``k`` nearest other workers, nearest first (ties to the lower index).

    Shapes:
        positions ``[..., N, D]`` -> ``[..., N, k]`` int64: ``out[..., i, :]`` are the sources of
        the edges into worker ``i`` (the form :meth:`hmarl.nn.GraphEncoder.forward_neighbours` reads).
    """
    n_workers = positions.shape[-2]
    if not 0 <= k < n_workers:
        raise ValueError(f"k nearest neighbours needs 0 <= k < N (other agents); got k={k} with N={n_workers}")
    distances = _squared_distances(_as_float(positions), _as_float(positions))
    distances.diagonal(dim1=-2, dim2=-1).fill_(math.inf)
    # stable sort: ties (common on grids) go to the lower agent index, reproducibly
    return distances.sort(dim=-1, stable=True).indices[..., :k]


def knn_edges(positions: Tensor, k: int) -> Tensor:
    """Edges ``j -> i`` from each worker's ``k`` nearest other workers (:func:`knn_neighbours`).

    Edges are grouped by target: edges ``i * k`` to ``i * k + k - 1`` enter
    worker ``i``, nearest first.

    Shapes:
        positions ``[..., N, D]`` -> edge_index ``[..., 2, N * k]`` int64.
    """
    source = knn_neighbours(positions, k).flatten(-2)  # [..., N * k]
    target = torch.arange(positions.shape[-2], device=positions.device).repeat_interleave(k).expand_as(source)
    return torch.stack([source, target], dim=-2)


def complete_neighbours(n_nodes: int, device: torch.device | str | None = None) -> Tensor:
    """Every other node, in index order, as each node's in-neighbours.

    Shapes:
        -> ``[M, M - 1]`` int64 (the form :meth:`hmarl.nn.GraphEncoder.forward_neighbours` reads).
    """
    return complete_edges(n_nodes, device)[0].view(n_nodes, max(n_nodes - 1, 0))


def complete_edges(n_nodes: int, device: torch.device | str | None = None) -> Tensor:
    """Every ordered pair ``j -> i`` with ``j != i``, grouped by target.

    Shapes:
        -> edge_index ``[2, M * (M - 1)]`` int64.
    """
    nodes = torch.arange(n_nodes, device=device)
    source, target = nodes.repeat(n_nodes), nodes.repeat_interleave(n_nodes)
    keep = source != target
    return torch.stack([source[keep], target[keep]])


REGROUPINGS = ("dynamic", "episode")
"""HiMPo's groupings (:data:`hmarl.strategies.GROUPINGS` beside ``static``): ``dynamic``
(balanced clusters by position, recomputed every time the level acts) or ``episode`` (balanced
clusters fixed at each episode's first step: HiMPo's SG ablation)."""


class Regrouping:
    """Per-copy children of ``n_groups`` agents over the units below, by the units' positions.

    Each agent owns at most ``capacity = ceil(N / M)`` units; an agent's children sit
    in its ``capacity`` slots in unit order, and empty slots are padding. Inside an episode a
    recomputed cluster goes to the agent of the old cluster it overlaps most
    (:func:`match_labels`), so an agent's transitions, its critic's bootstrap and the
    advantages it hands its children stay with one group of units.

    Shapes:
        ``assign``: positions ``[B, N, D]``, fresh ``[B]`` bool (copies whose episode
        just started), previous assignment ``[B, N]`` or None -> assignment ``[B, N]``.
        ``slots``: assignment ``[B, N]`` -> slot of each unit among its parent's children ``[B, N]``.
    """

    def __init__(self, n_units: int, n_groups: int, mode: str):
        if mode not in REGROUPINGS:
            raise ValueError(f"unknown regrouping {mode!r}; available: {', '.join(REGROUPINGS)}")
        _check_clusters(n_units, n_groups)
        self.n_units, self.n_groups, self.mode = n_units, n_groups, mode
        self.capacity = math.ceil(n_units / n_groups)

    def assign(self, positions: Tensor, fresh: Tensor, previous: Tensor | None) -> Tensor:
        """Each unit's agent: balanced clusters of ``positions``. ``dynamic``: copies that go on
        with their episode keep their clusters' labels (matched to ``previous``), ``fresh``
        copies take new ones; ``episode``: only the ``fresh`` copies are reclustered and the
        others keep ``previous``."""
        clusters = balanced_clusters(positions, self.n_groups)
        if previous is None:
            return clusters
        kept = previous if self.mode == "episode" else match_labels(previous, clusters, self.n_groups)
        return torch.where(fresh.unsqueeze(-1), clusters, kept)

    def slots(self, assignment: Tensor) -> Tensor:
        """Each unit's place among its agent's children, in unit order."""
        one_hot = torch.nn.functional.one_hot(assignment, self.n_groups)  # [B, N, M]
        return (one_hot.cumsum(-2) * one_hot).sum(-1) - 1


class Regroup(Grouping):
    """HiMPo: balanced clusters of the units below by position, per copy (:class:`Regrouping`):
    recomputed after every step (``dynamic``) or at each episode's start (``episode``)."""

    requires = ("positions",)
    varies = True

    def __init__(self, regrouping: Regrouping):
        self.regrouping = regrouping
        self.n_agents, self.group = regrouping.n_groups, regrouping.capacity

    @property
    def leaves_slots_empty(self) -> bool:
        return True  # clusters of unequal sizes

    def assign(self, ts: TimeStep, fresh: Tensor, previous: Assignment | None) -> Assignment:
        parent = self.regrouping.assign(ts.info["positions"], fresh, None if previous is None else previous.parent)
        return Assignment.of(parent, self.regrouping.slots(parent), self.n_agents, self.group, parent.shape[0])

    def __repr__(self) -> str:
        r = self.regrouping
        return f"Regroup({r.n_groups} groups of <= {r.capacity}, {r.mode})"


def dynamic(n_units: int, groups: int) -> Regroup:
    """``grouping: dynamic``: clusters recomputed every time the level acts."""
    return Regroup(Regrouping(n_units, groups, "dynamic"))


def episode(n_units: int, groups: int) -> Regroup:
    """``grouping: episode``: clusters fixed at each episode's first step (the SG ablation)."""
    return Regroup(Regrouping(n_units, groups, "episode"))
