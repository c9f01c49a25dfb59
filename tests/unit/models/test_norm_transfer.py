"""Group norm fitted to the batch norms it replaces (bcclassify.models.norm_transfer, issue 21)."""

from __future__ import annotations

import numpy as np
import pytest

from bcclassify.models.norm_transfer import (
    calibration_indices,
    fit_group_norm_affine,
    group_normalised,
)


def _pointwise_network(seed: int = 0):
    """1x1 convolutions and batch norms with non-trivial running statistics: each output pixel
    depends on its input pixel alone, so a spatial permutation of an image permutes every
    activation and leaves each image's group statistics unchanged."""
    import keras

    keras.utils.set_random_seed(seed)
    pixels = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 1, name="conv1")(pixels)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(4, 1, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2", scale=False)(x)  # as InceptionV3's
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(pixels, keras.layers.Dense(3, activation="softmax")(x))
    rng = np.random.default_rng(seed)
    for name in ("bn1", "bn2"):
        layer = model.get_layer(name)
        channels = layer.moving_mean.shape[0]
        gamma = [rng.uniform(0.5, 2.0, channels)] if layer.scale else []
        layer.set_weights(
            gamma
            + [
                rng.normal(0, 1, channels),  # beta
                rng.normal(0, 3, channels),  # moving mean
                rng.uniform(0.5, 4.0, channels),  # moving variance
            ]
        )
    return model


def test_group_normalised_is_what_the_keras_layer_computes_before_its_affine():
    import keras

    x = np.random.default_rng(1).normal(2.0, 3.0, (3, 5, 5, 8)).astype(np.float32)
    layer = keras.layers.GroupNormalization(groups=4, epsilon=1e-3)
    np.testing.assert_allclose(group_normalised(x, 4, 1e-3), np.asarray(layer(x)), atol=1e-4)


def test_fitted_group_norm_reproduces_batch_norm_where_it_can():
    """Images with the same statistics (spatial permutations of one): batch norm's affine map is
    exactly a group norm's, and the fit finds it, layer after layer; keeping the batch norm's
    scale and offset (the old conversion) computes something else."""
    from bcclassify.models.registry import with_group_norm

    source = _pointwise_network()
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 255, (64, 3)).astype(np.float32)
    images = np.stack([base[rng.permutation(64)].reshape(8, 8, 3) for _ in range(12)])
    expected = np.asarray(source(images, training=False))

    naive = with_group_norm(source)
    assert np.abs(np.asarray(naive(images, training=False)) - expected).max() > 1e-2
    # a batch norm without a scale becomes a group norm with a unit one, to be fitted
    np.testing.assert_array_equal(naive.get_layer("bn2").get_weights()[0], np.ones(4))

    fitted = with_group_norm(source)
    # in batches of 5, as the hybrid's fit streams them (the last batch has 2)
    summary = fit_group_norm_affine(source, fitted, images, batch_size=5)
    np.testing.assert_allclose(np.asarray(fitted(images, training=False)), expected, atol=2e-4)
    assert summary["layers"] == 2 and summary["images"] == 12
    assert summary["relative_error_last_batch"]["max"] < 1e-3
    assert summary["top_class_agreement"] == 1.0
    # the fit leaves the layers as they were built: their own call, nothing patched in
    assert "call" not in vars(fitted.get_layer("bn1"))


def test_fit_is_least_squares_when_group_norm_cannot_match_exactly():
    """Images with different statistics: no group norm reproduces batch norm, and the fitted one
    is closer than the old conversion on images it was not fitted on."""
    from bcclassify.models.registry import with_group_norm

    source = _pointwise_network(seed=3)
    rng = np.random.default_rng(4)
    # each image its own brightness and contrast, as across smears
    images = rng.uniform(0, 1, (48, 8, 8, 3)) * rng.uniform(50, 250, (48, 1, 1, 1))
    images = images.astype(np.float32)
    fit_on, held_back = images[:32], images[32:]
    expected = np.asarray(source(held_back, training=False))
    naive = with_group_norm(source)
    fitted = with_group_norm(source)
    summary = fit_group_norm_affine(source, fitted, fit_on)
    naive_error = np.abs(np.asarray(naive(held_back, training=False)) - expected).mean()
    fitted_error = np.abs(np.asarray(fitted(held_back, training=False)) - expected).mean()
    assert fitted_error < naive_error / 2
    assert 0 < summary["relative_error_last_batch"]["mean"] < 1


def test_fit_refuses_a_model_without_converted_norms():
    source = _pointwise_network()
    with pytest.raises(ValueError, match="no group norm that replaced a batch norm"):
        fit_group_norm_affine(source, source, np.zeros((2, 8, 8, 3), np.float32))


def test_calibration_indices_take_each_class_up_to_the_count():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    picked = calibration_indices(labels, 5, seed=0)
    assert np.bincount(labels[picked]).tolist() == [5, 3, 5]
    assert (np.diff(picked) > 0).all()
    np.testing.assert_array_equal(picked, calibration_indices(labels, 5, seed=0))
