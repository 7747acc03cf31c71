"""The `locality` command line: every computation of the dashboard, scriptable, with progress bars.

    locality datasets                       what is registered and available here
    locality import NAME FOLDER_OR_ZIP [--size H,W] [--mode L|RGB] [--force]
    locality import-model NAME FOLDER_OR_ZIP --dataset DATASET [--pixel-range -1,1|0,1]   a diffusers UNet2DModel
    locality precompute DATASET [--all]     statistics (--all: every page's default view too)
    locality precompute --all [--plan]      every lecture default view in talk order (--plan: list, with CPU s)
    locality pack export FILE [DATASET...]  the computed default views in one file; `locality pack import FILE`
    locality stats DATASET [--json]         top eigenvalues, trace, components for 90/95/99 %
    locality field DATASET --denoiser NAME --pixel R,C --sigmas S1,S2 --out F.npy|F.png
    locality train DATASET [--steps N] [--resume]
    locality eval DATASET --denoiser NAME [--json]
    locality basis DATASET --denoiser NAME --image K --sigma S --out F.npz|F.png
    locality sample DATASET --denoisers unet,analytical,wiener,optimal,els --n 8 --out grid.png
    locality compare DATASET [--json]       agreement of every denoiser with the UNet
    locality calibrate DATASET              fit the LS/ELS patch-size schedule to the UNet
    locality generalisation DATASET [--json]  subset networks A vs B per N (memorisation to generalisation)
    locality app [--server.port N ...]      the dashboard (flags go to `streamlit run`)
    locality --version
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from locality_core import __version__
from locality_core.analysis.basis import denoiser_basis
from locality_core.analysis.fields import cosine_similarity, denoiser_field, locality_sizes
from locality_core.cli import app_command, validate
from locality_core.cli.common import USER_ERRORS, load, progress_bar, statistics
from locality_core.cli.generalisation_command import add_command as add_generalisation
from locality_core.cli.sampling_commands import add_commands
from locality_core.data import DatasetError, default_dataset_name, list_datasets
from locality_core.data.subsets import subset_tag, training_subset
from locality_core.data.user import PREFIX, import_images
from locality_core.denoisers import distributed
from locality_core.denoisers.evaluate import heldout_mse_table
from locality_core.denoisers.models import user_model_dir
from locality_core.denoisers.registry import get_denoiser, import_network, list_denoisers
from locality_core.denoisers.training import TrainConfig, default_unet_config, train
from locality_core.render import heat, labelled_grid, mark_pixel, to_uint8_image
from locality_core.schedule import REFERENCE_SIGMAS, format_noise_level
from locality_core.views import pack
from locality_core.views.jobs import read_record, run_task
from locality_core.views.plan import plan


def _denoiser_names(text: str) -> list[str]:
    return validate.names(text, [spec.name for spec in list_denoisers()])


def _one_denoiser(text: str) -> str:
    chosen = _denoiser_names(text)
    if len(chosen) != 1:
        raise validate.InvalidInput(f"name exactly one denoiser here, got {text!r}.")
    return chosen[0]


# ---------------------------------------------------------------- commands

def _cmd_datasets(args) -> int:
    rows = []
    for spec in list_datasets():
        ok, message = spec.availability()
        shape = "x".join(str(s) for s in spec.shape) if spec.shape else "varies"
        rows.append((spec.name, "yes" if ok else "no", shape, message))
    widths = [max(len(r[i]) for r in rows + [("name", "available", "shape", "")]) for i in range(3)]
    print(f"{'name':<{widths[0]}}  {'available':<{widths[1]}}  {'shape':<{widths[2]}}  where / how")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")

    print(f"\ndefault: {default_dataset_name()}")
    return 0


def _cmd_import(args) -> int:
    report = import_images(args.path, args.name, size=args.size, mode=args.mode, replace=args.force)
    print(report.summary())
    print(f"use it as {PREFIX}{report.name}, e.g. `locality precompute {PREFIX}{report.name}`")
    return 0


def _cmd_import_model(args) -> int:
    dataset = load(args.dataset)
    record = import_network(args.path, args.name, dataset, pixel_range=args.pixel_range)
    print(f"imported {record['source']} as the denoiser {args.name} for {dataset.name}: a UNet2DModel of "
          f"{record['parameters']:,} parameters, {record['prediction_type']} prediction, "
          f"{record['num_train_timesteps']} training steps; its timestep is {record['timestep']}")
    print(f"use it as --denoiser {args.name}, e.g. `locality field {dataset.name} --denoiser {args.name} "
          "--pixel 14,14`")
    return 0


def _cmd_precompute(args) -> int:
    if args.dataset is None and not (args.all or args.plan):
        raise validate.InvalidInput("name a data set, or use --all for every lecture default view (--plan: list them)")
    if args.dataset is not None and not args.plan:
        dataset = load(args.dataset)
        # statistics first: under --distributed they are the sharded ones, which the warm-up then finds cached
        stats = distributed.dataset_stats(dataset) if args.distributed else statistics(dataset)
        if not distributed.is_leader():
            return 0
        print(f"{dataset!r}: statistics cached (trace {stats.trace:.2f}, "
              f"{stats.components_for(0.95)} components hold 95 % of the variance)")
    if not (args.all or args.plan):
        return 0
    tasks = plan(None if args.dataset is None else [args.dataset])  # one process (views are not sharded)
    if args.plan:
        print_plan(tasks)
        return 0
    bar = tqdm(tasks, desc="default views", unit="view")
    times = []
    for task in bar:
        bar.set_postfix_str(task.title[:60])
        cpu, wall = run_task(task)
        times.append((task.title, cpu, wall))
    computed = [t for t in times if t[2] > 0]
    for title, cpu, wall in computed:
        print(f"{cpu:8.1f} CPU s {wall:8.1f} s  {title}")
    print(f"{sum(t[1] for t in computed):8.1f} CPU s {sum(t[2] for t in computed):8.1f} s  for {len(computed)} views "
          f"({len(times) - len(computed)} were cached already)")
    return 0


def _cmd_pack_export(args) -> int:
    update, close = progress_bar("pack")
    try:
        report = pack.export_pack(args.file, args.datasets or None, progress=update)
    finally:
        close()
    print(f"{args.file}: {report.written} cache entries, {report.bytes / 2**20:.1f} MB")
    if report.missing:
        print(f"{len(report.missing)} default views are not computed here and are not in the pack (run "
              "`locality precompute --all` first), e.g. " + "; ".join(report.missing[:3]), file=sys.stderr)
    return 0


def _cmd_pack_import(args) -> int:
    update, close = progress_bar("pack")
    try:
        report = pack.import_pack(args.file, progress=update)
    finally:
        close()
    print(f"{report.written} entries imported ({report.bytes / 2**20:.1f} MB), {report.present} already here, "
          f"{len(report.skipped)} skipped")
    for key, why in report.skipped[:10]:
        print(f"  skipped {key[:70]}: {why}", file=sys.stderr)
    return 0


def print_plan(tasks) -> None:
    """Each task of the plan in order, whether it is cached, and the CPU seconds its last run took here."""
    record = read_record()
    total, unknown = 0.0, 0
    for i, task in enumerate(tasks, 1):
        cpu = record.get(task.key, {}).get("cpu_s")
        done = task.ready()
        if not done:
            total += cpu or 0.0
            unknown += cpu is None
        last = f"{cpu:8.1f} CPU s" if cpu is not None else "    (not measured)"
        print(f"{i:4d}  {'cached' if done else 'to do ':<6}  {last}  {task.title}")
    print(f"\n{len(tasks)} views, {sum(not t.ready() for t in tasks)} to compute: {total:.0f} CPU s by the last "
          f"measured runs" + (f", {unknown} not measured yet" if unknown else ""))


def _cmd_stats(args) -> int:
    dataset = load(args.dataset)
    summary = {"dataset": dataset.name, "fingerprint": dataset.fingerprint, **statistics(dataset).summary(args.top)}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{dataset.description}\n")
    print(f"d = {summary['d']}, N = {summary['n']}, trace = {summary['trace']:.4f}")
    print("top eigenvalues: " + ", ".join(f"{v:.4g}" for v in summary["top_eigenvalues"]))
    c90, c95, c99 = summary["components_90_95_99"]
    print(f"components holding 90 / 95 / 99 % of the variance: {c90} / {c95} / {c99}")
    return 0


def _cmd_field(args) -> int:
    dataset = load(args.dataset)
    validate.pixel(args.pixel, dataset.shape)
    field = denoiser_field(dataset, args.denoiser, args.pixel, args.sigmas, n=args.n, seed=args.seed)
    maps = field.map("signed" if args.signed else "abs")
    sizes = locality_sizes(field)
    reference = None
    if args.denoiser != "wiener":
        reference = denoiser_field(dataset, "wiener", args.pixel, args.sigmas)
        ref_sizes = locality_sizes(reference)
    print(f"{args.denoiser} field of pixel (row {field.pixel[0]}, col {field.pixel[1]}) on {dataset.name}")
    header = f"{'noise level':<24} {'50/75/95 % square':>18}"
    if reference is not None:
        header += f" {'wiener 50/75/95':>16} {'cosine vs wiener':>17}"
    print(header)
    for i, sigma in enumerate(field.sigmas):
        line = f"{format_noise_level(sigma):<24} {'/'.join(str(k) for k in sizes[i]):>18}"
        if reference is not None:
            cos = cosine_similarity(field.map("abs")[i], reference.map("abs")[i])
            line += f" {'/'.join(str(k) for k in ref_sizes[i]):>16} {cos:>17.3f}"
        print(line)
    if args.out:
        out = Path(args.out)
        if out.suffix == ".npy":
            if args.per_channel:
                maps = field.signed_mean if args.signed else field.abs_mean
            np.save(out, maps)
        elif out.suffix == ".png":
            _field_png(dataset, field, maps, args).save(out)
        else:
            raise DatasetError(f"--out must end in .npy or .png, got {out.name}")
        print(f"saved {out}")
    return 0


def _field_png(dataset, field, maps, args):
    mode = "signed" if args.signed else "abs"
    mean = mark_pixel(to_uint8_image(dataset.train.mean(0).numpy()), field.pixel)
    tiles = [[mean] + [heat(m, mode) for m in maps]]
    labels = ["mean image"] + [format_noise_level(s, ascii=True) for s in field.sigmas]
    return labelled_grid(tiles, [args.denoiser], labels, scale=5,
                         title=f"{dataset.name}: {mode} sensitivity of pixel (row {field.pixel[0]}, "
                               f"col {field.pixel[1]}) (green), each map scaled to its own maximum")


def _cmd_train(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load(args.dataset)
    out = args.out or user_model_dir(dataset.name)
    if args.subset is not None:
        if args.split is None:
            raise DatasetError("--subset needs --split A or --split B")
        dataset = training_subset(dataset, args.subset, args.split)
        out = args.out or user_model_dir(dataset.name) / "subsets" / subset_tag(args.subset, args.split)
    config = TrainConfig(batch=args.batch) if args.batch else None
    unet_config = default_unet_config(dataset, base=args.base) if args.base else None
    path = train(dataset, out, train_config=config, unet_config=unet_config, steps=args.steps, device=args.device,
                 resume=args.resume, evaluate=not args.no_eval, force=args.force)
    print(f"weights: {path}\nmodel card: {path.parent / 'card.json'}")
    return 0


def _cmd_eval(args) -> int:
    dataset = load(args.dataset)
    names = args.denoiser
    denoisers = {name: get_denoiser(name, dataset) for name in names}
    rows = heldout_mse_table(dataset, denoisers, n=args.n, seed=args.seed, include_wiener=not args.json,
                             progress=not args.json)
    if args.json:
        out = [{"t": r["t"], "sigma": r["sigma"], "mse": r[names[0]]} for r in rows] if len(names) == 1 else \
            {name: [{"t": r["t"], "sigma": r["sigma"], "mse": r[name]} for r in rows] for name in names}
        print(json.dumps(out, indent=2))
        return 0
    cols = names + (["wiener"] if "wiener" not in names else [])
    print(f"held-out MSE on the first {args.n} test images of {dataset.name} (noise seed {args.seed})")
    print(f"{'t':>5} {'sigma':>8} " + " ".join(f"{c:>11}" for c in cols) +
          ("" if names == ["wiener"] else "   vs wiener"))
    for r in rows:
        line = f"{r['t']:>5} {r['sigma']:>8.4g} " + " ".join(f"{r[c]:>11.5f}" for c in cols)
        if names != ["wiener"]:
            line += "   " + ", ".join(f"{100 * (r[n] / r['wiener'] - 1):+.1f} %" for n in names if n != "wiener")
        print(line)
    return 0


def _cmd_basis(args) -> int:
    dataset = load(args.dataset)
    validate.index(args.image, len(dataset.test), "--image")
    basis, y = denoiser_basis(dataset, args.denoiser, args.image, args.sigma, seed=args.seed)
    k = args.top
    print(f"{args.denoiser} Jacobian at test image {args.image}, sigma {args.sigma:g} on {dataset.name}")
    print(f"tr J = {basis.trace:.3f}   asymmetry ||J - J^T|| / ||J|| = {basis.asymmetry:.3f}")
    print("top eigenvalues: " + ", ".join(f"{v:.3f}" for v in basis.eigvals[:k]))
    if args.out:
        out = Path(args.out)
        if out.suffix == ".npz":
            np.savez(out, eigvals=basis.eigvals, eigvecs=basis.eigvecs[:, :k], trace=basis.trace,
                     asymmetry=basis.asymmetry, noisy_image=y)
        elif out.suffix == ".png":
            vecs = basis.eigenimages(k).sum(axis=1)
            tiles = [[to_uint8_image(np.clip(y, -1, 1)).convert("RGB")] + [heat(v, "signed") for v in vecs]]
            labelled_grid(tiles, [args.denoiser], ["noisy y"] + [f"{v:.2f}" for v in basis.eigvals[:k]], scale=4,
                          title=f"Jacobian eigenvectors (eigenvalue above each), tr J = {basis.trace:.2f}").save(out)
        else:
            raise DatasetError(f"--out must end in .npz or .png, got {out.name}")
        print(f"saved {out}")
    return 0


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = validate.Parser(prog="locality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"locality-explorer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list data sets and whether they are available here")
    p.set_defaults(func=_cmd_datasets)

    p = sub.add_parser("import", help="import a folder or .zip of images as the data set user:NAME")
    p.add_argument("name", help="letters, digits, '-' and '_'; the data set becomes user:NAME")
    p.add_argument("path", help="a folder of images (searched recursively) or a .zip archive")
    p.add_argument("--size", type=validate.arg(validate.int_pair, "--size"), default=None,
                   help="H,W: crop and resize every image to this")
    p.add_argument("--mode", choices=["L", "RGB"], default="L", help="grayscale (L, default) or colour (RGB)")
    p.add_argument("--force", action="store_true", help="replace an imported data set of the same name")
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("import-model", help="import a diffusers UNet2DModel folder or .zip as the denoiser NAME")
    p.add_argument("name", help="letters, digits, '-' and '_'; the denoiser's name")
    p.add_argument("path", help="config.json, diffusion_pytorch_model.safetensors and scheduler_config.json (beside "
                                "them or in ../scheduler/): a folder or a .zip")
    p.add_argument("--dataset", required=True, help="the data set it was trained on (channels and size checked)")
    p.add_argument("--pixel-range", default="-1,1", choices=["-1,1", "0,1"],
                   help="the pixel range it was trained on (diffusers' recipes: -1,1, the default)")
    p.set_defaults(func=_cmd_import_model)

    p = sub.add_parser("precompute", help="compute and cache a data set's statistics (--all: every default view)")
    p.add_argument("dataset", nargs="?", default=None,
                   help="a data set (with --all and no data set: every lecture default view, in talk order)")
    p.add_argument("--distributed", action="store_true", help="under torchrun: each rank streams its shard")
    p.add_argument("--all", action="store_true",
                   help="also every page's default view (samples, Jacobian bases, fields, experiments)")
    p.add_argument("--plan", action="store_true",
                   help="print the default views in the order they are computed, with the CPU seconds each took "
                        "last time here, and compute nothing")
    p.set_defaults(func=_cmd_precompute)

    p = sub.add_parser("stats", help="eigenvalues, trace and components holding 90/95/99 %% of the variance")
    p.add_argument("dataset")
    p.add_argument("--top", type=validate.arg(validate.count, "--top", validate.MAX_TOP), default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("field", help="sensitivity field of one pixel across noise levels")
    p.add_argument("dataset")
    p.add_argument("--denoiser", type=validate.arg(_one_denoiser), default="wiener")
    p.add_argument("--pixel", type=validate.arg(validate.int_pair, "--pixel"), required=True, help="ROW,COL")
    p.add_argument("--sigmas", type=validate.arg(validate.sigma_list), default=None,
                   help="comma-separated (default: DDIM grid)")
    p.add_argument("--n", type=validate.arg(validate.count, "--n", validate.MAX_SAMPLES), default=32,
                   help="held-out images averaged over (autograd denoisers)")
    p.add_argument("--seed", type=validate.arg(validate.seed), default=0)
    p.add_argument("--signed", action="store_true", help="signed mean instead of mean absolute value")
    p.add_argument("--per-channel", action="store_true", help=".npy: keep (S, C_out, C_in, H, W)")
    p.add_argument("--out", type=validate.arg(validate.out_file, (".npy", ".png")), default=None,
                   help=".npy (maps, shape (S, H, W)) or .png (labelled figure)")
    p.set_defaults(func=_cmd_field)

    p = sub.add_parser("train", help="train a UNet denoiser on a data set (resumable)")
    p.add_argument("dataset")
    p.add_argument("--steps", type=validate.arg(validate.count, "--steps", validate.MAX_STEPS), default=None,
                   help="training steps (default 6000)")
    p.add_argument("--batch", type=validate.arg(validate.count, "--batch", validate.MAX_BATCH), default=None,
                   help="batch size (default 128)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--force", action="store_true", help="replace existing weights (and checkpoint) in <out>")
    p.add_argument("--out", default=None, help="output folder (default: the user model folder)")
    p.add_argument("--threads", type=validate.arg(validate.count, "--threads", validate.MAX_THREADS), default=None,
                   help="CPU threads (default: torch's choice)")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation in the model card")
    p.add_argument("--base", type=validate.arg(validate.count, "--base", validate.MAX_BASE), default=None,
                   help="UNet channels at full resolution (default 32)")
    p.add_argument("--subset", type=validate.arg(validate.count, "--subset", validate.MAX_SUBSET), default=None,
                   help="train on N images only: a block of a seeded permutation (see --split)")
    p.add_argument("--split", choices=["A", "B"], default=None,
                   help="with --subset: the first (A) or second (B) block of N images; A and B never overlap")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="held-out MSE on the reference DDIM grid")
    p.add_argument("dataset")
    p.add_argument("--denoiser", type=validate.arg(_denoiser_names), required=True,
                   help="a registered denoiser (or several, comma-separated)")
    p.add_argument("--n", type=validate.arg(validate.count, "--n", validate.MAX_IMAGES), default=2000,
                   help="test images (default 2000)")
    p.add_argument("--seed", type=validate.arg(validate.seed), default=0, help="noise seed (default 0)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("pack", help="carry a prepared cache: export the default views computed here, import them "
                                    "on another machine")
    verbs = p.add_subparsers(dest="verb", required=True)
    q = verbs.add_parser("export", help="write the cache entries of every computed default view to FILE")
    q.add_argument("file", type=validate.arg(validate.out_file, (".zip",)), help="the pack to write (.zip)")
    q.add_argument("datasets", nargs="*", help="data sets (default: every lecture default view, in talk order)")
    q.set_defaults(func=_cmd_pack_export)
    q = verbs.add_parser("import", help="load a pack into this machine's cache (checked; nothing replaced)")
    q.add_argument("file", help="a pack made by `locality pack export`")
    q.set_defaults(func=_cmd_pack_import)

    p = sub.add_parser("basis", help="Jacobian eigenbasis of a denoiser at one noisy test image")
    p.add_argument("dataset")
    p.add_argument("--denoiser", type=validate.arg(_one_denoiser), default="unet")
    p.add_argument("--image", type=int, default=0, help="test image index")
    p.add_argument("--sigma", type=validate.arg(validate.sigma, "--sigma"), default=1.0)
    p.add_argument("--seed", type=validate.arg(validate.seed), default=0)
    p.add_argument("--top", type=validate.arg(validate.count, "--top", validate.MAX_TOP), default=8)
    p.add_argument("--out", type=validate.arg(validate.out_file, (".npz", ".png")), default=None, help=".npz or .png")
    p.set_defaults(func=_cmd_basis)


    add_commands(sub)

    add_generalisation(sub)
    app_command.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "passes_flags", False):  # `locality app`: what argparse does not know goes to Streamlit
        args.streamlit_flags = unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "sigmas", "absent") is None:
        args.sigmas = list(REFERENCE_SIGMAS)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
