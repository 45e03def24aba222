#!/usr/bin/env bash
# The wheels bench/gpu/lease_check.py needs on a GPU image that has only Python 3.12, torch and
# transformers: cp312 / pure-Python wheels (torch and transformers stay the image's own).
set -euo pipefail
cd "$(dirname "$0")/../.."
platform=(--only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64
          --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d wheels)
# their own dependencies include torch: take them alone
python -m pip download -q --no-deps "${platform[@]}" megatron-core==0.16.1 mbridge==0.15.1 einops psutil
# small ones: with their dependencies, so pydantic-core matches pydantic
python -m pip download -q "${platform[@]}" pydantic omegaconf
ls wheels
