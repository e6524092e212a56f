#!/usr/bin/env python3
"""The article's Keras program on the same CIFAR-10 files, as the reference
for the crate's results: the same model, Adam, 25 epochs at batch 128 with
validation_split=0.1, then the test loss and accuracy. Writes the history as
JSON in the crate's format (loss, acc, val_loss, val_acc, epoch_seconds).

    python tests/keras_reference.py --data $CIFAR10_DIR --seed 0 --out results/keras-seed0
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np


def load(path):
    """A CIFAR-10 binary batch: labels, and images as NHWC floats in [0, 1]."""
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
    images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images.astype("float32") / 255.0, raw[:, 0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the cifar-10-batches-bin folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--train-size", type=int, help="the first N training images only (a quick look)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import keras

    from bench_peers import keras_model  # the same model as the benchmark's

    keras.utils.set_random_seed(args.seed)
    parts = [load(args.data / f"data_batch_{i}.bin") for i in range(1, 6)]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = keras.utils.to_categorical(np.concatenate([p[1] for p in parts]), 10)
    x_train, y_train = x_train[:args.train_size], y_train[:args.train_size]
    x_test, y_test = load(args.data / "test_batch.bin")
    y_test = keras.utils.to_categorical(y_test, 10)

    model = keras_model()

    class EpochTimes(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    times = EpochTimes()
    fit = model.fit(x_train, y_train, batch_size=128, epochs=args.epochs, validation_split=0.1,
                    verbose=2, callbacks=[times])
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"Test Data loss: {loss:.4f}")
    print(f"Test Data accuracy: {accuracy:.4f}")

    h = fit.history
    history = {"loss": h["loss"], "acc": h["accuracy"], "val_loss": h["val_loss"], "val_acc": h["val_accuracy"],
               "epoch_seconds": times.seconds}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "history.json").write_text(json.dumps(history, indent=2))
    (args.out / "score.json").write_text(json.dumps({
        "framework": f"keras {keras.__version__} ({keras.backend.backend()})", "seed": args.seed,
        "test_loss": loss, "test_accuracy": accuracy}, indent=2))


if __name__ == "__main__":
    main()
