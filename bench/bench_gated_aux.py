"""Step time of the gated SAE with the auxiliary term training the decoder (the default) or not (the paper's).

python bench/bench_gated_aux.py   # prints seconds per step per round and the ratio of the minima
"""
import time, torch
from saeexp.sae import GatedSAE
from saeexp.losses.l1 import L1
torch.set_num_threads(2); torch.manual_seed(0)
x = torch.randn(4096, 512)
res = {}
for rnd in range(3):
    for mode in ("frozen_in_penalty", "unfrozen_in_aux"):
        sae = GatedSAE(512, 4096, free_decoder=mode); pen = L1(0.04)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)
        for i in range(8):
            if i == 3: t = time.perf_counter()
            out = sae(x)
            loss = ((out.x_hat_BD - x) ** 2).mean() + pen(x, out, sae) + sum(out.aux_losses.values())
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        res.setdefault(mode, []).append((time.perf_counter() - t) / 5)
for m, v in res.items(): print(m, " ".join(f"{a:.3f}" for a in v), "min", f"{min(v):.3f}")
print("unfrozen/frozen (min over rounds):", f"{min(res['unfrozen_in_aux'])/min(res['frozen_in_penalty']):.3f}")
