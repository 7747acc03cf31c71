"""`locality generalisation DATASET [--json]`: the memorisation-to-generalisation table, one row per N, for the
networks trained on disjoint subsets (scripts/train_subsets.sh) and for the analytical denoiser fitted on each."""

from __future__ import annotations

import json

from locality_core.analysis import generalisation
from locality_core.cli import validate
from locality_core.cli.common import load, progress_bar
from locality_core.denoisers.models import ModelError, how_to_train_subsets

COLUMNS = (("n", "N", "{:,}"), ("cosine", "A-B cos", "{:.3f}"), ("mse_ab", "A-B MSE", "{:.4f}"),
           ("dist_own", "d own", "{:.2f}"), ("dist_own_max", "max", "{:.2f}"), ("dist_own_rel", "/ typical", "{:.2f}"),
           ("dist_other", "d other", "{:.2f}"), ("heldout_nn", "d test", "{:.2f}"),
           ("train_mse_t300", "train MSE t300", "{:.4f}"), ("heldout_mse_t300", "test MSE t300", "{:.4f}"))


def _cmd_generalisation(args) -> int:
    dataset = load(args.dataset)
    if not generalisation.family_sizes(dataset):
        raise ModelError(how_to_train_subsets(dataset.name))
    kinds = ("unet",) if args.no_analytical else generalisation.KINDS
    update, close = progress_bar(f"generalisation {dataset.name}")
    try:
        result = generalisation.precompute(dataset, None if args.json else update, kinds=kinds,
                                           n_samples=args.seeds)
    finally:
        close()
    if args.json:
        print(json.dumps({"dataset": dataset.name, "seeds": args.seeds, **result}, indent=2))
        return 0
    if args.markdown:
        print(markdown(result, args.seeds))
        return 0
    for kind, rows in result.items():
        print(f"\n{kind}: A and B built from disjoint subsets of N images, sampled from the same {args.seeds} noise "
              f"seeds (DDIM {generalisation.STEPS} steps); distances L2 on pixels in [-1, 1]; typical "
              f"nearest-neighbour distance between training images {rows[0]['train_nn']:.2f}; "
              "[95 % bootstrap interval over seeds]"
              if rows else f"\n{kind}: no rows")
        print("  ".join(f"{title:>14}" for _, title, _ in COLUMNS))
        for row in rows:
            print("  ".join(f"{fmt.format(row[key]):>14}" for key, _, fmt in COLUMNS))
        for key, _, fmt in COLUMNS:
            if f"{key}_lo" in (rows[0] if rows else {}):
                print(f"{key} [95 %]: " + ", ".join(f"N = {r['n']:,}: {fmt.format(r[key + '_lo'])}-"
                                                     f"{fmt.format(r[key + '_hi'])}" for r in rows))
        if rows:
            print("copies: " + ", ".join(f"N = {r['n']:,}: {r['copies']} of {r['n_samples']}" for r in rows))
    return 0


MARKDOWN = (("cosine", "A-B cosine [95 %]", "{:.3f}"), ("mse_ab", "A-B MSE", "{:.4f}"),
            ("dist_own", "to own subset: mean [95 %] (max)", "{:.2f}"), ("copies", "copies", None),
            ("dist_own_rel", "/ typical neighbour distance", "{:.2f}"), ("dist_other", "to other subset", "{:.2f}"),
            ("heldout_nn", "test images to subset", "{:.2f}"), ("train_mse_t300", "train MSE t=300", "{:.4f}"),
            ("heldout_mse_t300", "held-out MSE t=300", "{:.4f}"))
WITH_INTERVAL = ("cosine", "dist_own")


def _cell(r: dict, key: str, fmt: str | None) -> str:
    if key == "copies":
        return f"{r['copies']} of {r['n_samples']}"
    text = fmt.format(r[key])
    if key in WITH_INTERVAL:
        text += f" [{fmt.format(r[key + '_lo'])}, {fmt.format(r[key + '_hi'])}]"
    if key == "dist_own":
        text += f" ({r['dist_own_max']:.2f})"
    return text


def markdown(result: dict[str, list[dict]], seeds: int) -> str:
    """The README's table: one row per denoiser kind and N, means over ``seeds`` noise seeds (two samples each)
    with 95 % bootstrap intervals over seeds, and the sentences of the A-B cosine's trend read off them."""
    head = "| denoiser | N | " + " | ".join(title for _, title, _ in MARKDOWN) + " |"
    lines = [head, "|" + " --- |" * (2 + len(MARKDOWN))]
    for kind, rows in result.items():
        for r in rows:
            lines.append(f"| {kind} | {r['n']:,} | " + " | ".join(_cell(r, k, fmt) for k, _, fmt in MARKDOWN) + " |")
    lines.append("")
    lines += [f"{kind}: the A-B cosine {generalisation.trend(rows, 'cosine')} ({seeds} seeds)."
              for kind, rows in result.items() if rows]
    return "\n".join(lines)


def add_command(subparsers) -> None:
    p = subparsers.add_parser("generalisation", help="memorisation to generalisation: subset networks A vs B per N")
    p.add_argument("dataset")
    p.add_argument("--json", action="store_true", help="print JSON: {unet: [row per N], analytical: [...]}")
    p.add_argument("--markdown", action="store_true", help="print the README's markdown table")
    p.add_argument("--seeds", type=validate.arg(validate.count, "--seeds", validate.MAX_SAMPLES),
                   default=generalisation.N_SAMPLES,
                   help=f"noise seeds (default {generalisation.N_SAMPLES}; the page shows the first "
                        f"{generalisation.PAGE_SAMPLES}); each sample is cached, so more seeds compute only new ones")
    p.add_argument("--no-analytical", action="store_true",
                   help="networks only (the analytical denoiser at N = 30,000 takes minutes on a CPU)")
    p.set_defaults(func=_cmd_generalisation)


