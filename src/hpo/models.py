"""Keras models built from a trial's params: a CNN for images, an (optionally bidirectional) LSTM for text, and a
GRU/LSTM stack or 1-D convolution blocks for real-valued sequences.

The architectures here must agree exactly with :func:`hpo.search_space.count_params` (a test checks it for sampled
configurations), so that oversized configurations are rejected before any job is dispatched.

Layers keep Keras's default names; other code (``health.py``) finds layers by type, never by name.

Weight decay (CNN only; the LSTM space has no ``weight_decay``):

- with ``optimizer=adamw`` the decay is applied by AdamW itself (decoupled, ``weight_decay=params["weight_decay"]``)
  and the layers get **no** kernel regularizer, so weights are not decayed twice;
- with every other optimizer it is an L2 ``kernel_regularizer`` of strength ``params["weight_decay"]`` on the conv and
  hidden dense kernels (not on the output layer).

For text and sequence models ``adamw`` uses AdamW's default decay of 1e-4. Gradients are never clipped: the health
module measures exploding gradients, and clipping would hide them.
"""

from __future__ import annotations

from typing import Any

import keras

from .catalog import conv1d_pools

__all__ = [
    "OPTIMIZERS",
    "ACTIVATIONS",
    "build_model",
    "build_cnn",
    "build_lstm",
    "build_sequence",
    "make_optimizer",
]

#: optimizer names :func:`make_optimizer` accepts
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd", "rmsprop")
#: activation names the CNN accepts
ACTIVATIONS: tuple[str, ...] = ("relu", "elu", "gelu", "swish")

_DEFAULT_ADAMW_DECAY = 1e-4


def make_optimizer(name: str, learning_rate: float, weight_decay: float | None = None, *,
                   decay_steps: int | None = None) -> keras.optimizers.Optimizer:
    """A fresh, unclipped Keras optimizer. ``weight_decay`` is used by ``adamw`` only (default 1e-4).

    ``decay_steps``: the learning rate follows a cosine decay from ``learning_rate`` to 0 over that many steps
    (a trial's max_epochs x steps per epoch); None keeps it constant.
    """
    lr: Any = float(learning_rate)
    if decay_steps:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=int(decay_steps))
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    if name == "adamw":
        decay = _DEFAULT_ADAMW_DECAY if weight_decay is None else float(weight_decay)
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=decay)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr)
    raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def _check_activation(name: Any) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
    return name


