#!/usr/bin/env python3
"""Build the notebooks' crate in the Rust kernel's build folder before JupyterLab opens.

The notebooks' set-up cell (`:dep cifar10-cnn ...`) builds candle and the crate the
first time it runs: minutes on 2 cores, during which the cell shows nothing (evcxr
sends the build's log to the kernel's stderr, not to the page). This runs that same
cell, read from the notebook, in a kernel started as JupyterLab starts it (through
scripts/rust-kernel, so into the first free build folder, target/evcxr/<slot>), and
prints each crate as it compiles. The kernel the user opens next takes the same
folder and finds everything built: its set-up cell answers in seconds.

    warm-kernel.py [NOTEBOOK]    (default: notebooks/cifar10_cnn.ipynb)

All three notebooks share the same set-up cell, so one warm-up serves them all.
"""
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from jupyter_client.manager import KernelManager

ROOT = Path(__file__).resolve().parent.parent
COMPILING = re.compile(r"^\s*Compiling (\S+) (\S+)")


def setup_cell(notebook):
    """The notebook's first code cell that declares a dependency: the set-up cell."""
    cells = json.loads(notebook.read_text())["cells"]
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and ":dep " in source:
            return source
    sys.exit(f"warm-kernel: {notebook} has no cell with a `:dep` line to build")


def show_build(stream, start):
    """Echo the kernel's build log, one line per compiled crate, with the time so far."""
    count = 0
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        found = COMPILING.match(line)
        if found:
            count += 1
            print(f"  [{time.monotonic() - start:4.0f} s] {count:3d} compiling {found[1]} {found[2]}", flush=True)
        elif line and "error" in line.lower():
            print(f"  kernel: {line}", flush=True)


def main():
    notebook = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "notebooks" / "cifar10_cnn.ipynb"
    code = setup_cell(notebook)
    print("warm-kernel: building the notebooks' crate in the Rust kernel's build folder "
          "(about 4 minutes on 2 cores the first time, seconds after that)", flush=True)
    start = time.monotonic()
    manager = KernelManager(kernel_name="rust")
    # evcxr's stdout says only that it found no evcxr.toml; its stderr carries the build log.
    manager.start_kernel(cwd=str(notebook.parent), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    threading.Thread(target=show_build, args=(manager.provisioner.process.stderr, start), daemon=True).start()
    client = manager.client()
    client.start_channels()
    outputs, errors = [], []

    def on_output(msg):
        content = msg["content"]
        if msg["msg_type"] == "stream":
            (errors if content["name"] == "stderr" else outputs).append(content["text"])
        elif msg["msg_type"] == "error":
            errors.append("\n".join(content.get("traceback", [])) or content.get("evalue", ""))

    try:
        client.wait_for_ready(timeout=120)
        reply = client.execute_interactive(code, timeout=3600, output_hook=on_output)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)
    seconds = time.monotonic() - start
    if reply["content"]["status"] != "ok" or errors:
        print("warm-kernel: the set-up cell failed (the notebook will show the same error):",
              *errors, sep="\n", flush=True)
        return 1
    print(f"warm-kernel: ready in {seconds:.0f} s: {''.join(outputs).strip()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
