"""Run by SAELens' own venv python (tests/test_saelens.py), never imported by saeexp: SAELens loads the folders saeexp
exported and scores the inputs; it also saves SAEs of its own for saeexp to load.

usage: python saelens_peer.py WORKDIR   (WORKDIR/x.safetensors holds the inputs; WORKDIR/export/* the exports)
"""
import sys
from pathlib import Path

import torch
from sae_lens import SAE
from sae_lens.saes import (
    AbsTopKSAE,
    AbsTopKSAEConfig,
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)
from safetensors.torch import load_file, save_file

work = Path(sys.argv[1])
x = load_file(str(work / "x.safetensors"))["x"]


def outputs(sae):
    with torch.no_grad():
        acts = sae.encode(x)
        return {"acts": acts.contiguous(), "x_hat": sae.decode(acts).contiguous()}


# 1. every folder saeexp exported: SAELens' encode/decode, and SAELens' own re-save (the round trip)
for folder in sorted((work / "export").iterdir()):
    sae = SAE.load_from_disk(str(folder))
    save_file(outputs(sae), str(work / "peer_out" / f"{folder.name}.safetensors"))
    sae.save_model(str(work / "resaved" / folder.name))
    print(folder.name, type(sae).__name__, sae.cfg.architecture())

# 2. SAEs SAELens makes and saves itself, with every parameter random (biases and thresholds too)
torch.manual_seed(0)
d_in, d_sae = int(sys.argv[2]), int(sys.argv[3])
native = {
    "standard": StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae)),
    "standard_no_b_dec_in": StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False)),
    "gated": GatedSAE(GatedSAEConfig(d_in=d_in, d_sae=d_sae)),
    "gated_no_b_dec_in": GatedSAE(GatedSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False)),
    "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae)),
    "topk": TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=5)),
    "topk_rescaled": TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=5, rescale_acts_by_decoder_norm=True)),
    "abstopk": AbsTopKSAE(AbsTopKSAEConfig(d_in=d_in, d_sae=d_sae, k=5)),  # an architecture saeexp refuses
}
for name, sae in native.items():
    with torch.no_grad():
        for pname, p in sae.named_parameters():
            p.add_(0.2 * torch.randn_like(p))
            if pname == "threshold":
                p.abs_()
    sae.save_model(str(work / "native" / name))
    save_file(outputs(sae), str(work / "native_out" / f"{name}.safetensors"))
print("native", sorted(native))
