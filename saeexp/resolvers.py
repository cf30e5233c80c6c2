"""The arithmetic resolvers the config tree uses, registered on import.

Here rather than in the console script: anyone who composes conf/ with Hydra's compose API and calls
`saeexp.train.run.build` or `train` (a notebook, bench/bench_variants.py) needs them too.
"""
from omegaconf import OmegaConf

# `${fraction_of:${train.tokens},0.2}`: a share of the run in tokens, so schedules follow train.tokens
OmegaConf.register_new_resolver("fraction_of", lambda total, share: int(int(total) * float(share)), replace=True)
# `${times:${data.d_in},16}`: a multiple of another key (a width as an expansion factor, a window in batches)
OmegaConf.register_new_resolver("times", lambda n, factor: int(int(n) * float(factor)), replace=True)
