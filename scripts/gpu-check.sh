#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU, its driver and CUDA 13's
# cuBLAS, cuRAND and NVRTC (a system install, or PyTorch's nvidia-* wheels), but
# no Rust toolchain and no network. `make gpu-pack` builds what it needs into
# gpu-check/ (the CLI built with CUDA, xz-compressed, and a 7,000-image sample
# of CIFAR-10);
# copy that folder over and run
#
#     gpu-check/gpu-check.sh [LOG_DIR]
#
# It prints, and writes to LOG_DIR/gpu-check.log (default: the folder itself):
#  1. the time of an epoch of 45,000 images (the article's fit) on the GPU;
#  2. the test accuracy after 5 epochs on the 5,000-image real sample;
#  3. how closely the CPU's predictions match the GPU's for the same weights;
#  4. when python3 has PyTorch, the same epoch in PyTorch on the same GPU.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log_dir=${1:-$here}
mkdir -p "$log_dir"
log=$log_dir/gpu-check.log

# cuBLAS & co.: from the system if the loader knows them, else from the
# nvidia-* Python packages that PyTorch brings.
has_cublas() {
  ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.13' && return
  local d IFS=:
  for d in ${LD_LIBRARY_PATH:-}; do [ -e "$d/libcublas.so.13" ] && return; done
  return 1
}
if ! has_cublas; then
  libs=$(python3 - <<'EOF' 2>/dev/null || true
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
dirs = {os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so.*"), recursive=True)}
print(":".join(sorted(dirs)))
EOF
)
  [ -n "$libs" ] || { echo "cannot find CUDA 13's cuBLAS (libcublas.so.13): install it, or PyTorch with CUDA 13" >&2; exit 1; }
  export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi

# The CLI travels compressed; unpack it next to the log.
bin=$log_dir/cifar10-cnn
if command -v xz >/dev/null; then
  xz -dc "$here/cifar10-cnn.xz" > "$bin"
else
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$here/cifar10-cnn.xz" "$bin"
fi
chmod +x "$bin"

{
  echo "# gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
  echo "## cifar10-cnn check"
  DEVICE=cuda "$bin" check --train "$here/sample_train.bin" --test "$here/sample_test.bin"
  if [ -f "$here/bench_peers.py" ] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    echo "## PyTorch, the same model and epoch"
    python3 "$here/bench_peers.py" --epoch-images 45000 --device cuda
  fi
} 2>&1 | tee "$log"
