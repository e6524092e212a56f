#!/usr/bin/env python3
"""Execute the notebooks headless on the evcxr (Rust) kernel and check them.

evcxr reports a panicking cell, and a `?` on an `Err`, as a successful
execution with the message on stderr, so besides nbclient's own errors this
reads every output: any stderr text fails the run. Each notebook must also show
what it exists to show (curves, image grid, evaluation line).

    python tests/run_notebooks.py [--out DIR] [--timeout S] [NOTEBOOK ...]

The environment (EPOCHS, TRAIN_SIZE, CIFAR10_DIR, ...) passes to the kernel.
"""
import argparse
import json
import os
import queue
import random
import re
import shutil
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent

# What each notebook's outputs must contain: (description, predicate on the
# list of all outputs).
def has_mime(mime):
    return lambda outs: any(mime in o.get("data", {}) for o in outs)


def has_png_only():
    """A picture shown as PNG alone: the galleries. (Plots come as SVG with a
    PNG fallback, which must not count as the prediction grid.)"""
    return lambda outs: any(
        "image/png" in o.get("data", {}) and "image/svg+xml" not in o.get("data", {}) for o in outs
    )


def has_text(text):
    return lambda outs: any(o.get("output_type") == "stream" and text in o.get("text", "") for o in outs)


def has_line(pattern):
    """A line of the streamed text matching the regular expression."""
    regex = re.compile(pattern, re.M)
    return lambda outs: any(o.get("output_type") == "stream" and regex.search(o.get("text", "")) for o in outs)


# The set-up cell's last line, and Keras's progress bar within an epoch.
READY = ("the set-up cell's version and device", has_line(r"^cifar10-cnn \d+\.\d+\.\d+ \(optimized\), device: "))
PROGRESS = ("the progress within an epoch", has_line(r"^ *\d+/\d+ \[[=>.]{30}\] - ETA: \d+s - loss: "))


# The improving notebook's runs, by name.
IMPROVING_STEPS = ["1. the article", "2. augmentation", "3. batch normalization",
                   "4. SGD, warm-up and cosine decay", "5. label smoothing, test-time flips"]

CHECKS = {
    "cifar10_cnn.ipynb": [
        READY,
        ("the model summary", has_text("Total params: 1,250,858")),
        PROGRESS,
        ("the per-epoch log", has_text("val_acc: ")),
        ("the learning curves (SVG)", has_mime("image/svg+xml")),
        ("the prediction grid (PNG)", has_png_only()),
        ("the evaluation line", has_text("Test Data accuracy: ")),
    ],
    "improving.ipynb": [
        READY,
        PROGRESS,
        ("the augmented copies (PNG)", has_png_only()),
        ("each step's test line", lambda outs: all(has_text(f"{n}: test accuracy ")(outs) for n in IMPROVING_STEPS)),
        ("the comparison plot of every step (SVG)", lambda outs: any(
            all(n in o.get("data", {}).get("image/svg+xml", "") for n in IMPROVING_STEPS) for o in outs)),
        ("the table of every step (HTML)", lambda outs: any(
            'class="runs"' in o.get("data", {}).get("text/html", "")
            and o["data"]["text/html"].count("<tr>") == len(IMPROVING_STEPS) + 1
            and all(n in o["data"]["text/html"] for n in IMPROVING_STEPS) for o in outs)),
        ("the final model's confusion report", has_text("most confused")),
    ],
    "own_images.ipynb": [
        READY,
        ("the per-epoch log", has_text("val_acc: ")),
        ("the learning curves (SVG)", has_mime("image/svg+xml")),
        ("the prediction grid (PNG)", has_png_only()),
        ("the evaluation line", has_text("Test Data accuracy: ")),
    ],
}


