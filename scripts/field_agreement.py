"""Do a network's fields follow the Wiener filter? Cosine per pixel and noise level, networks side by side.

    python scripts/field_agreement.py fashion-mnist --denoisers unet,diffusers-unet

For each denoiser and pixel: the cosine between its mean-|J| field (32 noisy held-out images, noise seed 0:
`denoiser_field`, cached like `locality field`) and the Wiener field of the same pixel at each level of the
reference DDIM grid, and in brackets the 50 % square sizes, network / Wiener (`locality_sizes`). Prints a
Markdown table (docs/results.md), then the range of the cosines per denoiser.
"""

from __future__ import annotations

import argparse

import torch

from locality_core.analysis.fields import cosine_similarity, denoiser_field, locality_sizes, wiener_field
from locality_core.data import load_dataset
from locality_core.schedule import REFERENCE_SIGMAS, REFERENCE_TIMESTEPS
from locality_core.stats.covariance import get_stats

PIXELS = ((14, 14), (7, 7), (20, 10), (4, 20))  # the pixels of docs/results.md's UNet table


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset")
    p.add_argument("--denoisers", default="unet,diffusers-unet")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    stats = get_stats(data)
    sigmas = list(REFERENCE_SIGMAS)
    print("| denoiser | pixel | " + " | ".join(f"t={t}" for t in REFERENCE_TIMESTEPS) + " |")
    print("| --- | --- |" + " --- |" * len(sigmas))
    ranges = {}
    for name in args.denoisers.split(","):
        for pixel in PIXELS:
            wiener = wiener_field(stats, pixel, sigmas)
            field = denoiser_field(data, name, pixel, sigmas)
            cosines = [cosine_similarity(a, b) for a, b in zip(field.map("abs"), wiener.map("abs"))]
            ours, theirs = locality_sizes(field)[:, 0], locality_sizes(wiener)[:, 0]
            cells = [f"{c:.2f} ({a:.0f}/{b:.0f})" for c, a, b in zip(cosines, ours, theirs)]
            print(f"| {name} | {pixel} | " + " | ".join(cells) + " |")
            ranges.setdefault(name, []).extend(cosines)
    for name, values in ranges.items():
        print(f"{name}: cosine {min(values):.2f} to {max(values):.2f}, mean {sum(values) / len(values):.3f}")


if __name__ == "__main__":
    main()
