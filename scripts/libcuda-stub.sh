#!/usr/bin/env bash
# Makes a stub libcuda.so in DIR, for linking the CUDA build on a machine
# without NVIDIA's driver (as the CUDA toolkit's lib/stubs/libcuda.so does).
# Its functions are the driver API that cudarc declares; the program loads the
# real libcuda.so.1 (the soname) on the GPU machine.
#
#     scripts/libcuda-stub.sh DIR
set -euo pipefail
dir=${1:?usage: scripts/libcuda-stub.sh DIR}
manifest=$(cargo metadata --format-version 1 --features cifar10-cnn/cuda --manifest-path "$(dirname "$0")/../Cargo.toml" \
  | python3 -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')
sys_rs=$(dirname "$manifest")/src/driver/sys/mod.rs
mkdir -p "$dir"
grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$sys_rs" | sed 's/^pub unsafe fn //' | sort -u \
  | sed 's/.*/int &(void) { return 999; }/' > "$dir/libcuda-stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dir/libcuda.so" "$dir/libcuda-stub.c"
echo "$dir/libcuda.so: $(wc -l < "$dir/libcuda-stub.c") driver functions"