def write_png(path, width, height, pixel):
    """A plain RGB PNG, written without any imaging library."""
    rows = b"".join(b"\0" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def write_image_folder(root, per_class=40, seed=0):
    """A small folder of three classes (mostly red, green or blue pictures of
    varied sizes, with noise) for own_images.ipynb when IMAGES_DIR is unset."""
    rng = random.Random(seed)
    for k, name in enumerate(["red_things", "green_things", "blue_things"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = rng.randint(24, 64), rng.randint(24, 64)
            noise = [[rng.randint(0, 60) for _ in range(w)] for _ in range(h)]
            def pixel(x, y, k=k, noise=noise):
                base = [60, 60, 60]
                base[k] = 190
                return [min(255, c + noise[y][x]) for c in base]
            write_png(root / name / f"{i:03d}.png", w, h, pixel)


def problems_in(nb):
    """Errors, panics and stderr text in the executed cells."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
            elif kind == "stream" and out.get("name") == "stderr" and out.get("text", "").strip():
                found.append(f"cell {i} wrote to stderr:\n{out['text']}")
    return found


def cell_seconds(cell):
    """How long a cell took from the kernel's busy to its reply, from the
    timestamps nbclient records in the cell's metadata."""
    from datetime import datetime
    t = cell.get("metadata", {}).get("execution", {})
    start, end = t.get("iopub.status.busy"), t.get("shell.execute_reply")
    if not (start and end):
        return None
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
    return (parse(end) - parse(start)).total_seconds()


def timing_table(nb, name):
    """Each code cell's time and first line, slowest marked: what a learner
    waits for."""
    rows = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            lines = [l for l in cell.source.splitlines() if l.strip()]
            # The set-up cell by its `:dep`, the others by their first line of code.
            first = next((l for l in lines if l.startswith(":dep")), None) or next(
                (l for l in lines if not l.startswith(":")), lines[0] if lines else "")
            rows.append((i, cell_seconds(cell), first[:70]))
    lines = [f"per-cell time, {name}:", "  cell  seconds  first line"]
    for i, sec, first in rows:
        lines.append(f"  {i:>4}  {'-' if sec is None else f'{sec:7.1f}'}  {first}")
    return "\n".join(lines), rows


def run(path, out_dir, timeout):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="rust",
        timeout=timeout,
        startup_timeout=120,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.time()
    failure = None
    try:
        client.execute()
    except CellExecutionError as e:
        failure = str(e)
    seconds = time.time() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)

    table, rows = timing_table(nb, path.name)
    print(table, flush=True)
    (out_dir / (path.stem + ".timings.json")).write_text(
        json.dumps([{"cell": i, "seconds": sec, "first_line": first} for i, sec, first in rows], indent=1))

    problems = problems_in(nb)
    if failure and not problems:
        problems.append(failure)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    for what, ok in CHECKS.get(path.name, []):
        if not ok(outputs):
            problems.append(f"missing from the outputs: {what}")
    return seconds, problems


# How long the failing-cell check waits for output that comes after a cell's end.
LATE_OUTPUT_SECONDS = 5


def setup_cell():
    """The main notebook's set-up cell (`:dep`, `:efmt`, ...), as it is."""
    nb = nbformat.read(ROOT / "notebooks" / "cifar10_cnn.ipynb", as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code" and ":dep cifar10-cnn" in c.source)


def check_failing_cell(out_dir, timeout):
    """A cell whose `?` meets an error shows a readable message with its whole
    chain (what failed, and why), and the next cell still runs in the same
    kernel with the earlier variables."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "rust", "display_name": "Rust", "language": "rust"}
    nb.cells = [
        nbformat.v4.new_code_cell(setup_cell()),
        nbformat.v4.new_code_cell('use cifar10_cnn::prelude::*;\nlet answer: usize = 42;'),
        nbformat.v4.new_code_cell('let model: Sequential = Sequential::load("no/such/model")?;'),
        nbformat.v4.new_code_cell('println!("still here: {answer}");'),
    ]
    client = NotebookClient(nb, kernel_name="rust", timeout=timeout, startup_timeout=120,
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})

    async def collect_late_output(cell, cell_index, execute_reply):
        """evcxr_jupyter forwards the program's stdout/stderr from a thread of
        its own, so under load a cell's last line (here, the error) can reach
        iopub after the cell's `idle`, where nbclient has stopped listening.
        Wait for such lines after the failing cell, as a browser would show them."""
        if cell_index != 2:
            return
        deadline = time.monotonic() + LATE_OUTPUT_SECONDS
        while time.monotonic() < deadline:
            try:
                msg = await client.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            if msg["msg_type"] == "stream":
                cell.outputs.append(nbformat.v4.new_output("stream", name=msg["content"]["name"],
                                                           text=msg["content"]["text"]))

    client.on_cell_executed = collect_late_output
    client.execute()
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / "failing_cell.ipynb")
    texts = ["".join(o.get("text", "") for o in c.outputs) for c in nb.cells]
    problems = []
    if "cannot read model architecture no/such/model.json" not in texts[2]:
        problems.append(f"the failing cell did not say what was wrong: {texts[2]!r}")
    if "No such file or directory" not in texts[2]:
        problems.append(f"the failing cell did not show the error's cause (:efmt): {texts[2]!r}")
    if "panicked" in texts[2] or "stack backtrace" in texts[2].lower():
        problems.append(f"the failing cell showed a panic or a backtrace: {texts[2]!r}")
    if "still here: 42" not in texts[3]:
        problems.append(f"the kernel did not carry on after the failing cell: {texts[3]!r}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "notebooks")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--fresh", action="store_true",
                        help="delete RESULTS_DIR/improving first, so that the improving notebook trains its runs "
                             "instead of loading those of an earlier test (RESULTS_DIR must be set)")
    args = parser.parse_args()
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    failed = passed = 0
    for path in notebooks:
        if path.name == "own_images.ipynb" and not os.environ.get("IMAGES_DIR") and not os.environ.get("IMAGES_TRAIN_DIR"):
            folder = Path(tempfile.mkdtemp(prefix="own-images-"))
            write_image_folder(folder)
            os.environ["IMAGES_DIR"] = str(folder)
            print(f"IMAGES_DIR is not set: wrote a small image folder to {folder}", flush=True)
        if path.name == "improving.ipynb" and args.fresh:
            if not os.environ.get("RESULTS_DIR"):
                sys.exit("--fresh needs RESULTS_DIR: it would delete the runs in notebooks/results")
            shutil.rmtree(Path(os.environ["RESULTS_DIR"]) / "improving", ignore_errors=True)
        print(f"executing {path.name} ...", flush=True)
        seconds, problems = run(path.resolve(), args.out, args.timeout)
        if problems:
            failed += 1
            print(f"FAILED {path.name} ({seconds:.0f} s):", *problems, sep="\n  ", flush=True)
        else:
            passed += 1
            print(f"ok {path.name} ({seconds:.0f} s), executed copy in {args.out / path.name}", flush=True)
    if not args.notebooks:
        print("executing a notebook with a failing cell ...", flush=True)
        problems = check_failing_cell(args.out, args.timeout)
        if problems:
            failed += 1
            print("FAILED failing-cell check:", *problems, sep="\n  ", flush=True)
        else:
            passed += 1
            print("ok failing-cell check: readable error, the kernel carries on", flush=True)
    print(f"notebooks: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
