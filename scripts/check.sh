#!/usr/bin/env bash
# The static checks CI runs before the suite (`make check`, part of `make test`): style and errors (ruff), layers
# that only look down and no config below the build layer (lint-imports, contracts in pyproject.toml), types (mypy).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m ruff check saeexp tests bench
python3 -c "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
python3 -m mypy
