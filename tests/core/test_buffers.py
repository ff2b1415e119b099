"""Replay storage: ring-buffer contents by hand, oversized batches, sampling."""
from __future__ import annotations

import pytest
import torch

from hmarl.buffers import ReplayBuffer


def _rows(start: int, stop: int) -> dict[str, torch.Tensor]:
    """Row i holds x = i (float, [2]) and k = -i (int64): every row is recognisable."""
    i = torch.arange(start, stop)
    return {"x": i[:, None].float().expand(-1, 2).clone(), "k": -i}


def test_wrap_around_exact_contents():
    buffer = ReplayBuffer(5)
    assert len(buffer) == 0
    buffer.add(**_rows(0, 3))  # rows 0 1 2
    assert len(buffer) == 3 and buffer.pos == 3
    buffer.add(**_rows(3, 7))  # 3 4 at the end, then 5 6 wrap to the start
    assert len(buffer) == 5 and buffer.pos == 2
    torch.testing.assert_close(buffer._data["k"], -torch.tensor([5, 6, 2, 3, 4]))
    torch.testing.assert_close(buffer._data["x"][:, 0], torch.tensor([5.0, 6, 2, 3, 4]))
    assert buffer._data["x"].shape == (5, 2) and buffer._data["k"].dtype == torch.int64
    buffer.add(**_rows(7, 8))
    torch.testing.assert_close(buffer._data["k"], -torch.tensor([5, 6, 7, 3, 4]))
    assert len(buffer) == 5 and buffer.pos == 3


def test_batch_larger_than_capacity_keeps_the_last_rows():
    buffer = ReplayBuffer(4)
    buffer.add(**_rows(0, 1))  # pos 1
    buffer.add(**_rows(1, 11))  # 10 rows: keeps 7 8 9 10, each where a plain ring write would put it
    assert len(buffer) == 4 and buffer.pos == (1 + 10) % 4
    # Row i of the stream lands at i % 4.
    torch.testing.assert_close(buffer._data["k"], -torch.tensor([8, 9, 10, 7]))
    assert sorted((-buffer._data["k"]).tolist()) == [7, 8, 9, 10]


def test_sample_shapes_and_only_written_rows():
    torch.manual_seed(0)
    buffer = ReplayBuffer(100)
    buffer.add(**_rows(0, 7))
    batch = buffer.sample(1000)
    assert batch["x"].shape == (1000, 2) and batch["k"].shape == (1000,)
    drawn = -batch["k"]
    assert drawn.min() >= 0 and drawn.max() <= 6  # never the unwritten rows 7..99
    assert set(drawn.tolist()) == set(range(7))  # uniform: every written row turns up
    torch.testing.assert_close(batch["x"][:, 0], drawn.float())  # fields stay aligned


def test_errors():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0)
    buffer = ReplayBuffer(3)
    with pytest.raises(RuntimeError, match="empty"):
        buffer.sample(1)
    with pytest.raises(ValueError, match="first dimension"):
        buffer.add(x=torch.zeros(2, 1), k=torch.zeros(3))
    buffer.add(**_rows(0, 2))
    with pytest.raises(ValueError, match="differ"):
        buffer.add(x=torch.zeros(2, 2))


@pytest.mark.parametrize("gather_bytes", [1, 200, ReplayBuffer.GATHER_BYTES])
def test_batches_gathered_together_are_the_rows_indexed_one_by_one(monkeypatch, gather_bytes):
    """Several minibatches come from one gather (one minibatch per gather, 200 bytes: a few, with
    a last gather that is short, the default: all): the same rows, bit for bit, as indexing each
    minibatch with its row of the one randint."""
    monkeypatch.setattr(ReplayBuffer, "GATHER_BYTES", gather_bytes)
    buffer = ReplayBuffer(50)
    buffer.add(x=torch.randn(40, 3, 2), k=torch.arange(40), flag=torch.rand(40, 3) < 0.5)
    torch.manual_seed(3)
    got = list(buffer.batches(7, 5))
    torch.manual_seed(3)
    index = torch.randint(40, (7, 5))
    assert len(got) == 7
    for batch, rows in zip(got, index):
        for key, value in buffer._data.items():
            assert batch[key].dtype == value.dtype and batch[key].is_contiguous()
            assert torch.equal(batch[key], value[rows])
