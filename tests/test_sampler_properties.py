"""Property-based tests (hypothesis) of the task samplers.

For any valid N, K, query size Q, meta-batch size and seed:

* ``FewShotTasks`` over tiny in-memory random uint8 images (with and without Omniglot's
  rotations and inversion, square or not, grey or RGB): every sampled image is traced back to
  its dataset index and rotation, and support and query of a task are disjoint, every label
  names one class (the same in support and query, one rotation per class), each label 0..N-1
  appears exactly K times in the support set and Q times in the query set, the choices agree
  with ``sample_indices``, shapes and dtypes are right, values are the exact fractions v/255
  in [0, 1], and the same seed gives the same batch;
* ``SinusoidTasks``: shapes and dtypes, ranges, support and query points of a task on one
  sinusoid of the documented amplitude and phase ranges (read from the oracle's inputs, or
  fitted), disjoint support and query points, and the same seed gives the same batch.
"""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tf_maml.tasks import VAL_STREAM, batch_rng
from tf_maml.tasks.image_tasks import FewShotTasks
from tf_maml.tasks.sinusoid import AMP_RANGE, INPUT_RANGE, PHASE_RANGE, SinusoidTasks

SETTINGS = settings(max_examples=30, deadline=None)
SEEDS = st.integers(0, 2**32 - 1)


# ---------------------------------------------------------------------------- images
@st.composite
def image_sources(draw):
    """(FewShotTasks, images, class of every image, lookup) for random tiny data."""
    n = draw(st.integers(1, 5), label="N")
    k = draw(st.integers(1, 3), label="K")
    q = draw(st.integers(1, 3), label="Q")
    counts = draw(st.lists(st.integers(k + q, k + q + 3), min_size=n, max_size=n + 3),
                  label="images per dataset class")
    rotate = draw(st.booleans(), label="rotate")
    invert = draw(st.booleans(), label="invert")
    height = draw(st.integers(2, 4), label="height")
    width = height if rotate else draw(st.integers(2, 4), label="width")
    channels = draw(st.sampled_from([1, 3]), label="channels")
    rng = np.random.default_rng(draw(SEEDS, label="data seed"))
    images = rng.integers(0, 256, (sum(counts), height, width, channels), dtype=np.uint8)
    # uint8 bytes of every image in every rotation the sampler may apply -> (index, {k}).
    lookup: dict[bytes, tuple[int, set[int]]] = {}
    for index, image in enumerate(images):
        for r in (range(4) if rotate else [0]):
            key = np.ascontiguousarray(np.rot90(image, r, axes=(0, 1))).tobytes()
            owner, rotations = lookup.setdefault(key, (index, set()))
            assume(owner == index)  # two images that look alike cannot be told apart
            rotations.add(r)
    tasks = FewShotTasks(images, counts, num_classes=n, num_support=k, num_query=q,
                         rotate=rotate, invert=invert)
    image_class = np.repeat(np.arange(len(counts)), counts)
    return tasks, images, image_class, lookup


def trace_back(x: np.ndarray, invert: bool, lookup) -> list[tuple[int, set[int]]]:
    """(dataset index, possible rotations) of every image of one task's set ``x``."""
    values = (1.0 - x.astype(np.float64) if invert else x.astype(np.float64)) * 255.0
    stored = np.round(values)
    np.testing.assert_allclose(values, stored, atol=1e-3)  # exact fractions v / 255
    return [lookup[image.astype(np.uint8).tobytes()] for image in stored]


