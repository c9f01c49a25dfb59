"""Train/serve parity: an analyser original and its 224 px training copy reach the model as the
same pixels (issue 11), so the model's answer cannot depend on which one a user uploads."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import SHARED
from PIL import Image

from bcclassify.data.imaging import as_training_copy, load_image

ORIGINALS = SHARED / "data" / "pbc-originals"
COPIES = SHARED / "data" / "pbc224"


def test_other_sizes_become_a_training_copy_and_copies_stay():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, size=(363, 360, 3), dtype=np.uint8)
    copy = as_training_copy(original)
    assert copy.shape == (224, 224, 3)
    buffer = io.BytesIO()
    Image.fromarray(original).resize((224, 224), Image.LANCZOS).save(buffer, "JPEG", quality=90)
    assert np.array_equal(copy, np.asarray(Image.open(buffer).convert("RGB")))
    already = rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    assert as_training_copy(already) is already


@pytest.mark.skipif(not ORIGINALS.is_dir(), reason="../shared/data/pbc-originals not present")
@pytest.mark.parametrize("size", [213, 96])
def test_originals_load_exactly_as_their_training_copies(size):
    originals = sorted(ORIGINALS.rglob("*.jpg"))[::40]  # ~38 cells, every class
    assert len({p.parent.name for p in originals}) == 8
    for original in originals:
        copy = COPIES / original.relative_to(ORIGINALS)
        assert np.array_equal(load_image(original, size), load_image(copy, size)), original.name
