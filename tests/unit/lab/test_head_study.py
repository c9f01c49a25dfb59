"""scripts/adapt_head_study.py's mid-level-features fit (issue 21), on synthetic features."""

from __future__ import annotations

import sys

import numpy as np
from helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))

import adapt_head_study  # noqa: E402


def synthetic(seed: int = 0):
    """Head features that do not tell the two classes apart and a mid block that does, at a
    norm 100x smaller than the head features' (as the hybrid's blocks differ in norm)."""
    rng = np.random.default_rng(seed)
    views, cells, width = 2, 60, 16
    labels = np.repeat([0, 1], cells // 2)
    head = rng.normal(size=(views, cells, width)) * 10.0
    mid = rng.normal(size=(views, cells, 8)) * 0.1
    mid[..., 0] += np.where(labels == 1, 0.3, -0.3)
    w0 = rng.normal(size=(width, 3)) * 0.01
    f = {"feats": head, "w0": w0, "b0": np.zeros(3), "served": np.arange(views)}
    m = {"mid": mid, "sizes": np.asarray([4, 4])}
    taken = np.r_[0:10, 30:40]
    rest = np.r_[10:30, 40:60]
    return f, m, labels, taken, rest


def test_mid_features_carry_what_the_head_features_lack():
    f, m, labels, taken, rest = synthetic()
    without = adapt_head_study.head(f, taken, labels, rest)
    with_mid = adapt_head_study.with_mid_features(f, m, taken, labels, rest, weight=5)
    assert with_mid.shape == (len(rest), 3)
    np.testing.assert_allclose(with_mid.sum(axis=1), 1.0, atol=1e-9)
    assert (without.argmax(axis=1) == labels[rest]).mean() < 0.75
    assert (with_mid.argmax(axis=1) == labels[rest]).mean() > 0.95


def test_block_scaling_depends_on_the_taken_cells_only():
    f, m, labels, taken, rest = synthetic()
    before = adapt_head_study.with_mid_features(f, m, taken, labels, rest, weight=2)
    # Held-back cells' mid features ten times larger move their own scores, not the fit:
    # the scores of the other held-back cells are unchanged.
    m["mid"][:, rest[:5]] *= 10
    after = adapt_head_study.with_mid_features(f, m, taken, labels, rest, weight=2)
    np.testing.assert_allclose(after[5:], before[5:], rtol=1e-6, atol=1e-9)
