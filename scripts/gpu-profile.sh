#!/usr/bin/env bash
# Packed by `make gpu-pack` beside gpu-check.sh; run there as
#
#     gpu-check/gpu-profile.sh [LOG_DIR]
#
# Where the CUDA step's time goes: the step at growing batch sizes (fixed
# per-step costs show as time that does not grow with the batch), the BN
# variant and the improving notebook's final recipe, and the GPU's utilization
# during a 45,000-image epoch.
set -u
here=$(cd "$(dirname "$0")" && pwd)
log_dir=${1:-$here}
mkdir -p "$log_dir"
libs=$(python3 - <<'PY'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
dirs = {os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so.*"), recursive=True)}
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH=$libs DEVICE=cuda
bin=$log_dir/cifar10-cnn; xz -dc "$here/cifar10-cnn.xz" > $bin; chmod +x $bin
for b in 32 128 512 2048; do echo "## bench batch $b"; $bin bench --batch-size $b --steps 20; done
echo "## bench --batch-norm"; $bin bench --batch-norm --steps 20
echo "## bench --recipe final-recipe.json (the improving notebook's final recipe)"; $bin bench --recipe "$here/final-recipe.json" --steps 20
echo "## epoch with nvidia-smi dmon, and the process's CPU time"
nvidia-smi dmon -s u -d 1 > "$log_dir/dmon.txt" 2>&1 & d=$!
time $bin check --epoch-images 45000 --timed-epochs 2
kill $d; cat "$log_dir/dmon.txt"
