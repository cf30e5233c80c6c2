"""Series of a sweep: runs that agree on every result-changing config key but the seed and the sparsity control.

A series is one curve of the Pareto plot; its points are the values of the sparsity control (the penalty
coefficient, k, or `train.target_l0`), each pooled over seeds. The keys left out are stored with the run (tag
`series_exclude`), so the report computes the same series from the run's params as training did.
"""
from __future__ import annotations

import hashlib
import json

from saeexp.util.neutral import neutral

SEED_LEAF = "seed"  # `seed` and every `<node>.seed` (`model.seed: ${seed}`, `data.seed: ${seed}`)


def items(params: dict[str, str], exclude: list[str]) -> dict[str, str]:
    """The params (flattened config, strings) that define the series."""
    return {k: v for k, v in params.items()
            if not neutral(k, tuple(exclude)) and k.rsplit(".", 1)[-1] != SEED_LEAF}


def series_id(its: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(its, sort_keys=True).encode()).hexdigest()[:12]


def labels(series: dict[str, dict]) -> dict[str, str]:
    """Short labels saying what differs: the variant, + each config group choice that differs between series of
    that variant (`relu+l1_decoder_norm`, `relu+ortho=nearest`), + keys that differ between series that agree
    on all choices (`relu d_sae=64`).

    `series` maps id -> {"variant": str, "choices": dict, "items": dict}.
    """
    groups = sorted({g for s in series.values() for g in s["choices"]} - {"model"})
    by_variant: dict[str, list[dict]] = {}
    for s in series.values():
        by_variant.setdefault(s["variant"], []).append(s)
    diff_groups = {v: [g for g in groups if len({s["choices"].get(g) for s in ss}) > 1] for v, ss in by_variant.items()}
    cohorts: dict[tuple, list[str]] = {}
    for sid, s in series.items():
        cohorts.setdefault((s["variant"], *(s["choices"].get(g) for g in groups)), []).append(sid)
    out = {}
    for members in cohorts.values():
        keys = sorted({k for m in members for k in series[m]["items"]})
        diff = [k for k in keys if len({series[m]["items"].get(k) for m in members}) > 1]
        short = {k: k.rsplit(".", 1)[-1] for k in diff}
        if len(set(short.values())) < len(short):
            short = {k: k for k in diff}
        for m in members:
            s = series[m]
            parts = [s["variant"]]
            for g in diff_groups[s["variant"]]:
                c = s["choices"].get(g)
                if g == "loss":
                    parts.append(f"+{c}")
                elif c != "none":
                    parts.append(f"+{g}={c}")
            parts += [f" {short[k]}={s['items'].get(k, '-')}" for k in diff]
            out[m] = "".join(parts)
    return out
