#!/usr/bin/env bash
# Make (once) the virtual environment that holds SAELens for side-by-side benchmarks and format tests.
# SAELens pins another transformer_lens than saeexp's, so it never goes into the project's install:
# it lives in its own venv, cached under ~/.cache/saeexp (or $SAEEXP_CACHE). Prints the venv's python.
# torch is kept at the CPU build by a constraint where there is no nvidia-smi (else pip pulls CUDA torch).
# Concurrent callers wait on a lock; a half-built venv is never taken as ready (built under a temp name).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
version="${SAELENS_VERSION:-6.54.12}"
cache="${SAEEXP_CACHE:-$HOME/.cache/saeexp}"
venv="$cache/saelens-$version"
mkdir -p "$cache"
exec 9>"$cache/saelens-$version.lock"
flock 9
if [ ! -x "$venv/bin/python" ]; then
  tmp="$venv.tmp"
  rm -rf "$tmp"
  python3 -m venv "$tmp" >&2
  constraint=()
  command -v nvidia-smi >/dev/null 2>&1 || constraint=(-c "$here/constraints/cpu.txt")
  "$tmp/bin/python" -m pip install -q "${constraint[@]}" "sae-lens==$version" >&2
  "$tmp/bin/python" -c "import sae_lens" >&2
  # venvs hard-code their path in scripts; python -m works after the rename, which is all we use
  mv "$tmp" "$venv"
fi
echo "$venv/bin/python"
