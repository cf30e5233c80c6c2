"""Step time of the gated SAE with the auxiliary term training the decoder (the default) or not (the paper's).

    python bench/speed/bench_gated_aux.py   # seconds per step in each round, and the ratio of the minima

d_in 512, batch 4096, width 4096, fp32, 2 threads; the step is `saeexp.train.step.manual_step` (the loss terms,
the unit-norm decoder's handling, firing bookkeeping), timed over 5 steps after 3 warm-up steps, 3 rounds.
"""
import functools
import time

import torch

from saeexp.losses import L1, MSE
from saeexp.sae import GatedSAE
from saeexp.train.step import make_optimizer, manual_step

MODES = ("frozen_in_penalty", "unfrozen_in_aux")


def seconds_per_step(mode: str, x_BD: torch.Tensor, warm: int = 3, timed: int = 5) -> float:
    sae = GatedSAE(x_BD.shape[1], 4096, free_decoder=mode)
    opt = make_optimizer(functools.partial(torch.optim.Adam, lr=1e-4, fused=True), sae)
    terms = [MSE(1.0), L1(0.04)]
    for _ in range(warm):
        manual_step(sae, terms, opt, x_BD)
    t = time.perf_counter()
    for _ in range(timed):
        manual_step(sae, terms, opt, x_BD)
    return (time.perf_counter() - t) / timed


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x_BD = torch.randn(4096, 512)
    times = {m: [seconds_per_step(m, x_BD) for _ in range(3)] for m in MODES}
    for m, v in times.items():
        print(m, " ".join(f"{s:.3f}" for s in v), f"min {min(v):.3f}")
    print(f"unfrozen/frozen (min over rounds): {min(times[MODES[1]]) / min(times[MODES[0]]):.3f}")


if __name__ == "__main__":
    main()
