"""The entry layer: one module per console script, one Hydra entry helper (saeexp.cli.common), the Hydra
callbacks that run before any job (guard, sweep setup). Nothing else in the package imports from here."""
