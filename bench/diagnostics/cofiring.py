"""How the latents that sit on a true feature (best decoder cosine > 0.9) fire on set 1's held-out rows.

    python bench/diagnostics/cofiring.py SAE_DIR ...
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quality"))
import quality_sets  # noqa: E402

import saeexp  # noqa: E402

x, codes, truth = quality_sets.heldout(quality_sets.build(1))
codes = torch.as_tensor(codes).float()
T = torch.as_tensor(truth).float()
T = T / T.norm(dim=1, keepdim=True)
for path in sys.argv[1:]:
    sae = saeexp.load_sae(path).eval()
    with torch.no_grad():
        acts = sae(x).acts_BF
        D = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
        best, feature = (D @ T.T).max(1)
        on = (best > 0.9) & (acts > 0).any(0)
        fires, present = acts[:, on] > 0, codes[:, feature[on]] > 0
        n = len(x)
        print(f"{path}: {int(on.sum())} latents on a feature fire {fires.sum().item() / n:.2f} times per token, "
              f"{(fires & present).sum().item() / n:.2f} with their feature present, "
              f"{(fires & ~present).sum().item() / n:.2f} without")
