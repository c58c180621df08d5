#!/usr/bin/env bash
# DeepSpeed and what it needs beyond the GPU machine's image (hjson, pydantic), unpacked into one archive that
# bench/device/h100.sh extracts beside .devsite/site.tgz. DeepSpeed ships only a source distribution; its wheel is
# built here without compiled ops (it compiles CPU Adam on first use, there).
#   usage: bash bench/device/deepspeed_bundle.sh [.devsite/deepspeed.tgz]
set -euo pipefail
dest=${1:-.devsite/deepspeed.tgz}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip wheel -q --no-deps deepspeed==0.19.8 -w "$tmp/whl"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$tmp/whl" \
  hjson==3.1.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
mkdir -p "$tmp/site"
for w in "$tmp"/whl/*.whl; do unzip -o -q "$w" -d "$tmp/site"; done
tar czf "$dest" -C "$tmp/site" .
ls -la "$dest"
