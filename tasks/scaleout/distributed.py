"""Training across several machines: a custom loop over MultiWorkerMirroredStrategy.

Keras 3's `fit` cannot consume batches distributed across workers (it fails converting `PerReplica`
values, keras-team/keras#20585), so this loop does what `fit` would: every worker reads its own
share of the train split, gradients are all-reduced each step by TensorFlow's collectives, and the
epoch's numbers are reduced the same way, so every worker sees identical logs and takes identical
early-stopping decisions (a worker that stopped alone would leave the others waiting forever).

The same Keras callbacks as the single-machine path run here (early stopping, checkpoint, TensorBoard,
DVCLive, throughput); the caller gives file-writing callbacks a folder of the worker's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

SUM = tf.distribute.ReduceOp.SUM
MEAN = tf.distribute.ReduceOp.MEAN


def hits(y: tf.Tensor, p: tf.Tensor) -> tf.Tensor:
    """Per-example 1.0 if the prediction is right, as the compiled accuracy metric of the
    single-machine path counts it (BinaryAccuracy for one sigmoid output, CategoricalAccuracy else)."""
    if p.shape[-1] == 1:
        return keras.metrics.binary_accuracy(y, p)[:, 0]
    return keras.metrics.categorical_accuracy(y, p)


def fit(
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    train_dataset: Callable[[tf.distribute.InputContext], tf.data.Dataset],
    val_dataset: tf.data.Dataset | None,
    global_batch: int,
    steps_per_epoch: int,
    epochs: int,
    callbacks: Sequence[keras.callbacks.Callback],
) -> dict[str, list[float]]:
    """Train a compiled model for up to `epochs` of `steps_per_epoch` steps; returns the history.

    `train_dataset(ctx)` gives this worker's endless, per-replica-batched share of the train split;
    `val_dataset` (the whole val split, evaluated by every worker) may be None.
    """
    loss_fn = model.loss
    optimizer = model.optimizer
    batches = iter(strategy.distribute_datasets_from_function(train_dataset))

    def replica_step(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            p = model(x, training=True)
            per_example = loss_fn.call(y, p)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)  # all-reduces (sums) the gradients
        return tf.reduce_sum(per_example), tf.reduce_sum(hits(y, p))

    @tf.function
    def train_step(iterator) -> tuple[tf.Tensor, tf.Tensor]:
        loss_sum, right = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce(SUM, loss_sum, axis=None), strategy.reduce(SUM, right, axis=None)

    @tf.function
    def val_step(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        p = model(x, training=False)
        return tf.reduce_sum(loss_fn.call(y, p)), tf.reduce_sum(hits(y, p))

    def agree(values: tf.Tensor) -> tf.Tensor:
        """The mean over workers of values every worker computed: identical logs everywhere."""
        per_replica = strategy.experimental_distribute_values_from_function(lambda _: tf.identity(values))
        return strategy.reduce(MEAN, per_replica, axis=None)

    cbs = keras.callbacks.CallbackList(list(callbacks), model=model, epochs=epochs, steps=steps_per_epoch)
    history: dict[str, list[float]] = {}
    model.stop_training = False
    cbs.on_train_begin()
    for epoch in range(epochs):
        cbs.on_epoch_begin(epoch)
        loss_sum = right = tf.constant(0.0)
        for step in range(steps_per_epoch):
            cbs.on_train_batch_begin(step)
            batch_loss, batch_right = train_step(batches)
            loss_sum, right = loss_sum + batch_loss, right + batch_right
            cbs.on_train_batch_end(step)
        seen = float(steps_per_epoch * global_batch)
        numbers = [loss_sum / seen, right / seen]
        if val_dataset is not None:
            v_loss = v_right = tf.constant(0.0)
            v_seen = 0
            for x, y in val_dataset:
                b_loss, b_right = val_step(x, y)
                v_loss, v_right, v_seen = v_loss + b_loss, v_right + b_right, v_seen + int(x.shape[0])
            numbers += [v_loss / v_seen, v_right / v_seen]
        values = agree(tf.stack(numbers)).numpy().tolist()
        names = ["loss", "accuracy", "val_loss", "val_accuracy"][: len(values)]
        logs = dict(zip(names, values, strict=True))
        for k, v in logs.items():
            history.setdefault(k, []).append(v)
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end()  # early stopping restores the best epoch's weights here
    # Batch-norm statistics are kept per replica (as under Keras's own fit); the mean over workers
    # makes every worker end with the same model, whichever one writes it.
    for v in model.non_trainable_variables:
        v.assign(agree(v.value))
    return history
