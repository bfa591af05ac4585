#!/usr/bin/env bash
# GPU check: the pipeline's own steps up to train and evaluate (bench/train_ml1m.py) on CUDA, with the
# torch-native sampler (a GPU box may have a torch that DGL cannot load), printing epoch times and
# every method's validation and test figures.
#   bench/gpu_check.sh [RELEASE] [extra bench/train_ml1m.py flags, e.g. --device cpu --epochs 1]
# RELEASE (a MovieLens folder or .zip) defaults to .data/ml-1m in the tree, then ../shared/data/ml-1m.
# Without a CUDA GPU it runs on the CPU and says so (that is how the tests run it).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-}"
[ $# -gt 0 ] && shift
if [ -z "$data" ]; then
  for d in .data/ml-1m ../shared/data/ml-1m; do [ -e "$d" ] && data="$d" && break; done
fi
[ -n "$data" ] && [ -e "$data" ] || { echo "no MovieLens release found (pass a folder or .zip)" >&2; exit 2; }
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
"$PY" - <<'PYEOF'
import importlib.util, sys
need = ("torch", "numpy", "pandas", "pyarrow", "scipy", "great_expectations", "filelock", "sqlalchemy", "tqdm")
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {' '.join(missing)} (install requirements.txt; DGL is optional)")
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "GPU" if torch.cuda.is_available() else "no GPU")
PYEOF
device=cuda
"$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" || device=cpu
[ "$device" = cpu ] && echo "no CUDA GPU visible to torch: running on the CPU" >&2
exec "$PY" bench/train_ml1m.py --data "$data" --device "$device" --sampler torch --threads "$(nproc)" "$@"
