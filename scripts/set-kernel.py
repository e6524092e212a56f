#!/usr/bin/env python3
"""Points the Rust kernelspec (made by `evcxr_jupyter --install`) at
scripts/rust-kernel, and sets the kernel's environment.

    set-kernel.py KERNEL_JSON RUST_KERNEL_SCRIPT EVCXR_JUPYTER
"""
import json
import sys

path, script, evcxr = sys.argv[1:4]
with open(path) as f:
    kernel = json.load(f)
kernel["argv"] = [script, "--control_file", "{connection_file}"]
env = kernel.setdefault("env", {})
env["EVCXR_JUPYTER"] = evcxr
env["RUST_LIB_BACKTRACE"] = "0"
with open(path, "w") as f:
    json.dump(kernel, f, indent=1)
