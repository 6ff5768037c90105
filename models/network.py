"""The Keras 3 network: normalised numbers and embedded categories in, two heads out.

``logit`` is the finishing-within-horizon head before the sigmoid (trained with log loss;
the sigmoid and its recalibration live in the exported graph), ``hours`` the regression
head for hours remaining (trained on batches that finish; stuck ones are masked out).
TensorFlow is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from brewcast.contract import CATEGORICAL
from models.inputs import NUMERIC_INPUT, Preprocessing

HOURS_SCALE = 24.0  # the regression loss works in days so both heads weigh alike


@dataclass(frozen=True)
class NetworkConfig:
    hidden_layers: tuple[int, ...] = (64, 32)
    activation: str = "relu"
    l1: float = 0.0
    l2: float = 1e-4
    dropout: float = 0.1
    learning_rate: float = 2e-3
    batch_size: int = 256
    epochs: int = 60
    patience: int = 8
    hours_loss_weight: float = 0.3
    seed: int = 42

    def params(self) -> dict[str, object]:
        return {f"net_{k}": v for k, v in self.__dict__.items()}


@dataclass
class TrainedNetwork:
    model: object  # keras.Model
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0


def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    return keras


def masked_huber(y_true, y_pred):
    """Huber loss in days, ignoring rows whose target is NaN (stuck batches never finish)."""
    from keras import ops

    mask = ops.logical_not(ops.isnan(y_true))
    y_true = ops.where(mask, y_true, y_pred) / HOURS_SCALE
    err = ops.abs(y_true - y_pred / HOURS_SCALE)
    loss = ops.where(err < 1.0, 0.5 * err * err, err - 0.5)
    return ops.sum(loss, axis=-1) * ops.cast(ops.any(mask, axis=-1), loss.dtype)


def load_network(path):
    """A network saved by a training run (its custom loss included)."""
    return _keras().models.load_model(path, custom_objects={"masked_huber": masked_huber})


def embedding_width(size: int) -> int:
    """Embedding width near vocabulary_size ** 0.25 (DOMAIN.md), at least 2; ``size``
    counts the out-of-vocabulary index."""
    return max(2, round(size**0.25))


def build_network(pre: Preprocessing, train_numeric: np.ndarray, config: NetworkConfig):
    keras = _keras()
    layers = keras.layers
    numeric = keras.Input(shape=(train_numeric.shape[1],), name=NUMERIC_INPUT, dtype="float32")
    normalise = layers.Normalization(name="normalise")
    normalise.adapt(train_numeric)
    parts, inputs = [normalise(numeric)], [numeric]
    for name in CATEGORICAL:
        size = len(pre.vocabularies[name]) + 1  # + the out-of-vocabulary index 0
        dim = embedding_width(size)
        cat = keras.Input(shape=(1,), name=name, dtype="int64")
        inputs.append(cat)
        parts.append(layers.Flatten()(layers.Embedding(size, dim, name=f"embed_{name}")(cat)))
    x = layers.Concatenate()(parts)
    regulariser = keras.regularizers.L1L2(l1=config.l1, l2=config.l2)
    for i, units in enumerate(config.hidden_layers):
        x = layers.Dense(
            units, activation=config.activation, kernel_regularizer=regulariser, name=f"hidden_{i}"
        )(x)
        if config.dropout:
            x = layers.Dropout(config.dropout, seed=config.seed + i)(x)
    logit = layers.Dense(1, name="logit")(x)
    hours = layers.Rescaling(HOURS_SCALE, name="hours")(layers.Dense(1, name="days")(x))
    model = keras.Model(
        inputs=inputs, outputs={"logit": logit, "hours": hours}, name="fermentation_completion"
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss={"logit": keras.losses.BinaryCrossentropy(from_logits=True), "hours": masked_huber},
        loss_weights={"logit": 1.0, "hours": config.hours_loss_weight},
    )
    return model


def train_network(
    pre: Preprocessing,
    x_train: dict,
    y_train: dict,
    x_val: dict,
    y_val: dict,
    config: NetworkConfig,
    progress: bool = True,
) -> TrainedNetwork:
    """Fit with early stopping on validation loss, restoring the best weights."""
    keras = _keras()
    keras.utils.set_random_seed(config.seed)
    model = build_network(pre, x_train[NUMERIC_INPUT], config)
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, restore_best_weights=True
    )
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        batch_size=config.batch_size,
        epochs=config.epochs,
        callbacks=[stop],
        shuffle=True,
        verbose=2 if progress else 0,
    )
    h = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    best = int(np.argmin(h["val_loss"])) + 1 if h.get("val_loss") else len(h.get("loss", []))
    return TrainedNetwork(model, h, best)


def predict_network(model, x: dict) -> tuple[np.ndarray, np.ndarray]:
    """(logit, hours) for every row, via a direct call (no Keras predict overhead)."""
    out = model(x, training=False)
    return (
        np.asarray(out["logit"], dtype=np.float64).ravel(),
        np.asarray(out["hours"], dtype=np.float64).ravel(),
    )
