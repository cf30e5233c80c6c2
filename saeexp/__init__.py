"""saeexp: sparse autoencoder experiments. Importing this package imports nothing heavy."""

__version__ = "0.1.0"


def load_sae(path, device="cpu"):
    """Load a saved SAE (a `sae/` directory or a run directory) as a plain torch module on raw activations."""
    from saeexp.io import load_sae as _load

    return _load(path, device)


__all__ = ["load_sae", "__version__"]
