"""Whether a finished run learned an SAE worth reading: pure functions of its held-out scalars.

`failed:<reason>`: the SAE reconstructs no better than the mean (held-out FVU >= 1, or undefined).
`suspect:<reasons>`: it reconstructs, but its latents look degenerate in a way a good FVU hides (dense or
duplicated latents reconstruct anything). Each reason is a quantity every run already has (metrics.evaluate on
held-out tokens; recovery only where the data has a ground truth) past a threshold:

- `l0`: L0 at least d_in, or at least a quarter of the width. With as many active latents as the input has
  dimensions the code is not sparse: d_in independent rows reconstruct anything.
- `dense`: more than 2% of the latents fire on more than 10% of held-out tokens (metrics.DENSE_ABOVE, the line
  SAELens' and Anthropic's density histograms draw), or such latents carry more than a quarter of the L0. A few
  are normal: on the default synthetic data the truth's most frequent features fire on 9-13% of tokens and the
  good runs have 7 of 1024 (0.7%) carrying 3% of their L0; the demo's SmolLM2 SAE has 2 of 4608.
- `dead`: most latents (over half) never fired on the held-out tokens: the width is not in use. The good runs
  leave 0.5-12% dead (the demo 12%); BatchTopK on the planted data leaves 56-87% at every k.
- `recovered`: a ground truth exists and fewer than half of its features have a decoder row within cosine 0.9.

On the quality benchmark's set 1 (bench/results/set1-2026-12-02/results.json, both libraries, 53 points) these
rules flag the points that recover under half of the planted features (all at or below 0.46; every other point
recovers 0.59 or more) and one more, saeexp's BatchTopK at k 5 (56% dead, recovered 0.83). tests/test_verdict.py
holds the issue-26 table and those points.
"""
from __future__ import annotations

from saeexp.metrics import DENSE_ABOVE

L0_OF_WIDTH = 0.25      # L0 / d_sae at or above this: a large fraction of the width fires on every token
DENSE_OF_WIDTH = 0.02   # dense latents / d_sae above this
DENSE_SHARE = 0.25      # dense latents' share of the L0 above this
DEAD_FRACTION = 0.5     # dead latents / d_sae above this: most latents dead
RECOVERED_BELOW = 0.5   # gt_recovered@0.9 below this: most planted features are not in the dictionary


def dense_l0(density_F) -> float:
    """The part of the L0 that dense latents carry: the sum of their firing frequencies."""
    return float(density_F[density_F > DENSE_ABOVE].sum())


def judge(scalars: dict, d_in: int | None = None, d_sae: int | None = None) -> str | None:
    """`failed:<reason>`, `suspect:<reason>[,<reason>...]`, or None for a run that looks like it learned.

    `scalars`: the run's final held-out metrics (fvu, l0, dead, dense, dense_l0, and gt_recovered@0.9 where the
    data has a truth). Without d_in and d_sae only the reconstruction is judged.
    """
    fvu = scalars.get("fvu")
    if fvu is None or fvu != fvu:
        return "failed:fvu_undefined"
    if fvu >= 1.0:
        return f"failed:fvu={fvu:.3g}>=1"
    if d_in is None or d_sae is None:
        return None
    reasons = []
    l0 = scalars.get("l0")
    if l0 is not None and l0 >= min(d_in, L0_OF_WIDTH * d_sae):
        reasons.append(f"l0={l0:.3g}>=" + (f"d_in={d_in}" if d_in <= L0_OF_WIDTH * d_sae else f"{L0_OF_WIDTH:g}*d_sae"))
    dense, carried = scalars.get("dense"), scalars.get("dense_l0")
    share = carried / l0 if carried is not None and l0 else 0.0
    if (dense is not None and dense > DENSE_OF_WIDTH * d_sae) or share > DENSE_SHARE:
        reasons.append(f"dense={dense}_latents_carry_{share:.0%}_of_l0")
    dead = scalars.get("dead")
    if dead is not None and dead > DEAD_FRACTION * d_sae:
        reasons.append(f"dead={dead / d_sae:.0%}")
    rec = scalars.get("gt_recovered@0.9")
    if rec is not None and rec == rec and rec < RECOVERED_BELOW:
        reasons.append(f"recovered={rec:.3g}<{RECOVERED_BELOW:g}")
    return "suspect:" + ",".join(reasons) if reasons else None


def _way(verdict: str, l0: float | None, true_l0: float | None) -> str | None:
    """'sparser', 'denser' or None: which way a suspect run's sparsity should move next."""
    reasons = verdict.split(":", 1)[1]
    if "l0=" in reasons or "dense=" in reasons:
        return "sparser"  # too many latents fire, or the same few fire everywhere
    if true_l0 is not None and l0 is not None and "recovered=" in reasons:
        if l0 > 1.5 * true_l0:
            return "sparser"
        if l0 < true_l0 / 1.5:
            return "denser"
    if "dead=" in reasons:
        return "denser"
    return None


def suggested_target(d_in: int, true_l0: float | None = None) -> int:
    """A train.target_l0 to suggest: the truth's L0 where known, else d_in / 16 within [8, 64] (a few percent of
    the input's dimensions: the demo's SmolLM2 SAE recovers 0.98 of the CE loss at L0 11-27 of d_in 576)."""
    if true_l0 is not None:
        return max(1, round(true_l0))
    return int(min(64, max(8, d_in // 16)))


def hint(verdict: str, control: tuple[str, str, tuple[str, ...]], d_in: int, l0: float | None = None,
         true_l0: float | None = None) -> str:
    """What to change, in a few words. `control`: the run's (name, value, config keys) (saeexp.plan.Control)."""
    if verdict.startswith("failed:"):
        return "lower optimizer.lr or the sparsity coefficient"
    way = _way(verdict, l0, true_l0)
    name, value, keys = control
    target = suggested_target(d_in, true_l0)
    if name == "target_l0":
        if l0 is not None and abs(l0 / float(value) - 1) > 0.1:
            return (f"it ended at L0 {l0:.3g}, not the target {value}: give the controller more steps "
                    "(train.tokens, or a smaller train.batch_size)")
        if way == "sparser":
            return f"ask for fewer active latents (train.target_l0 below {value}, e.g. {target})"
        if way == "denser":
            return f"ask for more active latents (train.target_l0 above {value})"
        return "train longer (train.tokens) or try another model"
    if name == "k":
        if way == "sparser":
            return f"lower model.k (now {value}), e.g. model.k={target}"
        if "dead=" in verdict and way == "denser":  # BatchTopK starves latents at any k: more k does not help
            return f"most latents are dead at model.k={value}: model=topk, or a longer run (train.tokens)"
        if way == "denser":
            return f"raise model.k (now {value})"
        return f"try another model.k (now {value})"
    key = keys[0] if keys else "the sparsity coefficient"
    if way == "sparser":
        return f"raise {key} (now {value}), or set train.target_l0={target}"
    if way == "denser":
        return f"lower {key} (now {value}), or set train.target_l0={target}"
    return f"set train.target_l0={target}, or move {key} (now {value})"


def warning(verdict: str, control: tuple[str, str, tuple[str, ...]], d_in: int, l0: float | None = None,
            true_l0: float | None = None) -> str:
    """The one stderr line a run with a verdict ends with."""
    what = "did not learn" if verdict.startswith("failed:") else "looks degenerate"
    return (f"saeexp: warning: the run finished but {what} ({verdict}); it is tagged saeexp.learning and kept off "
            f"Pareto frontiers: {hint(verdict, control, d_in, l0, true_l0)}")
