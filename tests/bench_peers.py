#!/usr/bin/env python3
"""The article's model at batch 128 in PyTorch and in Keras/TensorFlow, on the
CPU, timed like `cifar10-cnn bench`: the median training step (forward, loss,
backward, Adam) and the median inference of one batch. One JSON line each.
With --ours (the crate's `cifar10-cnn` command), each round times the crate
first and then the peers, in one window, and the end names the CPU and prints
the crate's ratios to each peer, round by round (`make bench-peers`).
With --epoch-images, PyTorch instead times whole epochs on --device, like
`cifar10-cnn check` (scripts/gpu-check.sh runs it on a GPU machine).

    python tests/bench_peers.py [--steps 20] [--only torch|keras] [--batch-norm]
    python tests/bench_peers.py --ours target/release/cifar10-cnn --rounds 3
    python tests/bench_peers.py --epoch-images 45000 --device cuda
"""
import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
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


def json_line_of(cmd):
    """Runs `cmd`; its last JSON line, parsed (or exits saying what failed)."""
    try:
        run = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"could not run {' '.join(cmd)}: {e}")
    if run.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {run.returncode}):\n{run.stderr}")
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if not lines:
        sys.exit(f"{' '.join(cmd)} printed no JSON line; its output:\n{run.stdout}{run.stderr}")
    return json.loads(lines[-1])


def in_turn(ours, only, steps):
    """One round: the crate, then Keras, then PyTorch, each in a process of
    its own (TensorFlow and PyTorch in one process can abort on their LLVMs'
    options), so that each starts as the user's would."""
    flags = ["--steps", str(steps)] + (["--batch-norm"] if BATCH_NORM else [])
    results = {"ours": {"framework": "cifar10-cnn (this crate)", **json_line_of(shlex.split(ours) + ["bench", *flags])}}
    print(json.dumps(results["ours"]), flush=True)
    for name in ("keras", "torch"):
        if only in (None, name):
            results[name] = json_line_of([sys.executable, __file__, "--only", name, *flags])
            print(json.dumps(results[name]), flush=True)
    return results


def cpu_name():
    """The CPU as `lscpu` names it, and the vector ISA the kernels care about."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_tile", "avx2", "fma") if f in flags]
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:  # virtual machines often hide the generation: the family says it
        name += f", family {fields['cpu family']} model {fields.get('model', '?')}"
    return name, isa


def print_ratios(rounds):
    """The crate's train step and inference over each peer's, round by round."""
    name, isa = cpu_name()
    print(f"\nCPU: {name}; {', '.join(isa) or 'no AVX2'}; {len(rounds)} round(s) in one window")
    print("ratio (crate / peer)      " + "  ".join(f"round {i + 1:<2}" for i in range(len(rounds))))
    for peer in ("keras", "torch"):
        for what in ("train_step_ms", "infer_ms"):
            cells = []
            for r in rounds:
                if peer in r and "ours" in r:
                    cells.append(f"{r['ours'][what] / r[peer][what]:>8.2f}")
            if cells:
                label = f"{what.removesuffix('_ms').replace('_', ' ')} vs {peer}"
                print(f"{label:<26}" + "  ".join(cells))
    print(json.dumps({"cpu": name, "isa": isa, "rounds": rounds}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--only", choices=["torch", "keras"])
    parser.add_argument("--epoch-images", type=int, help="PyTorch only: time epochs of this many generated images")
    parser.add_argument("--device", default="cpu", help="for --epoch-images: cpu or cuda")
    parser.add_argument("--batch-norm", action="store_true", help="a BatchNormalization after each convolution")
    parser.add_argument("--ours", metavar="COMMAND", help="the crate's cifar10-cnn command: timed first in each round, then the ratios")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (crate, Keras, PyTorch) in one window")
    args = parser.parse_args()
    global BATCH_NORM
    BATCH_NORM = args.batch_norm
    if args.epoch_images:
        print(json.dumps(torch_epochs(args.epoch_images, args.device)), flush=True)
        return
    rng = np.random.default_rng(0)
    x = rng.random((128, 3, 32, 32), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[np.arange(128) % 10]
    if args.ours:
        print_ratios([in_turn(args.ours, args.only, args.steps) for _ in range(max(args.rounds, 1))])
        return
    for name, bench in [("torch", bench_torch), ("keras", bench_keras)]:
        if args.only in (None, name):
            result = bench(x, y, args.steps)
            result["images_per_s"] = round(128 / result["train_step_ms"] * 1e3)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
