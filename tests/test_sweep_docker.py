"""The Docker images cannot be built here (no Docker engine): check that their install lines are the ones that
work outside Docker (the Makefile's `install`), and that what they copy exists."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _makefile_install(constraint: str) -> list[str]:
    make = ROOT / "Makefile"
    if not make.exists():
        pytest.skip("no Makefile")
    recipe = re.search(r"^install:.*\n((?:\t.*\n)+)", make.read_text(), re.M)
    pip_line = next(line for line in recipe.group(1).splitlines() if "pip install" in line)
    return shlex.split(pip_line.strip().replace("$(PY)", "python").replace("$(CONSTRAINT)", constraint))


def _docker_pip_install(name: str) -> list[str]:
    text = (ROOT / "docker" / name).read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith("RUN ") and "pip install" in line]
    assert len(lines) == 1, f"{name}: expected one pip install line, got {lines}"
    tokens = shlex.split(lines[0][len("RUN "):])
    # where the wheels come from is the machine's business (here: pip.conf find-links), not the install line's
    out, skip = [], False
    for t in tokens:
        if skip:
            skip = False
        elif t in ("--extra-index-url", "--index-url"):
            skip = True
        else:
            out.append(t)
    return out


@pytest.mark.parametrize("name,constraint", [("Dockerfile", ""), ("Dockerfile.cpu", "-c constraints/cpu.txt")])
def test_image_installs_like_the_makefile(name, constraint):
    """The Makefile's line for a developer's checkout (editable, with the dev extra) as a user installs it: the
    package built into a wheel (not editable, conf/ inside it; tests/test_install.py runs that install)."""
    want = [t.replace(".[lm,dev]", ".[lm]") for t in _makefile_install(constraint) if t != "-e"]
    got = _docker_pip_install(name)
    assert "-e" not in got and "--editable" not in got
    assert got == want


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_image_copies_what_exists_and_runs_saeexp(name):
    text = (ROOT / "docker" / name).read_text()
    assert 'ENTRYPOINT ["saeexp"]' in text
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"{name} copies {src}, which is not in the repository"
    if name == "Dockerfile":
        assert "cpu" not in _docker_pip_install(name)[-1] and "constraints/cpu.txt" not in text  # CUDA torch
