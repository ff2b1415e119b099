"""HiMPo's hierarchical graph: balanced clusters, static clusters, knn and complete edges,
cluster identities across regrouping."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from hmarl.algorithms.himpo.graphs import (EXACT_MATCHING_MAX, Regrouping, balanced_clusters, complete_edges,
                                          complete_neighbours, knn_edges, knn_neighbours, match_labels)
from hmarl.strategies import static_clusters


def _sizes(assignment: torch.Tensor, n_clusters: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(assignment, n_clusters).sum(-2)


@pytest.mark.parametrize("n_workers, n_clusters", [(6, 2), (7, 3), (5, 4), (8, 8), (9, 1), (32, 4)])
@pytest.mark.parametrize("seeded", [False, True], ids=["farthest", "kmeans++"])
def test_balanced_clusters_are_a_balanced_partition(n_workers, n_clusters, seeded):
    g = torch.Generator().manual_seed(n_workers * 10 + n_clusters)
    positions = torch.rand(256, n_workers, 2, generator=g)
    assignment = balanced_clusters(positions, n_clusters, generator=g if seeded else None)
    assert assignment.shape == (256, n_workers) and assignment.dtype == torch.int64
    assert assignment.min() >= 0 and assignment.max() < n_clusters  # each worker in exactly one cluster
    sizes = _sizes(assignment, n_clusters)
    assert sizes.sum(-1).eq(n_workers).all()
    assert sizes.max() <= math.ceil(n_workers / n_clusters)
    assert sizes.min() >= 1


def test_two_obvious_groups():
    a = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1]])
    b = a + 10
    positions = torch.stack([torch.cat([a, b]), torch.cat([b[:1], a[:1], b[1:], a[1:]])])
    assignment = balanced_clusters(positions, 2)
    for copy, group_a in zip(assignment, [[0, 1, 2], [1, 4, 5]]):
        group_b = [i for i in range(6) if i not in group_a]
        assert copy[group_a].unique().numel() == 1 and copy[group_b].unique().numel() == 1
        assert copy[group_a[0]] != copy[group_b[0]]


def test_capacity_sends_the_nearest_overflow_worker_to_the_other_cluster():
    """Four workers near 0, two near 10, capacity 3: worker 3 (x = 3) joins the far ones."""
    positions = torch.tensor([[0.0, 0], [1, 0], [2, 0], [3, 0], [10, 0], [11, 0]])
    for generator in [None, torch.Generator().manual_seed(0)]:
        assignment = balanced_clusters(positions.expand(8, -1, -1), 2, generator=generator)
        assert (assignment[:, :3] == assignment[:, :1]).all()
        assert (assignment[:, 3:] == assignment[:, 3:4]).all()
        assert (assignment[:, 0] != assignment[:, 3]).all()


def test_clusters_follow_positions_not_indices():
    g = torch.Generator().manual_seed(4)
    positions = torch.rand(16, 9, 2, generator=g)
    perm = torch.randperm(9, generator=g)
    torch.testing.assert_close(balanced_clusters(positions[:, perm], 3), balanced_clusters(positions, 3)[:, perm])


def test_balanced_clusters_leading_dims_and_integer_positions():
    positions = torch.randint(0, 8, (2, 3, 5, 2), generator=torch.Generator().manual_seed(5))
    assignment = balanced_clusters(positions, 2)
    assert assignment.shape == (2, 3, 5)
    torch.testing.assert_close(assignment[1], balanced_clusters(positions[1], 2))


def test_more_sub_managers_than_workers_is_an_error():
    with pytest.raises(ValueError, match=r"more sub-managers than workers \(5 > 4\)"):
        balanced_clusters(torch.zeros(2, 4, 2), 5)
    with pytest.raises(ValueError, match=r"more groups than units \(5 > 4\)"):
        static_clusters(4, 5)
    with pytest.raises(ValueError, match="at least one sub-manager"):
        balanced_clusters(torch.zeros(2, 4, 2), 0)


@pytest.mark.parametrize("n_workers, n_clusters", [(6, 2), (7, 3), (5, 4), (4, 4), (9, 1)])
def test_static_clusters_are_contiguous_balanced_blocks(n_workers, n_clusters):
    assignment = static_clusters(n_workers, n_clusters)
    assert assignment.dtype == torch.int64 and (assignment.diff() >= 0).all()
    sizes = _sizes(assignment, n_clusters)
    assert sizes.min() >= n_workers // n_clusters and sizes.max() <= math.ceil(n_workers / n_clusters)


def test_static_clusters_by_hand():
    assert static_clusters(7, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]


def test_knn_edges_by_hand():
    positions = torch.tensor([[[0.0, 0], [1, 0], [3, 0], [7, 0]]])
    edges = knn_edges(positions, 2)
    assert edges.shape == (1, 2, 8)
    expected_sources = [[1, 2], [0, 2], [1, 0], [2, 1]]  # nearest first
    assert edges[0, 0].tolist() == sum(expected_sources, [])
    assert edges[0, 1].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_neighbour_lists_are_the_sources_of_the_edges_by_target():
    g = torch.Generator().manual_seed(7)
    positions = torch.rand(3, 5, 6, 2, generator=g)
    assert knn_neighbours(positions, 2).shape == (3, 5, 6, 2)
    assert knn_neighbours(positions, 2).flatten(-2).equal(knn_edges(positions, 2)[..., 0, :])
    assert complete_neighbours(4).flatten().equal(complete_edges(4)[0])
    assert complete_neighbours(1).shape == (1, 0)


def test_knn_edges_ties_go_to_the_lower_index():
    positions = torch.tensor([[0, 0], [-1, 0], [1, 0], [0, 5]])  # integer grid, 1 and 2 tie for 0
    assert knn_edges(positions, 1)[0].tolist() == [1, 0, 0, 0]
    assert knn_edges(positions[[0, 2, 1, 3]], 1)[0].tolist() == [1, 0, 0, 0]


def test_knn_edges_random_batch():
    g = torch.Generator().manual_seed(6)
    positions = torch.rand(32, 7, 2, generator=g)
    edges = knn_edges(positions, 3)
    source, target = edges[:, 0], edges[:, 1]
    assert (source != target).all()
    distances = torch.cdist(positions, positions)
    chosen = distances.gather(2, source.view(32, 7, 3))
    others = distances + torch.eye(7) * 1e9
    third_nearest = others.sort(-1).values[..., 2:3]
    assert (chosen <= third_nearest + 1e-6).all()


@pytest.mark.parametrize("k", [4, 5, -1])
def test_knn_rejects_k_out_of_range(k):
    with pytest.raises(ValueError, match="0 <= k < N"):
        knn_edges(torch.zeros(2, 4, 2), k)


def test_complete_edges():
    edges = complete_edges(3)
    assert edges.tolist() == [[1, 2, 0, 2, 0, 1], [0, 0, 1, 1, 2, 2]]
    assert complete_edges(5).shape == (2, 20)
    assert complete_edges(1).shape == (2, 0)


def test_regrouping_keeps_labels_when_the_clusters_do_not_change():
    """Spec (dynamic graph, "keeping cluster identities across recomputation"): two pairs
    of workers, far apart, move by 0.1. The sets stay {0, 1} and {2, 3}, but the clustering
    seeds at the worker farthest from the mean, which moves from pair {0, 1} to pair
    {2, 3}, so its own labels flip. A copy inside its episode keeps its labels; a copy
    whose episode just started (``fresh``) takes the clustering's."""
    before = torch.tensor([[-0.1, 0.0], [0.0, 1.0], [5.0, 0.0], [5.0, 1.0]])
    after = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 0.0], [5.1, 1.0]])
    assert balanced_clusters(before, 2).tolist() == [0, 0, 1, 1]
    assert balanced_clusters(after, 2).tolist() == [1, 1, 0, 0]  # same sets, labels permuted
    regrouping = Regrouping(4, 2, "dynamic")
    first = regrouping.assign(before.expand(2, -1, -1), torch.ones(2, dtype=torch.bool), None)
    again = regrouping.assign(after.expand(2, -1, -1), torch.tensor([False, True]), first)
    assert again.tolist() == [[0, 0, 1, 1], [1, 1, 0, 0]]


