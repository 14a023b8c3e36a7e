#!/usr/bin/env bash
# Wheels the GPU benchmark needs on a GPU host whose image has torch (CUDA), torchvision, pyarrow, typer,
# rich, pillow and numpy but not the rest of ovis-batch or the pinned model stack, downloaded here into an
# ignored folder (default .whl/) for CPython 3.12 on manylinux x86_64. On the GPU host:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site
#
# Usage: bash bench/gpu_wheels.sh [DEST] [PYTHON_VERSION]   (3.11 fetches the same set for this machine)
set -euo pipefail

dest=${1:-.whl}
python_version=${2:-3.12}

# ovis-batch itself (pyproject's dependencies), at the versions the test suite runs on, except: no redis
# client (the benchmark's default broker is the embedded folder one; add redis for --broker-url redis://),
# no greenlet (SQLAlchemy imports it for asyncio only),
# and boto3/botocore 1.34 (pyproject's lowest; the benchmark stores locally and only imports them), whose
# wheels are 5 MB smaller than the suite's 1.44, keeping the set under 40 MiB.
service=(
    celery==5.7.0 kombu==5.7.0 billiard==4.3.2 vine==5.1.0 amqp==5.4.2 click==8.5.1
    click-didyoumean==0.3.1 click-repl==0.4.1 click-plugins==1.1.1.2 prompt_toolkit==3.0.53 wcwidth==0.9.5
    python-dateutil==2.9.0.post0 six==1.17.0 tzlocal==5.4.5 tzdata
    sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3
    boto3==1.34.162 botocore==1.34.162 s3transfer==0.10.4 jmespath==1.1.0
    pydantic==2.14.4 pydantic-core pydantic-settings==2.16.3 python-dotenv==1.2.4 annotated-types==0.8.0
    typing-inspection==0.4.5
    simplejpeg==1.9.0 prometheus-client
)
# The model stack the Ovis-U1 remote code is pinned to (pyproject's `model` extra), shadowing the image's.
model=(
    transformers==4.51.3 tokenizers==0.21.1 huggingface_hub==0.36.2 diffusers==0.31.0 accelerate==1.1.0
    einops==0.8.1 importlib_metadata zipp
)

mkdir -p "$dest"
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$dest" \
    --python-version "$python_version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    "${service[@]}" "${model[@]}"
ls -l "$dest"
du -ch "$dest"/*.whl | tail -1
