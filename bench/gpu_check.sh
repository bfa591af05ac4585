#!/usr/bin/env bash
# GPU check: train on ml-1m with the torch-native sampler on CUDA (no DGL, Airflow or Milvus needed:
# only torch, numpy and pandas) and print epoch times and test HR@10 of both serving rules.
#   bench/gpu_check.sh [ML1M_FOLDER] [extra bench/train_ml1m.py flags, e.g. --device cpu --epochs 1]
# ML1M_FOLDER defaults to .data/ml-1m next to the tree, then ../shared/data/ml-1m.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-}"
[ $# -gt 0 ] && shift
if [ -z "$data" ]; then
  for d in .data/ml-1m ../shared/data/ml-1m; do [ -f "$d/ratings.dat" ] && data="$d" && break; done
fi
[ -n "$data" ] && [ -f "$data/ratings.dat" ] || { echo "no ml-1m folder with ratings.dat (pass one)" >&2; exit 2; }
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
device=cuda
"$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" || device=cpu
[ "$device" = cpu ] && echo "no CUDA GPU visible to torch: running on the CPU" >&2
"$PY" - <<'PYEOF'
import importlib.util, sys
missing = [m for m in ("torch", "numpy", "pandas", "scipy", "tqdm") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {' '.join(missing)} (pip install {' '.join(missing)})")
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
PYEOF
exec "$PY" bench/train_ml1m.py --raw "$data" --device "$device" --sampler torch --batch-size 1024 --threads "$(nproc)" "$@"
