"""Next-token loss with the model in the loop: clean, with an SAE spliced in, and with the hook zeroed.

CE loss recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean): 1 when the splice costs nothing,
0 when it is as bad as deleting the hook's activations. The KL divergence is D_KL(P_clean || P_spliced)
of the next-token distributions, per token (the convention of the SAE literature: the extra loss
measured under the clean model's predictions). Standard errors are over tokens, which treats tokens of
one window as independent: read them as a lower bound.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from saeexp.lm.splice import splice


def _per_token_ce(logits_BTV: torch.Tensor, ids_BT: torch.Tensor) -> torch.Tensor:
    """CE of predicting token t+1 at position t: [B, T-1]."""
    lp = logits_BTV[:, :-1].float()
    return F.cross_entropy(lp.reshape(-1, lp.shape[-1]), ids_BT[:, 1:].reshape(-1), reduction="none").view(
        ids_BT.shape[0], -1)


def _zero(x_ND: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x_ND)


@torch.inference_mode()
def _losses(model, hook, windows_WT, mask_T, fn, batch_windows, with_clean):
    """Per-token CE (and KL from clean) over the counted positions, with `fn` spliced (None: clean)."""
    ce, clean, kl = [], [], []
    what = "clean" if fn is None else "zero-ablated" if fn is _zero else "spliced" + (" + clean" if with_clean else "")
    # minutes on a CPU: show progress (one line, refreshed at most every 5 s)
    for i in tqdm(range(0, len(windows_WT), batch_windows), desc=f"CE eval ({what})", unit="batch",
                  mininterval=5, leave=False):
        ids = torch.from_numpy(windows_WT[i:i + batch_windows]).long()
        if with_clean:
            logits_c = model(ids, return_type="logits")
            clean.append(_per_token_ce(logits_c, ids))
        if fn is None:
            continue
        with splice(model, fn, hook, mask_T):
            logits_s = model(ids, return_type="logits")
        ce.append(_per_token_ce(logits_s, ids))
        if with_clean:
            lc = F.log_softmax(logits_c[:, :-1].float(), -1)
            ls = F.log_softmax(logits_s[:, :-1].float(), -1)
            kl.append((lc.exp() * (lc - ls)).sum(-1))
            del lc, ls
    counted = mask_T[:-1].numpy()  # positions whose prediction the splice can change
    cat = lambda xs: torch.cat(xs).numpy()[:, counted].reshape(-1).astype(np.float64) if xs else None  # noqa: E731
    return cat(ce), cat(clean), cat(kl)


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def evaluate(model, hook: str, windows_WT: np.ndarray, mask_T: torch.Tensor, sae_fn, model_identity: str,
             cache_dir: Path | None = None, batch_windows: int = 8, kl: bool = True) -> dict:
    """Metrics of `sae_fn` (raw activations [N, d] -> reconstruction) spliced at `hook` on fixed windows.

    The clean and zero-ablated per-token losses depend only on (model, hook, windows), so they are
    computed once and kept under `cache_dir/ce/`; with `kl=False` a later evaluation runs one forward.
    """
    key = {"model": model_identity, "hook": hook, "mask": mask_T.tolist(),
           "windows": hashlib.sha256(np.ascontiguousarray(windows_WT).tobytes()).hexdigest()}
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        path = Path(cache_dir) / "ce" / f"{digest}.npz"
    base = None
    if path is not None and path.exists():
        try:
            with np.load(path) as z:
                base = {"clean": z["clean"], "zero": z["zero"]}
        except (OSError, ValueError, KeyError):
            base = None  # damaged: recompute and overwrite
    # the clean forward runs with the spliced one when KL needs its logits or the clean loss is not cached
    spliced, clean_now, kl_tok = _losses(model, hook, windows_WT, mask_T, sae_fn, batch_windows,
                                         with_clean=kl or base is None)
    if base is None:
        zero, _, _ = _losses(model, hook, windows_WT, mask_T, _zero, batch_windows, with_clean=False)
        base = {"clean": clean_now, "zero": zero}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
            np.savez(tmp, **base)
            os.replace(tmp, path)
    c, z, s = base["clean"], base["zero"], spliced
    out = {}
    for name, x in (("ce_clean", c), ("ce_spliced", s), ("ce_zero", z), ("ce_increase", s - c)):
        out[name], out[f"{name}_stderr"] = _mean_se(x)
    if kl and kl_tok is not None:
        out["kl_div"], out["kl_div_stderr"] = _mean_se(kl_tok)
    # ratio of means; its standard error by the delta method on the per-token pairs (a, b)
    a, b = z - s, z - c
    r = a.mean() / b.mean()
    out["ce_loss_recovered"] = float(r)
    out["ce_loss_recovered_stderr"] = float((a - r * b).std(ddof=1) / math.sqrt(len(a)) / abs(b.mean()))
    out["ce_eval_tokens"] = int(len(c))
    return out
