"""Where each run's b_dec ended, against the held-out activations' geometric median (in scaled units).

    python bench/diagnostics/bdec_distance.py ~/.cache/saeexp/activations/<key> RUN_DIR ...
"""
import json
import sys

import numpy as np
import torch

import saeexp
from saeexp.train.init import geometric_median

h = torch.from_numpy(np.load(sys.argv[1] + "/heldout.npy")).float()
s = h.shape[1] ** 0.5 / h.norm(dim=1).mean()  # the input scale: E||s x|| = sqrt(d_in)
g = geometric_median(h[:8192] * s)
print(f"held out, scaled: E||x|| {(h * s).norm(dim=1).mean():.1f}, |mean| {(h * s).mean(0).norm():.1f} "
      f"(largest coordinate {(h * s).mean(0).abs().max():.1f}), |geometric median| {g.norm():.1f}")
for run in sys.argv[2:]:
    m = json.load(open(f"{run}/metrics.json"))
    b = saeexp.load_sae(f"{run}/sae").b_dec.detach() * s  # saved in the data's units
    print(f"{run.rstrip('/').split('/')[-2]}: L0 {m['l0']:.1f}, FVU {m['fvu']:.3f}, CE loss recovered "
          f"{m['ce_loss_recovered']:.3f}, dead {m['dead']:.0f}; |b_dec| {b.norm():.1f}, |b_dec - median| {(b - g).norm():.1f}")