def build_cnn(params: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Uncompiled CNN: [augmentation] -> conv blocks -> GAP/flatten -> dense head -> softmax."""
    activation = _check_activation(params["activation"])
    decay = float(params["weight_decay"])
    # AdamW decays the weights itself; an extra L2 penalty would decay them twice.
    regularizer = None if params.get("optimizer") == "adamw" else keras.regularizers.L2(decay)
    dropout = float(params["dropout"])

    inputs = keras.Input(shape=tuple(input_shape))
    x = inputs
    if params.get("augmentation", "none") == "light":
        x = keras.layers.RandomTranslation(0.1, 0.1)(x)  # no weights; active only in training
    for i in range(int(params["conv_blocks"])):
        filters = min(int(params["filters"]) * 2**i, 256)
        x = keras.layers.Conv2D(filters, int(params["kernel_size"]), padding="same", use_bias=True,
                                kernel_regularizer=regularizer)(x)
        if params["batch_norm"]:
            # momentum 0.9, not Keras' 0.99: short trials (few epochs, data_fraction proxies) take only tens of
            # steps, too few for 0.99's moving statistics to leave their initial values, and validation collapses
            x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.Activation(activation)(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x) if params["global_pooling"] else keras.layers.Flatten()(x)
    for _ in range(int(params["dense_layers"])):
        x = keras.layers.Dropout(dropout)(x)
        x = keras.layers.Dense(int(params["dense_units"]), activation=activation, kernel_regularizer=regularizer)(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def build_lstm(params: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, vocab_size: int) -> keras.Model:
    """Uncompiled text model: embedding -> (bi)LSTM stack -> dropout -> [dense relu -> dropout] -> softmax."""
    if vocab_size is None:
        raise ValueError("vocab_size is needed to build a text model")
    dropout = float(params["dropout"])
    layers = int(params["lstm_layers"])
    units = int(params["lstm_units"])

    inputs = keras.Input(shape=tuple(input_shape))
    x = keras.layers.Embedding(int(vocab_size), int(params["embedding_dim"]), mask_zero=False)(inputs)
    for i in range(layers):
        lstm = keras.layers.LSTM(units, return_sequences=i < layers - 1)
        if params["bidirectional"]:
            lstm = keras.layers.Bidirectional(lstm)
        x = lstm(x)
    x = keras.layers.Dropout(dropout)(x)
    dense = int(params["dense_units"])
    if dense > 0:
        x = keras.layers.Dense(dense, activation="relu")(x)
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def build_sequence(params: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Uncompiled model for real-valued sequences ``(T, F)``.

    ``cell`` gru / lstm: a stack of ``layers`` recurrent layers of ``units`` (``bidirectional`` when true; dropout
    between layers), read out as the last layer's final state (``readout=final``) or its outputs averaged / maxed over
    the steps. ``cell`` conv1d: ``layers`` blocks of Conv1D(``units``, ``kernel_size``, same padding, relu), each
    followed by max-pooling by 2 while at least 4 steps remain (:func:`hpo.catalog.conv1d_pools`), read out flattened
    (``final``) or pooled over the steps. Then dropout -> softmax. Keras' default recurrent settings are kept, so
    GPUs use the cuDNN kernels.
    """
    cell = params["cell"]
    if cell not in ("gru", "lstm", "conv1d"):
        raise ValueError(f"unknown cell {cell!r}; allowed: gru, lstm, conv1d")
    readout = params["readout"]
    if readout not in ("final", "average", "max"):
        raise ValueError(f"unknown readout {readout!r}; allowed: final, average, max")
    layers, units, dropout = int(params["layers"]), int(params["units"]), float(params["dropout"])

    inputs = keras.Input(shape=tuple(input_shape))
    x = inputs
    if cell == "conv1d":
        for pool in conv1d_pools(int(input_shape[0]), layers):
            x = keras.layers.Conv1D(units, int(params["kernel_size"]), padding="same", activation="relu")(x)
            if pool:
                x = keras.layers.MaxPooling1D(2)(x)
    else:
        rnn = keras.layers.GRU if cell == "gru" else keras.layers.LSTM
        for i in range(layers):
            last = i == layers - 1
            layer = rnn(units, return_sequences=not last or readout != "final")
            x = keras.layers.Bidirectional(layer)(x) if params.get("bidirectional") else layer(x)
            if not last:
                x = keras.layers.Dropout(dropout)(x)
    if readout == "average":
        x = keras.layers.GlobalAveragePooling1D()(x)
    elif readout == "max":
        x = keras.layers.GlobalMaxPooling1D()(x)
    elif cell == "conv1d":
        x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def build_model(params: dict[str, Any], *, modality: str, input_shape: tuple[int, ...], num_classes: int,
                vocab_size: int | None = None, strategy: Any = None, decay_steps: int | None = None) -> keras.Model:
    """Build and compile the modality's model (inside ``strategy.scope()`` when a tf.distribute strategy is given).

    Compiled with the params' optimizer and learning rate (cosine-decayed over ``decay_steps`` when given), sparse
    categorical cross-entropy and accuracy, so the history keys are ``loss``, ``accuracy``, ``val_loss``,
    ``val_accuracy``.
    """
    if modality not in ("image", "text", "sequence"):
        raise ValueError(f"unknown modality {modality!r}; allowed: image, text, sequence")
    # Validate names before creating any variables.
    if params["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {params['optimizer']!r}; allowed: {', '.join(OPTIMIZERS)}")

    def _build() -> keras.Model:
        if modality == "image":
            model = build_cnn(params, input_shape, num_classes)
            weight_decay = params.get("weight_decay")
        elif modality == "text":
            model = build_lstm(params, input_shape, num_classes, vocab_size)
            weight_decay = None
        else:
            model = build_sequence(params, input_shape, num_classes)
            weight_decay = None
        optimizer = make_optimizer(params["optimizer"], params["learning_rate"], weight_decay,
                                   decay_steps=decay_steps)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    if strategy is None:
        return _build()
    with strategy.scope():
        return _build()
