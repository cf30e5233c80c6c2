"""The build layer: a composed config checked once and turned into a typed plan (saeexp.plan). With the entry
layer (saeexp.cli), the only code that reads a config."""
