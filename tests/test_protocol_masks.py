"""Masks come from os.urandom, uniform over [-2^m, 2^m)."""

from __future__ import annotations

import random

import numpy as np

from hefl.protocols.masks import uniform_masks


def test_masks_have_the_shape_and_range_asked_for():
    masks = uniform_masks(25, (31, 4096))

    assert masks.shape == (31, 4096) and masks.dtype == np.float64
    assert masks.min() >= -(2.0**25) and masks.max() < 2.0**25
    # Of 126,976 uniform draws, the extreme 1% on each side are all but certainly hit.
    assert masks.min() < -0.99 * 2**25 and masks.max() > 0.99 * 2**25


def test_the_byte_mapping_covers_both_ends_exactly():
    assert uniform_masks(3, 1, random_bytes=lambda n: b"\x00" * n)[0] == -8.0
    assert uniform_masks(3, 1, random_bytes=lambda n: b"\xff" * n)[0] == 8.0 - 2.0**-49
    midpoint = (1 << 63).to_bytes(8, "little")
    assert uniform_masks(3, 1, random_bytes=lambda n: midpoint)[0] == 0.0


def test_a_seeded_source_gives_uniform_masks():
    """Deterministic: a seeded byte source in place of os.urandom."""
    masks = uniform_masks(10, 200_000, random_bytes=random.Random(0).randbytes)
    counts, _ = np.histogram(masks, bins=20, range=(-1024.0, 1024.0))

    # Uniform: mean 0 and variance (2^10)^2 / 3, each of the 20 bins near 10,000 draws.
    assert abs(masks.mean()) < 5 * 1024 / np.sqrt(3 * 200_000)
    assert abs(np.var(masks) / (1024**2 / 3) - 1) < 0.01
    assert counts.min() > 9_500 and counts.max() < 10_500


def test_default_masks_are_not_repeated():
    assert not np.array_equal(uniform_masks(25, 8), uniform_masks(25, 8))
