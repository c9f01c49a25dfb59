"""Supervised contrastive learning (Khosla et al., NeurIPS 2020) for the ``supcon`` architecture.

Stage 1 trains the encoder (everything up to ``supcon_normalize``) and a projection head with the
supervised contrastive loss on two augmented views of each batch: cells of the same class are
pulled together, others pushed apart. Stage 2 freezes the encoder and fits the linear classifier
(``predictions``) on its embedding with cross-entropy. Only the plain classifier graph is saved.

The registry (``models.supcon_stages``) supplies the two stages; training switches between them
with :meth:`SupConTrainer.set_stage`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from bcclassify.data.augment import augment_batch

__all__ = ["SupConTrainer", "TEMPERATURE", "supervised_contrastive_loss"]

TEMPERATURE = 0.1


def supervised_contrastive_loss(
    projections: tf.Tensor, labels: tf.Tensor, temperature: float = TEMPERATURE
) -> tf.Tensor:
    """Mean SupCon loss (the L_out form) for L2-normalised projections ``(N, D)``."""
    labels = tf.reshape(labels, [-1, 1])
    n = tf.shape(projections)[0]
    logits = tf.matmul(projections, projections, transpose_b=True) / temperature
    not_self = 1.0 - tf.eye(n)
    positives = tf.cast(tf.equal(labels, tf.transpose(labels)), tf.float32) * not_self
    # log-softmax over every other sample (the anchor itself is excluded from the denominator)
    logits = logits - tf.reduce_max(logits, axis=1, keepdims=True)
    exp = tf.exp(logits) * not_self
    log_prob = logits - tf.math.log(tf.reduce_sum(exp, axis=1, keepdims=True) + 1e-12)
    positive_count = tf.reduce_sum(positives, axis=1)
    mean_log_prob = tf.reduce_sum(positives * log_prob, axis=1) / tf.maximum(positive_count, 1.0)
    has_positive = tf.cast(positive_count > 0, tf.float32)
    return -tf.reduce_sum(mean_log_prob * has_positive) / tf.maximum(
        tf.reduce_sum(has_positive), 1.0
    )


class SupConTrainer(keras.Model):
    """Wraps the supcon classifier; ``stage`` selects contrastive or classifier training."""

    def __init__(
        self,
        classifier: keras.Model,
        seed: int,
        projection_dim: int = 64,
        augment_views: bool = True,
        encoder_inputs: list | None = None,
        **kwargs,
    ):
        """``augment_views``: draw two augmented views of each image (pixel input). Off for a
        classifier on cached activations, whose feed already mixes augmented copies; a batch's
        same-class samples are then the positives. ``encoder_inputs``: for the top of a cut
        model, the boundary tensors of the full graph (Keras gives the top copies of them, which
        the embedding layer's output is not connected to)."""
        super().__init__(**kwargs)
        self.classifier = classifier
        self.augment_views = augment_views
        self.encoder = keras.Model(
            encoder_inputs or classifier.inputs, classifier.get_layer("supcon_normalize").output
        )
        self.projection = keras.Sequential(
            [
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dense(projection_dim),
                keras.layers.UnitNormalization(),
            ],
            name="supcon_projection",
        )
        self.head = classifier.get_layer("predictions")
        self.generator = tf.random.Generator.from_seed(seed)
        self.stage = "contrastive"
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def call(self, inputs, training=False):
        return self.classifier(inputs, training=training)

    def build_all(self) -> None:
        dummy = [tf.zeros([1, *t.shape[1:]]) for t in self.classifier.inputs]
        dummy = dummy[0] if len(dummy) == 1 else dummy
        self.projection(self.encoder(dummy))
        self.classifier(dummy)
        self.built = True

    def compile(self, *args, **kwargs) -> None:
        super().compile(*args, **kwargs)
        # The stages apply one optimizer to different variables: build it on all of them at once,
        # so its slots (and a checkpoint of either stage) are the same throughout.
        self.optimizer.build(self.trainable_variables)

    def set_stage(self, stage: str) -> None:
        if stage != self.stage:
            self.stage = stage
            self.train_function = None  # retrace train_step for the other stage

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def train_step(self, data):
        images, labels = data[0], data[1]
        if self.stage == "contrastive":
            if self.augment_views:
                views = tf.concat(
                    [augment_batch(images, self.generator), augment_batch(images, self.generator)],
                    0,
                )
                view_labels = tf.concat([labels, labels], 0)
            else:
                views, view_labels = images, labels
            variables = self.encoder.trainable_variables + self.projection.trainable_variables
            with tf.GradientTape() as tape:
                projections = self.projection(self.encoder(views, training=True), training=True)
                loss = supervised_contrastive_loss(projections, view_labels)
            self.optimizer.apply(tape.gradient(loss, variables), variables)
            self.loss_tracker.update_state(loss)
            return {"loss": self.loss_tracker.result()}
        augmented = augment_batch(images, self.generator) if self.augment_views else images
        embedding = self.encoder(augmented, training=False)  # frozen encoder, BN in inference
        variables = self.head.trainable_variables
        with tf.GradientTape() as tape:
            probabilities = self.head(embedding)
            loss = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
            loss = tf.reduce_mean(loss)
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(labels, probabilities)
        return {"loss": self.loss_tracker.result(), "accuracy": self.accuracy_tracker.result()}

    def test_step(self, data):
        images, labels = data[0], data[1]
        probabilities = self.classifier(images, training=False)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, probabilities))
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(labels, probabilities)
        return {"loss": self.loss_tracker.result(), "accuracy": self.accuracy_tracker.result()}
