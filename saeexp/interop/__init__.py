"""Moving SAEs between saeexp and other tools; the formats are read and written natively (no peer imports)."""
