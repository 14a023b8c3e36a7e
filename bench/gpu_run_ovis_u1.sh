#!/usr/bin/env bash
# The real-model GPU benchmark in one command on a GPU host without network: install the carried wheels
# (.whl/, from bench/gpu_wheels.sh), build the full-size random-weight model from the carried remote code on
# the GPU into /tmp (bench/build_ovis_u1_model.py; kept there for a later run on the same machine), then run
# bench/gpu_throughput.py --backend ovis-u1 on it. The result file and the logs go to $OUT when it is set
# (a remote run's folder that comes back), else the result file to bench/results and the logs to /tmp. Carried, ignored folders: .whl and .remote
# (.remote/ovis-u1: the six official files; .remote/tokenizer: the Qwen3-sized tokenizer the builder
# trained once; .remote/photos: the sample photos, `python bench/realistic_inputs.py export-photos`).
#
#   bash bench/gpu_run_ovis_u1.sh --git-sha <commit> [more gpu_throughput.py options]
set -euo pipefail

out=${OUT:-bench/results}
logs=${OUT:-/tmp/ovis-u1-bench-logs}
model=${OVIS_BENCH_MODEL_DIR:-/tmp/Ovis-U1-3B-random}
mkdir -p "$out" "$logs"

python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "${OVIS_BENCH_WHEELS:-.whl}"/*.whl
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

# What the image must provide beside the wheels; versions of what the run depends on.
python3 - <<'EOF'
import importlib, sys
need = ["torch", "torchvision", "PIL", "numpy", "pyarrow", "typer", "rich", "yaml", "regex", "requests",
        "tqdm", "safetensors", "filelock", "packaging", "fsspec", "psutil", "jinja2",
        "transformers", "diffusers", "tokenizers", "huggingface_hub", "accelerate", "einops", "celery",
        "sqlalchemy", "alembic", "boto3", "pydantic_settings", "simplejpeg", "prometheus_client"]
missing = []
for name in need:
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '')}")
    except Exception as exc:
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
if missing:
    sys.exit("missing on this host: " + "; ".join(missing))
EOF

if [ ! -f "$model/config.json" ]; then
    python3 bench/build_ovis_u1_model.py --remote-code .remote/ovis-u1 --tokenizer-cache .remote/tokenizer \
        --out "$model" | tee "$logs/build_ovis_u1_model.json"
fi
python3 bench/gpu_throughput.py --backend ovis-u1 --model-path "$model" --photos .remote/photos \
    --out "$out" --log-dir "$logs" --budget-s "${OVIS_BENCH_BUDGET_S:-450}" "$@"
