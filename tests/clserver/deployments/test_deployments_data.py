"""Arrays of a deployment: request parsing, class-balanced samples, the replay memory after an update."""
from __future__ import annotations

import numpy as np
import pytest

from claas_site.errors import InvalidInput, PayloadTooLarge
from clserver.deployments import data


def test_inputs_accept_flat_rows_or_images_of_the_models_size():
    flat = data.inputs_parse(inputs=[[0, 1, 2, 3]], input_shape=[1, 2, 2])
    images = data.inputs_parse(inputs=[[[[0, 1], [2, 3]]]], input_shape=[1, 2, 2])
    assert flat.dtype == np.float32 and flat.shape == (1, 4)
    np.testing.assert_array_equal(flat, images)


def test_a_batch_over_the_row_limit_is_too_large():
    with pytest.raises(PayloadTooLarge, match="inputs has 3 rows; at most 2 are allowed per request."):
        data.inputs_parse(inputs=[[0.0]] * 3, input_shape=[1], max_rows=2)


@pytest.mark.parametrize("labels, message", [
    (None, "labels is required: one integer class label per row of inputs."),
    ([[1]], "labels must be a flat list of integer class labels."),
    ([True], "labels must hold integer class labels only."),
    ([2.0], None),
    ([-1], "labels must lie in 0..2 (the model's classes); found -1..-1."),
])
def test_labels_are_integers_in_the_models_classes(labels, message):
    if message is None:
        assert data.labels_parse(labels=labels, n_rows=1, num_classes=3).tolist() == [2]
        return
    with pytest.raises(InvalidInput) as caught:
        data.labels_parse(labels=labels, n_rows=1, num_classes=3)
    assert caught.value.message == message


def test_class_balanced_indices_give_each_class_an_equal_share_when_they_can():
    y = np.array([0] * 100 + [1] * 100 + [2] * 5)
    idx = data.class_balanced_indices(y, 60, np.random.RandomState(0))
    assert len(idx) == 60 and len(set(idx)) == 60
    # The small class gives all it has; the others share the rest.
    assert np.bincount(y[idx]).tolist() == [28, 27, 5] or np.bincount(y[idx]).tolist() == [27, 28, 5]


def test_holdout_keeps_at_least_one_sample_on_each_side():
    train, held = data.holdout_split(5, 0.01, np.random.RandomState(0))
    assert len(held) == 1 and len(train) == 4 and not set(train) & set(held)


def _memory(n_old: int, seen_old: int) -> data.Memory:
    return data.Memory(np.zeros((n_old, 2), np.float32), np.zeros(n_old, np.int64),
                       np.array([seen_old, 0], dtype=np.int64))


def test_reservoir_memory_stays_a_uniform_sample_of_everything_seen():
    rng = np.random.RandomState(0)
    shares = []
    for _ in range(200):
        memory = _memory(100, 900)  # 100 kept of 900 old samples
        new_x = np.ones((100, 2), np.float32)  # 100 new samples: a tenth of everything seen
        merged = data.memory_merge(memory=memory, x=new_x, y=np.ones(100, np.int64), size=100, policy="reservoir",
                                   rng=rng)
        assert len(merged) == 100
        shares.append(merged.x[:, 0].mean())
    assert np.mean(shares) == pytest.approx(0.1, abs=0.01)
    assert merged.seen.tolist() == [900, 100]


def test_class_balanced_memory_gives_a_new_class_its_share():
    memory = _memory(100, 900)
    merged = data.memory_merge(memory=memory, x=np.ones((100, 2), np.float32), y=np.ones(100, np.int64),
                               size=100, policy="class_balanced", rng=np.random.RandomState(0))
    assert np.bincount(merged.y).tolist() == [50, 50]


def test_memory_files_round_trip_without_pickle(tmp_path):
    memory = data.memory_initial(x=np.arange(20, dtype=np.float32).reshape(10, 2), y=np.arange(10) % 2,
                                 size=4, num_classes=3, rng=np.random.RandomState(0))
    data.memory_write(tmp_path / "m.npz", memory)
    back = data.memory_read(tmp_path / "m.npz")
    assert np.bincount(back.y).tolist() == [2, 2] and back.seen.tolist() == [5, 5, 0]
    np.testing.assert_array_equal(back.x, memory.x)
