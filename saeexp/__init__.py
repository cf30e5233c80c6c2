"""saeexp: sparse autoencoder experiments. Importing this package imports nothing heavy."""

__version__ = "0.1.0"


def load_sae(path, device="cpu", config_dirs=None):
    """Load a saved SAE (a `sae/` directory, a run directory, or a SAELens folder) as a plain torch module on
    raw activations. Its variant key must name a model config of the package or of `config_dirs`; nothing in
    the folder runs."""
    from saeexp.io import load_sae as _load

    return _load(path, device, config_dirs)


def splice(model, sae, hook, mask=None):
    """Context manager: `model` (a transformer_lens bridge) runs with `sae`'s reconstruction at `hook`."""
    from saeexp.lm.splice import splice as _splice

    return _splice(model, sae, hook, mask)


__all__ = ["load_sae", "splice", "__version__"]
