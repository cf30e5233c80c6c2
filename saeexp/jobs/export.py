"""`saeexp-export RUN_OR_SAE_DIR OUT --format saelens`: a saved SAE in a format other tools load."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from saeexp.errors import ConfigError
from saeexp.interop import saelens, saelens_write
from saeexp.io import load_meta, load_sae

FORMATS = ("saelens",)  # dictionary_learning's format is out of scope for now (README)


def export_saved(path: str | Path, out: str | Path, fmt: str = "saelens") -> Path:
    """Export the SAE of a run directory, `sae/` directory or SAELens folder to `out` in format `fmt`."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format={fmt!r}: expected one of {FORMATS}")
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{str(path)!r}: no such run or SAE directory")
    if Path(out).resolve().is_relative_to(path.resolve()):
        raise ConfigError(f"{str(out)!r} is inside the folder read, {str(path)!r}, which is never written to; "
                          "expected a new folder elsewhere")
    sae = load_sae(path)
    density = None
    if saelens.is_folder(path):  # re-export: keep what the folder says about itself
        meta = {k: v for k, v in (load_meta(path)["saelens"].get("metadata") or {}).items()
                if not k.startswith("sae_lens")}
    else:
        sae_dir = path / "sae" if (path / "sae").is_dir() else path
        info = load_meta(sae_dir)
        meta = {**saelens_write.lm_metadata(info.get("data")),
                "saeexp": {"variant": type(sae).__name__, "input_scale_folded": info.get("input_scale"),
                           # the run's name only: a shared SAE does not carry the trainer's directories
                           "run": Path(str(info.get("run_dir") or "")).name or None}}
        density_file = sae_dir.parent / "final_density.safetensors"
        if density_file.is_file():
            density = load_file(str(density_file))["density"]
    return saelens_write.export(sae, out, meta, density)

