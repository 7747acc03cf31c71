"""A fixed set of outputs, to show that a change of structure changed no number (`torch.equal`, not a tolerance).

    python scripts/check_numbers.py save before.npz     # on the old commit
    python scripts/check_numbers.py save after.npz      # on the new one
    python scripts/check_numbers.py compare before.npz after.npz

What it computes, on Fashion-MNIST with an empty cache of its own (so every value is computed, none read back):
every registered denoiser at three noise levels (t = 900, 500, 100) on four noisy test images; the UNet's and the
Wiener filter's field at the centre pixel; the UNet's Jacobian basis at the first test image; a DDIM trajectory
of the UNet and of the analytical denoiser; the memorisation row at N = 10 for the networks and the analytical
denoiser. One torch thread, so that the order of floating-point sums is fixed.
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np


def compute() -> dict[str, np.ndarray]:
    import torch

    torch.set_num_threads(1)
    try:  # the package's front door (after the layers became folders)
        from locality_core import (
            cached_trajectory,
            denoiser_basis,
            denoiser_field,
            get_denoiser,
            list_denoisers,
            load_dataset,
            noisy_heldout,
        )
        from locality_core.analysis import generalisation
    except ImportError:  # the flat layout before it
        from locality_core import generalisation
        from locality_core.analysis.basis import denoiser_basis
        from locality_core.analysis.fields import denoiser_field
        from locality_core.analysis.sampling import cached_trajectory
        from locality_core.data import load_dataset
        from locality_core.denoisers.evaluate import noisy_heldout
        from locality_core.denoisers.registry import get_denoiser, list_denoisers

    data = load_dataset("fashion-mnist")
    out: dict[str, np.ndarray] = {}
    sigmas = [60.82230315302541, 3.4429671125258228, 0.3422546558611349]
    inputs = noisy_heldout(data.test[:4], sigmas, 0)
    with torch.no_grad():
        for spec in list_denoisers():
            den = get_denoiser(spec.name, data)
            for sigma, x in zip(sigmas, inputs, strict=True):
                out[f"denoise/{spec.name}/{sigma:.4g}"] = den(x, sigma).numpy()
    for name in ("unet", "wiener"):
        f = denoiser_field(data, name, (14, 14), [3.4429671125258228, 0.3422546558611349], n=8, seed=0)
        out[f"field/{name}/abs"], out[f"field/{name}/signed"] = f.abs_mean, f.signed_mean
    basis, y = denoiser_basis(data, "unet", 0, 3.4429671125258228, seed=0)
    out["basis/eigvals"], out["basis/eigvecs"], out["basis/y"] = basis.eigvals, basis.eigvecs, y
    for name in ("unet", "analytical"):
        run = cached_trajectory(data, name, 2, 10, 0)
        out[f"trajectory/{name}/x"], out[f"trajectory/{name}/x0_hat"] = run["x"], run["x0_hat"]
    for kind in ("unet", "analytical"):
        row = generalisation.table(data, kind, [10])[0]
        for key, value in sorted(row.items()):
            if isinstance(value, (int, float)):
                out[f"generalisation/{kind}/{key}"] = np.array(value)
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["save"] and len(argv) == 2:
        os.environ["LOCALITY_CACHE_DIR"] = tempfile.mkdtemp(prefix="check-numbers-")
        np.savez(argv[1], **compute())
        return 0
    if argv[:1] == ["compare"] and len(argv) == 3:
        a, b = np.load(argv[1]), np.load(argv[2])
        keys = sorted(set(a.files) | set(b.files))
        bad = [k for k in keys if k not in a.files or k not in b.files or a[k].dtype != b[k].dtype
               or not np.array_equal(a[k], b[k])]
        for k in keys:
            print(f"{'DIFFERS' if k in bad else 'equal  '}  {k}")
        print(f"{len(keys) - len(bad)} of {len(keys)} outputs identical")
        return 1 if bad else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
