"""`locality sample`, `locality compare`, `locality calibrate`: sampling, agreement with the UNet, patch sizes.

Wire into the parser with ``add_commands(subparsers)``. Every command turns the errors a user can fix (unknown
or missing data, no trained UNet, a bad option) into one line on stderr and exit status 2. `locality sample`
reads and writes the same cached runs as the Samples page and the warm-up (`sampling.cached_trajectory`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from locality_core.analysis.calibration import calibrate
from locality_core.analysis.intervals import order_sentence
from locality_core.analysis.metrics import agreement, agreement_scores, comparison, nearest_training
from locality_core.analysis.sampling import cached_trajectory, sample_many
from locality_core.cli import validate
from locality_core.cli.common import friendly
from locality_core.data import load_dataset
from locality_core.denoisers.distributed import SHARDABLE, is_leader, sharded_denoisers
from locality_core.denoisers.patches import save_calibrated
from locality_core.denoisers.registry import (
    DenoiserError,
    denoiser_cache_id,
    get_denoiser,
    get_spec,
    list_denoisers,
)
from locality_core.render import paste_grid
from locality_core.schedule import ddim_sigmas, sigma_to_t

DEFAULT_SAMPLE = ("unet", "analytical", "wiener", "optimal", "els", "diffusers-unet")
DEFAULT_COMPARE = ("analytical", "wiener", "optimal", "ls", "els", "diffusers-unet")
COMPARE_N = 32     # items per comparison: fewer leave the order of most denoisers unresolved (docs/results.md)
PARTS = ("trajectory", "same_input")
SCALE = 3          # grid pixels per image pixel
LABEL_WIDTH = 150  # grid label column, pixels


def _names(chosen: list[str] | None, default: tuple[str, ...]) -> tuple[list[str], bool]:
    """The denoisers given (already checked by `_denoiser_list`), else the default ones; and whether given."""
    return (list(default), False) if chosen is None else (chosen, True)


def _denoiser_list(text: str) -> list[str]:
    """``--denoisers``: a comma list of registered names, at least one (an empty one is refused, not read as
    "the default set")."""
    return validate.names(text, [spec.name for spec in list_denoisers()])


def _usable(dataset, names: list[str], explicit: bool) -> list[str]:
    """The names whose denoiser is available for ``dataset``; an explicitly requested one that is not is an error,
    a default one is skipped with a note. Nothing is built yet."""
    usable = []
    for name in names:
        ok, message = get_spec(name).availability(dataset)
        if not ok and not explicit:
            print(f"note: skipping {name}: {message}", file=sys.stderr)
            continue
        if not ok:
            raise DenoiserError(f"{name}: {message}")
        usable.append(name)
    if not usable:
        raise DenoiserError("no denoiser available to run")
    return usable


def _denoisers(dataset, names: list[str], explicit: bool) -> dict:
    """The usable denoisers of `_usable`, built."""
    return {name: get_denoiser(name, dataset) for name in _usable(dataset, names, explicit)}


def _sharded_denoisers(dataset, names: list[str], explicit: bool) -> dict:
    """Under torchrun: optimal, analytical and LS on this rank's shard of the training set, the others whole."""
    local = [n for n in names if n not in SHARDABLE]
    built = {**(_denoisers(dataset, local, explicit) if local else {}),
             **sharded_denoisers(dataset, [n for n in names if n in SHARDABLE])}
    return {n: built[n] for n in names if n in built}


# ---------------------------------------------------------------- the sample grid

def _to_pixels(images: torch.Tensor) -> np.ndarray:
    """(n, C, H, W) in [-1, 1] -> (n, H, W, 3) uint8."""
    a = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.repeat(a, 3, axis=3) if a.shape[3] == 1 else a