def test_two_workers_trading_clusters_leave_every_label_in_place():
    """Three clusters of three; workers 2 and 6 trade places. By hand: the old labels are
    a = {0, 1, 2}, b = {3, 4, 5}, c = {6, 7, 8}; the new sets {0, 1, 6}, {3, 4, 5},
    {2, 7, 8} overlap them by 2 (a), 3 (b), 2 (c), a total of 7, against 5 with a and c
    exchanged: the matching names them a, b, c, whatever labels the clustering chose."""
    previous = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2]])
    expected = [[0, 0, 2, 1, 1, 1, 0, 2, 2]]
    for names in itertools.permutations(range(3)):  # every labelling the clustering might return
        clusters = torch.tensor(names)[torch.tensor(expected)]
        assert match_labels(previous, clusters, 3).tolist() == expected


@pytest.mark.parametrize("n_clusters", [2, 3, 4, 6])
def test_matching_maximises_the_total_overlap(n_clusters):
    """The relabelling is a permutation of labels (the partition is unchanged) whose total
    overlap with the old labels equals the best over all M! permutations, per copy."""
    g = torch.Generator().manual_seed(n_clusters)
    previous = torch.randint(n_clusters, (64, 12), generator=g)
    clusters = torch.randint(n_clusters, (64, 12), generator=g)
    matched = match_labels(previous, clusters, n_clusters)
    same = lambda a: a.unsqueeze(-1) == a.unsqueeze(-2)  # noqa: E731  [B, N, N] same cluster
    assert torch.equal(same(matched), same(clusters))
    kept = (matched == previous).sum(-1)
    best = torch.stack([(torch.tensor(p)[clusters] == previous).sum(-1)
                        for p in itertools.permutations(range(n_clusters))]).amax(0)
    assert torch.equal(kept, best)


def test_greedy_matching_above_the_exact_limit_recovers_a_permutation():
    """Past ``EXACT_MATCHING_MAX`` clusters the greedy matching is exact when every new
    cluster overlaps one old cluster most: labels permuted and one worker moved come back."""
    m = EXACT_MATCHING_MAX + 1
    g = torch.Generator().manual_seed(0)
    previous = torch.arange(3 * m).remainder(m).expand(16, -1).clone()  # three workers per cluster
    names = torch.stack([torch.randperm(m, generator=g) for _ in range(16)])
    moved = previous.clone()
    moved[:, 0] = 1  # worker 0 joins cluster 1
    matched = match_labels(previous, names.gather(1, moved), m)
    assert torch.equal(matched, moved)
