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
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent

# What each notebook's outputs must contain: (description, predicate on the
# list of all outputs).
def has_mime(mime):
    return lambda outs: any(mime in o.get("data", {}) for o in outs)


def has_text(text):
    return lambda outs: any(o.get("output_type") == "stream" and text in o.get("text", "") for o in outs)


CHECKS = {
    "cifar10_cnn.ipynb": [
        ("the model summary", has_text("Total params: 1,250,858")),
        ("the per-epoch log", has_text("val_acc: ")),
        ("the learning curves (SVG)", has_mime("image/svg+xml")),
        ("the prediction grid (PNG)", has_mime("image/png")),
        ("the evaluation line", has_text("Test Data accuracy: ")),
    ],
    "own_images.ipynb": [
        ("the per-epoch log", has_text("val_acc: ")),
        ("the learning curves (SVG)", has_mime("image/svg+xml")),
        ("the prediction grid (PNG)", has_mime("image/png")),
        ("the evaluation line", has_text("Test Data accuracy: ")),
    ],
}


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

    problems = problems_in(nb)
    if failure and not problems:
        problems.append(failure)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    for what, ok in CHECKS.get(path.name, []):
        if not ok(outputs):
            problems.append(f"missing from the outputs: {what}")
    return seconds, problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "notebooks")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args()
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    failed = passed = 0
    for path in notebooks:
        print(f"executing {path.name} ...", flush=True)
        seconds, problems = run(path.resolve(), args.out, args.timeout)
        if problems:
            failed += 1
            print(f"FAILED {path.name} ({seconds:.0f} s):", *problems, sep="\n  ", flush=True)
        else:
            passed += 1
            print(f"ok {path.name} ({seconds:.0f} s), executed copy in {args.out / path.name}", flush=True)
    print(f"notebooks: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