def sample_grid(rows: dict[str, torch.Tensor], scale: int = SCALE):
    """A labelled PIL image: one row per entry of ``rows`` (label -> (n, C, H, W)), one column per sample."""
    first = next(iter(rows.values()))
    n, _, h, w = first.shape
    cell_h, cell_w, pad = h * scale, w * scale, 4
    grid = Image.new("RGB", (LABEL_WIDTH + n * (cell_w + pad) + pad, len(rows) * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, label in enumerate(rows):
        draw.text((6, pad + i * (cell_h + pad) + cell_h // 2 - 6), label, fill="black")
    tiles = [[Image.fromarray(px) for px in _to_pixels(images)] for images in rows.values()]
    paste_grid(grid, tiles, (LABEL_WIDTH + pad, pad), (cell_w, cell_h), pad)
    return grid


def _samples(dataset, names: list[str], explicit: bool, args) -> dict[str, torch.Tensor]:
    """Final samples (n, C, H, W) per denoiser: the cached runs the Samples page reads (`cached_trajectory`), or
    under torchrun with --distributed computed on shards, uncached (every rank must join every step)."""
    if args.distributed:
        return sample_many(_sharded_denoisers(dataset, names, explicit), args.n, args.seed, ddim_sigmas(args.steps),
                           shape=tuple(dataset.shape), batch_size=args.batch, progress=is_leader())
    samples = {}
    for name in _usable(dataset, names, explicit):
        bar = tqdm(total=100, desc=f"sampling {name}", unit="%", leave=False, disable=not is_leader())

        def progress(fraction: float, text: str, bar=bar) -> None:
            bar.n = round(100 * fraction)
            bar.set_postfix_str(text.split(": ", 1)[-1])  # refreshes the bar

        run = cached_trajectory(dataset, name, args.n, args.steps, args.seed, batch_size=args.batch,
                                progress=progress)
        bar.close()
        samples[name] = torch.from_numpy(run["x0_hat"][-1])
    return samples


def _cmd_sample(args) -> int:
    dataset = load_dataset(args.dataset)
    names, explicit = _names(args.denoisers, DEFAULT_SAMPLE)
    samples = _samples(dataset, names, explicit, args)
    sigmas = ddim_sigmas(args.steps)
    if not is_leader():
        return 0
    report = {"dataset": dataset.name, "seed": args.seed, "n": args.n, "steps": args.steps, "sigmas": sigmas,
              "denoisers": {}}
    rows = {}
    for name, images in samples.items():
        idx, dist = nearest_training(images, dataset.train)
        entry = {"nearest_index": idx.tolist(), "nearest_distance": dist.tolist()}
        if "unet" in samples and name != "unet":
            entry["vs_unet"] = agreement(images, samples["unet"])
        report["denoisers"][name] = entry
        rows[name] = images
        if name == "optimal":
            rows["optimal: nearest train"] = dataset.train[idx]
    out = Path(args.out)
    sample_grid(rows).save(out)
    print(f"{'denoiser':<12} {'nearest train L2 (mean)':>24} {'r2 vs unet':>11}")
    for name, entry in report["denoisers"].items():
        r2 = entry.get("vs_unet", {}).get("r2")
        print(f"{name:<12} {np.mean(entry['nearest_distance']):>24.3f} {'' if r2 is None else f'{r2:11.3f}'}")
    print(f"grid: {out}")
    if args.json:
        text = json.dumps(report, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
            print(f"metrics: {args.json}")
    return 0


# ---------------------------------------------------------------- agreement with the UNet

COMPARE_COLUMNS = (("r2_trajectory", "r^2 trajectory"), ("pearson_trajectory", "Pearson trajectory"),
                   ("mse_trajectory", "MSE trajectory"), ("r2_same_input", "r^2 same input"),
                   ("mse_same_input", "MSE same input"))


def _cell(iv: dict, digits: int) -> str:
    return f"{iv['mean']:.{digits}f} [{iv['lo']:.{digits}f}, {iv['hi']:.{digits}f}]"


def _digits(key: str) -> int:
    return 4 if key.startswith("mse") else 3


def compare_markdown(report: dict) -> str:
    """The comparison table (means with 95 % intervals, n items; ordered by r^2 on trajectories, with each
    denoiser's paired difference to the best there) and, per score, the sentence of the order its paired
    intervals support, as docs/results.md shows them; ``report``: what `locality compare --json` prints."""
    cols = [(k, label) for k, label in COMPARE_COLUMNS if k in report["rankings"]]
    head = "r2_trajectory" if "r2_trajectory" in report["rankings"] else cols[0][0]
    rank = report["rankings"][head]
    n = report["n"]
    lines = [f"| denoiser | {' | '.join(label for _, label in cols)} | {dict(cols)[head]}: against the best, "
             f"paired |", "| --- |" + " ---: |" * (len(cols) + 1)]
    rows = {r["denoiser"]: r for r in report["rows"]}
    for name in rank["order"]:
        r = rows[name]
        vs = r[f"{head}_vs_best"]
        paired = ("best" if name == rank["best"] else
                  f"{vs['mean']:+.3f} [{vs['lo']:+.3f}, {vs['hi']:+.3f}], better on {vs['wins']} of {n}")
        lines.append(f"| {name} | " + " | ".join(_cell(r[k], _digits(k)) for k, _ in cols) + f" | {paired} |")
    sentences = [order_sentence(report["rankings"][k], f"{label} against the UNet on {report['dataset']}",
                                _digits(k)) for k, label in cols]
    return "\n".join(lines) + "\n\n" + "\n\n".join(sentences)


def _cmd_compare(args) -> int:
    dataset = load_dataset(args.dataset)
    reference = get_denoiser("unet", dataset)
    names, explicit = _names(args.denoisers, DEFAULT_COMPARE)
    denoisers = _denoisers(dataset, [n for n in names if n != "unet"], explicit)
    parts = tuple(p.strip().replace("-", "_") for p in args.parts.split(","))
    bar = tqdm(total=(len(denoisers) + 1) * len(parts), desc="compare", file=sys.stderr)

    def progress(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update(1)

    ids = {name: denoiser_cache_id(name, dataset) for name in denoisers}
    ids["reference"] = denoiser_cache_id("unet", dataset)
    result = agreement_scores(dataset, denoisers, reference, sigmas=ddim_sigmas(args.steps), n=args.n,
                              seed=args.seed, batch_size=args.batch, parts=parts, progress=progress, cache_ids=ids)
    bar.close()
    report = {"dataset": dataset.name, "reference": "unet", "steps": args.steps, "n": args.n,
              "seeds": result["seeds"], "denoisers": {name: ids[name] for name in denoisers},
              **comparison(result), "per_sigma": result["per_sigma"]}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    if args.markdown:
        print(compare_markdown(report))
        return 0
    print(f"agreement with the UNet on {dataset.name}: n = {args.n} items (noise seeds {result['seeds'][0]}-"
          f"{result['seeds'][1]}), {args.steps} DDIM steps; mean [95 % bootstrap interval]")
    cols = [(k, label) for k, label in COMPARE_COLUMNS if k in report["rankings"]]
    print(f"{'denoiser':<12} " + " ".join(f"{label:>26}" for _, label in cols))
    for r in report["rows"]:
        print(f"{r['denoiser']:<12} " + " ".join(f"{_cell(r[k], _digits(k)):>26}" for k, _ in cols))
    for k, _ in cols:
        print(order_sentence(report["rankings"][k], k))
    return 0


# ---------------------------------------------------------------- patch-size calibration

def _cmd_calibrate(args) -> int:
    dataset = load_dataset(args.dataset)
    reference = get_denoiser("unet", dataset)
    kinds = ["ls", "els"] if args.kind == "both" else [args.kind]
    sizes = args.sizes or _default_sizes(dataset.shape[1])
    sigmas = ddim_sigmas(args.steps)
    bar = tqdm(total=len(kinds) * len(sigmas) * len(sizes), desc="calibrate", file=sys.stderr)

    def progress(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update(1)

    schedules = {}
    for kind in kinds:
        options = {"n_train": args.n_train} if kind == "els" else {}
        schedules[kind] = calibrate(dataset, reference, sigmas, sizes, kind=kind, n=args.n, metric=args.metric,
                                    seed=args.seed, progress=progress, **options)
    bar.close()
    path = save_calibrated(dataset, schedules, args.out, unet=denoiser_cache_id("unet", dataset),
                           metric=args.metric, n=args.n, els_n_train=args.n_train)
    first = schedules[kinds[0]]
    if args.json:
        print(json.dumps({"path": str(path), **{k: s.to_dict() for k, s in schedules.items()}}, indent=1))
        return 0
    print(f"patch sizes fitted to the UNet on {dataset.name} ({args.metric}, median over {args.n} images)")
    print(f"{'t':>6} {'sigma':>8} " + " ".join(f"{k.upper():>4}" for k in kinds))
    for i, sigma in enumerate(first.sigmas):
        print(f"{sigma_to_t(sigma):>6.0f} {sigma:>8.4g} " + " ".join(f"{schedules[k].sizes[i]:>4}" for k in kinds))
    print(f"saved: {path}")
    return 0


def _default_sizes(side: int) -> list[int]:
    """Odd sizes 3 .. side, plus 2 * side - 1 (the whole image from every pixel)."""
    return list(range(3, side + 1, 2)) + [2 * side - 1]


# ---------------------------------------------------------------- the parser

def _parts(text: str) -> str:
    parts = [p.strip().replace("-", "_") for p in text.split(",") if p.strip()]
    if not parts or any(p not in PARTS for p in parts):
        raise argparse.ArgumentTypeError(f"--parts takes a comma list of {', '.join(PARTS)}, got {text!r}")
    return ",".join(parts)


def _json_out(text: str) -> str:
    return text if text == "-" else str(validate.out_file(text))


def add_commands(subparsers) -> None:
    """Add `sample`, `compare` and `calibrate` to an argparse subparsers object."""
    p = subparsers.add_parser("sample", help="sample from several denoisers from the same noise; save a grid")
    p.add_argument("dataset")
    p.add_argument("--denoisers", type=validate.arg(_denoiser_list), default=None,
                   help=f"comma list (default: {','.join(DEFAULT_SAMPLE)}, skipping unavailable ones)")
    p.add_argument("--n", "--samples", dest="n", type=validate.arg(validate.count, "--n", validate.MAX_SAMPLES),
                   default=8,
                   help="samples per denoiser (--samples under torchrun, whose own options --n abbreviates)")
    p.add_argument("--steps", type=validate.arg(validate.count, "--steps", validate.MAX_DDIM_STEPS), default=10,
                   help="DDIM steps from t = 900")
    p.add_argument("--seed", type=validate.arg(validate.seed), default=42)
    p.add_argument("--batch", type=validate.arg(validate.count, "--batch", validate.MAX_BATCH), default=8,
                   help="images per denoiser call (not part of the cache key: it changes samples by round-off only)")
    p.add_argument("--out", type=validate.arg(validate.out_file, (".png",)), default="grid.png",
                   help="grid image (PNG)")
    p.add_argument("--json", type=validate.arg(_json_out), default=None,
                   help="write metrics JSON here ('-' for stdout)")
    p.add_argument("--distributed", action="store_true",
                   help="under torchrun: optimal, analytical and LS on one shard of the training set per rank")
    p.set_defaults(func=friendly(_cmd_sample))

    p = subparsers.add_parser("compare", help="agreement of analytical denoisers with the trained UNet")
    p.add_argument("dataset")
    p.add_argument("--denoisers", type=validate.arg(_denoiser_list), default=None,
                   help=f"comma list (default: {','.join(DEFAULT_COMPARE)})")
    p.add_argument("--n", type=validate.arg(validate.count, "--n", validate.MAX_SAMPLES), default=COMPARE_N,
                   help="trajectories (noise seeds SEED .. SEED+n-1) and held-out images; each item is cached on "
                        "its own, so a larger n computes only the new ones")
    p.add_argument("--steps", type=validate.arg(validate.count, "--steps", validate.MAX_DDIM_STEPS), default=10)
    p.add_argument("--seed", type=validate.arg(validate.seed), default=0)
    p.add_argument("--batch", type=validate.arg(validate.count, "--batch", validate.MAX_BATCH), default=8)
    p.add_argument("--parts", type=_parts, default="trajectory,same_input",
                   help="what to compare: trajectory, same_input or both (comma list)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON (per-denoiser intervals, rankings) instead")
    out.add_argument("--markdown", action="store_true", help="print the results table (README, docs/results.md)")
    p.set_defaults(func=friendly(_cmd_compare))

    p = subparsers.add_parser("calibrate", help="fit the LS / ELS patch-size schedule to the trained UNet")
    p.add_argument("dataset")
    p.add_argument("--kind", choices=["ls", "els", "both"], default="both")
    p.add_argument("--sizes", type=validate.arg(validate.odd_sizes, "--sizes", validate.MAX_PATCH), default=None,
                   help="comma list of odd patch sizes (default 3, 5, ..., side, 2*side-1)")
    p.add_argument("--n", type=validate.arg(validate.count, "--n", validate.MAX_SAMPLES), default=4,
                   help="held-out images per noise level")
    p.add_argument("--steps", type=validate.arg(validate.count, "--steps", validate.MAX_DDIM_STEPS), default=10,
                   help="noise levels: the DDIM grid with this many steps")
    p.add_argument("--metric", choices=["mse", "cosine"], default="mse")
    p.add_argument("--n-train", type=validate.arg(validate.count, "--n-train", validate.MAX_IMAGES), default=2000,
                   help="ELS training subset")
    p.add_argument("--seed", type=validate.arg(validate.seed), default=0)
    p.add_argument("--out", type=validate.arg(validate.out_file, (".json",)), default=None,
                   help="JSON path (default: beside the UNet weights)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=friendly(_cmd_calibrate))
