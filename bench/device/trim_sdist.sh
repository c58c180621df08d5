#!/usr/bin/env bash
# Make .devsite/llama-trim.tar.gz: the pinned llama-cpp-python sdist cut to what `make gguf` needs on the GPU
# machine (a device call carries at most 64 MiB; the sdist is 76 MB). Kept: llama.cpp's CMake tree with the CPU
# backend, tools/ (without their test media), scripts/ (the build includes scripts/ui-assets.cmake), the converter and gguf-py, and the two
# vocabularies with their test vectors. Dropped: docs, tests, examples, media, the non-CPU ggml backends.
#   bash bench/device/trim_sdist.sh /path/to/llama_cpp_python-0.3.36.tar.gz .devsite/llama-trim.tar.gz
set -euo pipefail
sdist=${1:?sdist .tar.gz}; out=${2:?output .tar.gz}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
tar xzf "$sdist" -C "$work"
top=$(ls "$work"); src="$work/$top/vendor/llama.cpp"
find "$work/$top" -mindepth 1 -maxdepth 1 ! -name vendor -exec rm -rf {} +   # the Python binding: not needed
rm -rf "$src"/{docs,tests,examples,media,benches,pocs,.devops,.github,.git} \
       "$src"/tools/ui/tests "$src"/tools/mtmd/test-*
find "$src/models" -mindepth 1 -maxdepth 1 ! -name 'ggml-vocab-qwen2.gguf*' ! -name 'ggml-vocab-llama-bpe.gguf*' \
  ! -name templates -exec rm -rf {} +
for backend in "$src"/ggml/src/ggml-*/; do
  case $(basename "$backend") in ggml-cpu) ;; *) rm -rf "$backend" ;; esac
done
tar czf "$out" -C "$work" "$top"
ls -la "$out"
