#!/usr/bin/env python3
"""The article's model at batch 128 in PyTorch and in Keras/TensorFlow, on the
CPU, timed like `cifar10-cnn bench`: the median training step (forward, loss,
backward, Adam) and the median inference of one batch. One JSON line each.
With --epoch-images, PyTorch instead times whole epochs on --device, like
`cifar10-cnn check` (scripts/gpu-check.sh runs it on a GPU machine).

    python tests/bench_peers.py [--steps 20] [--only torch|keras] [--batch-norm]
    python tests/bench_peers.py --epoch-images 45000 --device cuda
"""
import argparse
import json
import statistics
import time

import numpy as np


def median_ms(fn, steps, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


BATCH_NORM = False  # --batch-norm: a BatchNormalization after each convolution


def torch_model(device="cpu"):
    import torch
    from torch import nn

    torch.manual_seed(0)

    def conv(c_in, c_out, padding):
        # Keras's BatchNormalization defaults: epsilon 1e-3, momentum 0.99 (PyTorch's 0.01)
        bn = [nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01)] if BATCH_NORM else []
        return [nn.Conv2d(c_in, c_out, 3, padding=padding), *bn, nn.ReLU()]

    return nn.Sequential(
        *conv(3, 32, 1), *conv(32, 32, 0), nn.MaxPool2d(2), nn.Dropout(0.25),
        *conv(32, 64, 1), *conv(64, 64, 0), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(2304, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 10),
    ).to(device)


def bench_torch(x, y, steps):
    import torch
    from torch import nn

    model = torch_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.argmax(1))
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(xt), yt).backward()
        opt.step()

    def infer():
        model.eval()
        with torch.no_grad():
            model(xt)
        model.train()

    return {"framework": f"pytorch {torch.__version__}", "threads": torch.get_num_threads(),
            "train_step_ms": round(median_ms(step, steps), 1), "infer_ms": round(median_ms(infer, steps), 1)}


def torch_epochs(n, device, epochs=2, batch_size=128):
    """Whole epochs of n generated images kept on the device, shuffled each
    epoch, with the loss read every step as a logging loop does."""
    import torch
    from torch import nn

    model = torch_model(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.rand((n, 3, 32, 32), device=device)
    y = torch.randint(0, 10, (n,), device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    seconds = []
    for _ in range(epochs):
        sync()
        start = time.perf_counter()
        total = 0.0
        for idx in torch.randperm(n, device=device).split(batch_size):
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item()
        sync()
        seconds.append(round(time.perf_counter() - start, 3))
    return {"framework": f"pytorch {torch.__version__}", "device": device, "epoch_images": n, "epoch_seconds": seconds}


def keras_model():
    """The article's model in Keras, compiled as the article does."""
    import keras
    from keras import layers

    def conv(filters, padding="valid"):
        bn = [layers.BatchNormalization()] if BATCH_NORM else []
        return [layers.Conv2D(filters, 3, padding=padding), *bn, layers.Activation("relu")]

    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        *conv(32, "same"), *conv(32),
        layers.MaxPooling2D(2), layers.Dropout(0.25),
        *conv(64, "same"), *conv(64),
        layers.MaxPooling2D(2), layers.Dropout(0.25),
        layers.Flatten(), layers.Dense(512), layers.Activation("relu"), layers.Dropout(0.5),
        layers.Dense(10), layers.Activation("softmax"),
    ])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def bench_keras(x, y, steps):
    import keras

    keras.utils.set_random_seed(0)
    model = keras_model()
    xk = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # Keras is channels-last
    return {"framework": f"keras {keras.__version__} ({keras.backend.backend()})",
            "train_step_ms": round(median_ms(lambda: model.train_on_batch(xk, y), steps), 1),
            "infer_ms": round(median_ms(lambda: model.predict_on_batch(xk), steps), 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--only", choices=["torch", "keras"])
    parser.add_argument("--epoch-images", type=int, help="PyTorch only: time epochs of this many generated images")
    parser.add_argument("--device", default="cpu", help="for --epoch-images: cpu or cuda")
    parser.add_argument("--batch-norm", action="store_true", help="a BatchNormalization after each convolution")
    args = parser.parse_args()
    global BATCH_NORM
    BATCH_NORM = args.batch_norm
    if args.epoch_images:
        print(json.dumps(torch_epochs(args.epoch_images, args.device)), flush=True)
        return
    rng = np.random.default_rng(0)
    x = rng.random((128, 3, 32, 32), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[np.arange(128) % 10]
    for name, bench in [("torch", bench_torch), ("keras", bench_keras)]:
        if args.only in (None, name):
            result = bench(x, y, args.steps)
            result["images_per_s"] = round(128 / result["train_step_ms"] * 1e3)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
