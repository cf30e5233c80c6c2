"""A diagnostic Lightning callback: b_dec and the code's statistics along a run, on each step's own batch.

    PYTHONPATH=bench/diagnostics saeexp ... +callbacks.trace._target_=bdec_trace.BdecTrace \
        +callbacks.trace.path=trace.json

Every `every` steps (and the first five) it appends, for the step's scaled batch x: |b_dec|, |mean x|,
|b_dec - mean x|, cos(b_dec, mean x), L0, FVU, |mean residual|, latents firing on > 30% of the batch, latents
silent on it, and the mean decoder-row norm (all and live). docs/training-quality.md quotes its figures
for the b_dec init. Not part of saeexp: a bench tool.
"""
import json

import lightning as L
import torch


class BdecTrace(L.Callback):
    def __init__(self, path: str, every: int = 20):
        self.path, self.every, self.rows = path, every, []

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every and step > 5:
            return
        sae, x = pl_module.sae, outputs["x_BD"].float()
        sae.eval()
        out = sae(x)
        sae.train()
        freq = (out.acts_BF > 0).float().mean(0)
        m, b, res = x.mean(0), sae.b_dec, x - out.x_hat_BD
        norms = sae.W_dec.norm(dim=1)
        self.rows.append(dict(
            step=step, bdec=b.norm().item(), mean=m.norm().item(), bdec_minus_mean=(b - m).norm().item(),
            cos_bdec_mean=torch.cosine_similarity(b, m, dim=0).item(), l0=freq.sum().item(),
            fvu=(res.pow(2).sum() / (x - m).pow(2).sum()).item(), resid_mean=res.mean(0).norm().item(),
            dense=int((freq > 0.3).sum()), dead=int((freq == 0).sum()), dec_norm=norms.mean().item(),
            dec_norm_live=norms[freq > 0].mean().item() if (freq > 0).any() else 0.0))
        with open(self.path, "w") as f:
            json.dump(self.rows, f)