@SETTINGS
@given(source=image_sources(), meta_batch=st.integers(1, 4), seed=SEEDS)
def test_few_shot_tasks_properties(source, meta_batch, seed):
    tasks, images, image_class, lookup = source
    n, k, q = tasks.num_classes, tasks.num_support, tasks.num_query
    shape = images.shape[1:]
    sx, sy, qx, qy = tasks.sample_batch(meta_batch, np.random.default_rng(seed))

    assert sx.shape == (meta_batch, n * k, *shape) and qx.shape == (meta_batch, n * q, *shape)
    assert sy.shape == (meta_batch, n * k) and qy.shape == (meta_batch, n * q)
    assert sx.dtype == qx.dtype == np.float32 and sy.dtype == qy.dtype == np.int32
    for x in (sx, qx):
        assert x.min() >= 0.0 and x.max() <= 1.0

    classes, indices, rotations, _ = tasks.sample_indices(meta_batch,
                                                          np.random.default_rng(seed))
    for t in range(meta_batch):
        support = trace_back(sx[t], tasks.invert, lookup)
        query = trace_back(qx[t], tasks.invert, lookup)
        support_ids = [i for i, _ in support]
        query_ids = [i for i, _ in query]
        assert len(set(support_ids)) == n * k and len(set(query_ids)) == n * q  # no repeats
        assert not set(support_ids) & set(query_ids)  # support and query are disjoint
        label_class = {}
        for label in range(n):
            s = [support[j] for j in np.flatnonzero(sy[t] == label)]
            qu = [query[j] for j in np.flatnonzero(qy[t] == label)]
            assert len(s) == k and len(qu) == q  # K support and Q query images per label
            members = {int(image_class[i]) for i, _ in s + qu}
            assert len(members) == 1  # one class per label, in support and query alike
            label_class[label] = members.pop()
            possible = set.intersection(*(set(r) for _, r in s + qu))
            assert possible  # one rotation for all images of a class in a task
            if not tasks.rotate:
                assert possible == {0}
            # ... and these are exactly the choices sample_indices reports.
            assert label_class[label] == classes[t, label]
            assert sorted(i for i, _ in s) == sorted(indices[t, label, :k])
            assert sorted(i for i, _ in qu) == sorted(indices[t, label, k:])
            assert int(rotations[t, label]) in possible
        assert len(set(label_class.values())) == n  # N distinct classes

    again = tasks.sample_batch(meta_batch, np.random.default_rng(seed))
    for a, b in zip((sx, sy, qx, qy), again, strict=True):
        np.testing.assert_array_equal(a, b)
    first = next(tasks.batches(meta_batch, seed))
    for a, b in zip((sx, sy, qx, qy), first, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- sinusoid
@SETTINGS
@given(k=st.integers(1, 10), q=st.integers(1, 10), meta_batch=st.integers(1, 5),
       oracle=st.booleans(), seed=SEEDS)
def test_sinusoid_tasks_properties(k, q, meta_batch, oracle, seed):
    tasks = SinusoidTasks(k, q, oracle=oracle)
    sx, sy, qx, qy = tasks.sample_batch(meta_batch, np.random.default_rng(seed))
    d = 3 if oracle else 1
    assert sx.shape == (meta_batch, k, d) and qx.shape == (meta_batch, q, d)
    assert sy.shape == (meta_batch, k, 1) and qy.shape == (meta_batch, q, 1)
    assert all(a.dtype == np.float32 for a in (sx, sy, qx, qy))
    for x in (sx, qx):
        assert INPUT_RANGE[0] <= x[..., 0].min() and x[..., 0].max() <= INPUT_RANGE[1]
    for y in (sy, qy):
        assert np.abs(y).max() <= AMP_RANGE[1]

    for t in range(meta_batch):
        assert not set(sx[t, :, 0].tolist()) & set(qx[t, :, 0].tolist())  # disjoint points
        x = np.concatenate([sx[t, :, 0], qx[t, :, 0]]).astype(np.float64)
        y = np.concatenate([sy[t, :, 0], qy[t, :, 0]]).astype(np.float64)
        if oracle:  # amplitude and phase appended to every input, the same in the task
            inputs = np.concatenate([sx[t], qx[t]])
            assert (inputs[:, 1:] == inputs[0, 1:]).all()
            amp, phase = inputs[0, 1:].astype(np.float64)
            np.testing.assert_allclose(y, amp * np.sin(x - phase), atol=1e-5)
        else:  # y = A sin(x - phi) = a sin x + b cos x with a = A cos phi, b = -A sin phi
            basis = np.stack([np.sin(x), np.cos(x)], axis=1)
            assume(np.linalg.cond(basis) < 100)  # e.g. two points half a period apart
            (a, b), *_ = np.linalg.lstsq(basis, y, rcond=None)
            np.testing.assert_allclose(basis @ [a, b], y, atol=1e-4)  # one sinusoid
            amp = np.hypot(a, b)
            # arctan2 in [-pi, pi]; a phase just below pi may come out as just above -pi.
            phase = np.mod(np.arctan2(-b, a) + 0.5, 2 * np.pi) - 0.5
        assert AMP_RANGE[0] - 1e-3 <= amp <= AMP_RANGE[1] + 1e-3
        assert PHASE_RANGE[0] - 1e-3 <= phase <= PHASE_RANGE[1] + 1e-3

    again = tasks.sample_batch(meta_batch, np.random.default_rng(seed))
    for a, b in zip((sx, sy, qx, qy), again, strict=True):
        np.testing.assert_array_equal(a, b)


@SETTINGS
@given(seed=SEEDS, index=st.integers(0, 10**6))
def test_batch_streams_are_reproducible_and_distinct(seed, index):
    """batch_rng: the same (seed, iteration, stream) gives the same meta-batch; another
    iteration, stream or seed gives another."""
    tasks = SinusoidTasks(5, 5)
    batch = tasks.sample_batch(2, batch_rng(seed, index))
    np.testing.assert_array_equal(batch[0], tasks.sample_batch(2, batch_rng(seed, index))[0])
    for other in (batch_rng(seed, index + 1), batch_rng(seed, index, VAL_STREAM),
                  batch_rng(seed + 1, index)):
        assert not np.array_equal(batch[0], tasks.sample_batch(2, other)[0])
