"""Ship a diffusers network trained by scripts/train_diffusers.py as a data set's `diffusers-unet`, with its card.

    python scripts/ship_diffusers.py /work/train-diffusers/model            # fashion-mnist, into assets/models

Imports the folder (every check of `locality import-model`) into
``locality_core/assets/models/DATASET/diffusers-unet/``, copies its ``training.json``, and writes ``card.json``:
the data set and its fingerprint, the training record (steps done of those planned, loss, wall time), and the
held-out MSE per noise level of this network, of the shipped UNet and of the Wiener filter (the first 2,000 test
images, the reference DDIM grid, noise seed 0: `heldout_mse_table`, as `locality eval` computes it).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from locality_core.data import load_dataset
from locality_core.denoisers.diffusers_import import SHIPPED, import_network, load_network
from locality_core.denoisers.evaluate import EVAL_IMAGES, heldout_mse_table
from locality_core.denoisers.models import ASSETS_MODELS, load_unet


def note(rows: list[dict]) -> str:
    """What the MSE table says about high noise, read off it."""
    above = [r["t"] for r in rows if r[SHIPPED] > r["wiener"]]
    if not above:
        return "below the Wiener filter at every noise level of the grid"
    return (f"above the Wiener filter at t = {', '.join(map(str, above))}: an epsilon-predicting network's "
            "estimate x0 = y - sigma eps multiplies its error on eps by sigma (diffusers' samplers clip that estimate "
            "to [-1, 1]; a denoiser D(x, sigma) here does not, as clipping would change its Jacobian)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="the model folder train_diffusers.py wrote (with training.json)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    training = json.loads((args.folder / "training.json").read_text())
    if training["fingerprint"] != data.fingerprint:
        raise SystemExit(f"{args.folder} was trained on other data than {data.name} here (fingerprints differ)")
    target = ASSETS_MODELS / data.name / SHIPPED
    import_network(args.folder, SHIPPED, data, directory=target,
                   source_label=f"scripts/train_diffusers.py (EMA weights at step {training['steps']})")
    shutil.copy(args.folder / "training.json", target / "training.json")
    with torch.no_grad():
        rows = heldout_mse_table(data, {SHIPPED: load_network(target, data), "unet": load_unet(data)}, progress=True)
    card = {"dataset": data.name, "fingerprint": data.fingerprint, "description": data.description,
            "architecture": "diffusers UNet2DModel: 3 levels (32, 64, 64 channels), attention at 14x14 and 7x7, "
                            "1 ResNet layer per block, GroupNorm 8",
            "training": training, "heldout_images": EVAL_IMAGES, "heldout_mse": rows, "note": note(rows)}
    (target / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    for r in rows:
        print(f"t={r['t']:>3} sigma={r['sigma']:8.4f}  {SHIPPED} {r[SHIPPED]:.5f}  unet {r['unet']:.5f}  "
              f"wiener {r['wiener']:.5f}")


if __name__ == "__main__":
    main()
