"""Cross-check: score trained SAEs (saeexp's and SAELens') with SAELens' own `sae_lens.synthetic` evaluation.

Runs with the python of SAELens' venv; bench/quality/bench_quality.py calls it on set 1's run folders:

    $PY bench/quality/saelens_eval.py --spec SET_DIR RUN_DIR...

`eval_sae_on_synthetic_data` is fed the benchmark's held-out rows exactly (x, with its noise) and their true
activations, through a FeatureDictionary holding the truth directions. Writes RUN_DIR/saelens_eval.json.
Its `mcc` is SAELens' definition (Hungarian-matched |cosine| of decoder rows and truth directions), not
saeexp's activation-correlation MCC; `explained_variance` should be close to 1 - FVU.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]

from peer_sae import load_peer  # noqa: E402


def load_saeexp(folder: Path):
    """A saeexp SAE from its run folder without hydra (not in this venv): `_target_` + safetensors."""
    from safetensors.torch import load_file

    cfg = yaml.safe_load((folder / "sae" / "config.yaml").read_text())["model"]
    module, _, cls = cfg.pop("_target_").rpartition(".")
    sae = getattr(importlib.import_module(module), cls)(**cfg)
    sae.load_state_dict(load_file(str(folder / "sae" / "sae.safetensors")), strict=False)
    return sae.eval()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", required=True, help="the set's cache folder (bench/quality/quality_sets.py)")
    ap.add_argument("folders", nargs="+")
    a = ap.parse_args(argv)
    from sae_lens.synthetic.evals import eval_sae_on_synthetic_data
    from sae_lens.synthetic.feature_dictionary import FeatureDictionary

    spec = json.loads((Path(a.spec) / "spec.json").read_text())
    data = np.load(Path(a.spec) / "data.npy", mmap_mode="r")
    x = torch.from_numpy(np.array(data[-spec["heldout"]:]))
    codes = torch.from_numpy(np.load(Path(a.spec) / "heldout_codes.npy"))
    truth = torch.from_numpy(np.load(Path(a.spec) / "truth.npy"))

    class HeldOut(FeatureDictionary):
        """The truth directions; maps each batch of true activations to its held-out rows (noise included)."""

        def __init__(self):
            super().__init__(truth.shape[0], truth.shape[1], initializer=None)
            self.feature_vectors.data.copy_(truth)
            self.cursor = 0

        def forward(self, feature_activations):
            lo, self.cursor = self.cursor, self.cursor + len(feature_activations)
            return x[lo:self.cursor]

        def sample(self, n):  # the activation generator's one method the evaluation calls
            return codes[self.cursor:self.cursor + n]

    for f in map(Path, a.folders):
        sae = load_peer(f) if (f / "peer.json").exists() else load_saeexp(f)
        held = HeldOut()
        res = eval_sae_on_synthetic_data(sae, held, held, num_samples=len(x), batch_size=4096)
        out = res.to_dict()
        (f / "saelens_eval.json").write_text(json.dumps(out, indent=2))
        print(f"  {f}: L0 {out['sae_l0']:.1f}  EV {out['explained_variance']:.3f}  MCC(decoder) {out['mcc']:.3f}")


if __name__ == "__main__":
    main()
