"""The warm-up as a talk needs it: every page's default view, breadth first, the slow views after the landing views
of both lecture data sets, the large-N analytical denoisers last.

Tiers, in order (a task already computed costs nothing: the worker checks first):
    1. the landing view of every page, for Fashion-MNIST, then for natural-patches: statistics, the Sensitivity
       masks and UNet row, the fast samplers, the Jacobian basis, the W experiment, the memorisation networks
    2. the Samples page's analytical row (the paper's key comparison), then
    3. the other experiments (shuffled pixels, one class, GRF alpha) and the memorisation analytical side at the N
       the page opens on: tiers 2 and 3 for Fashion-MNIST, then for natural-patches, so that the first data set of
       a talk is complete before the second one's analytical samples (12 CPU minutes) start
    4. the tr J curve, the UNet fields on the coarse grid of pixels
    5. the same for every other registered data set available here
    6. the memorisation analytical sides at the other N (minutes each at N = 30,000)

    plan(["fashion-mnist"])        # the tasks of one data set, in this order
    locality precompute --all --plan   # prints each with the CPU seconds its last run took
"""

from __future__ import annotations

from locality_core import settings
from locality_core.analysis import generalisation
from locality_core.analysis.transforms import has_class
from locality_core.data import DatasetError, list_datasets
from locality_core.data import get_spec as dataset_spec
from locality_core.denoisers.registry import get_spec
from locality_core.views import defaults
from locality_core.views.catalogue import Task
from locality_core.views.defaults import default_pixel, field_precision, jacobian_denoiser
from locality_core.views.refs import DataRef

LECTURE_DATASETS = ("fashion-mnist", "natural-patches")
# every function reads `defaults.DEFAULTS` when it runs (``D = defaults.DEFAULTS``), not at import: the pages do
# the same, so a test or a deployment that replaces the defaults changes both


def _available(name: str, data) -> bool:
    try:
        return get_spec(name).availability(data)[0]
    except Exception:  # an unregistered or broken denoiser is simply not in the plan
        return False


def _masks(ref: DataRef) -> Task:
    D = defaults.DEFAULTS
    return Task.of("masks", ref, sigmas=D.sigmas, theta=None, mode="global")


def unet_field(ref: DataRef, pixel: tuple[int, int]) -> Task:
    """The Sensitivity page's UNet row at ``pixel``, as the page asks for it."""
    D = defaults.DEFAULTS
    return Task.of("field", ref, name="unet", pixel=pixel, sigmas=D.sigmas, n=D.field_n,
                   seed=D.seed, precision=field_precision())


def samples(ref: DataRef, name: str) -> Task:
    D = defaults.DEFAULTS
    return Task.of("samples", ref, name=name, n=D.sample_n, steps=D.sample_steps, seed=D.seed,
                   options=())


def leading_basis(ref: DataRef, name: str, sigma: float) -> Task:
    """The Jacobian page's default view: the network's leading eigenpairs at the default image and level."""
    D = defaults.DEFAULTS
    return Task.of("leading_basis", ref, name=name, image=D.jacobian_image, sigma=sigma, seed=D.seed,
                   precision=field_precision(), k=D.jacobian_pairs)


def basis(ref: DataRef, name: str, sigma: float) -> Task:
    D = defaults.DEFAULTS
    return Task.of("basis", ref, name=name, image=D.jacobian_image, sigma=sigma, seed=D.seed,
                   precision=field_precision())


def experiment_refs(ref: DataRef, data) -> dict[str, list[DataRef]]:
    """The data sets of each experiment of "Locality follows the data" at its defaults (the W first)."""
    D = defaults.DEFAULTS
    refs = {"inject": [ref.with_transform("inject", strength=D.inject_strength, seed=D.seed)],
            "permute": [ref.with_transform("permute", seed=D.permute_seed)]}
    if data.class_names and has_class(data, D.experiment_class):
        refs["class"] = [ref.with_transform("class", label=D.experiment_class)]
    return refs


def alpha_refs() -> list[DataRef]:
    """The "GRF alpha" experiment's two data sets (the same for every data set chosen in the sidebar)."""
    D = defaults.DEFAULTS
    return [DataRef.of("grf", {"alpha": alpha, "n_train": D.alpha_n_train})
            for alpha in (D.alpha_a, D.alpha_b)]


def landing(ref: DataRef, data) -> list[Task]:
    """Tier 1: what every page shows first."""
    D = defaults.DEFAULTS
    tasks = [Task.of("stats", ref), _masks(ref)]
    if _available("unet", data):
        tasks.append(unet_field(ref, default_pixel(data.shape)))
    tasks += [samples(ref, n) for n in D.sample_denoisers if n in D.fast_samplers and _available(n, data)]
    name = jacobian_denoiser(data)
    if name is not None:
        tasks += [leading_basis(ref, name, D.jacobian_sigma()),
                  Task.of("trace_estimate", ref, name=name, image=D.jacobian_image, sigmas=D.sigmas, seed=D.seed)]
    tasks.append(_masks(experiment_refs(ref, data)["inject"][0]))
    sizes = generalisation.family_sizes(data)
    if sizes:
        tasks.append(Task.of("memorisation", ref, kind="unet", sizes=tuple(sizes)))
    return tasks


def slow_samples(ref: DataRef, data) -> list[Task]:
    """Tier 2: the Samples page's slow rows (the analytical denoiser)."""
    D = defaults.DEFAULTS
    return [samples(ref, n) for n in D.sample_denoisers if n not in D.fast_samplers
            and _available(n, data)]


def other_experiments(ref: DataRef, data, with_alpha: bool) -> list[Task]:
    """Tier 3: the other experiments and the memorisation analytical side at the page's first N."""
    refs = experiment_refs(ref, data)
    tasks = [_masks(r) for kind, rs in refs.items() if kind != "inject" for r in rs]
    if with_alpha:
        first, second = alpha_refs()
        tasks += [Task.of("stats", first), _masks(second)]
    sizes = generalisation.family_sizes(data)
    if sizes:
        tasks.append(Task.of("memorisation", ref, kind="analytical", sizes=(sizes[0],)))
    return tasks


def long_views(ref: DataRef, data) -> list[Task]:
    """Tier 4: the tr J curve and the UNet fields on the coarse grid."""
    D = defaults.DEFAULTS
    tasks = []
    name = jacobian_denoiser(data)
    if name is not None:
        tasks += [basis(ref, name, s) for s in D.sigmas]
    if _available("unet", data):
        tasks += [unet_field(ref, p) for p in D.grid_pixels(data.shape)]
    return tasks


def large_memorisation(ref: DataRef, data) -> list[Task]:
    """Tier 6: the memorisation analytical side at every other N."""
    sizes = generalisation.family_sizes(data)
    return [Task.of("memorisation", ref, kind="analytical", sizes=(n,)) for n in sizes[1:]]


def _loaded(refs: list[DataRef]) -> list[tuple[DataRef, object]]:
    out = []
    for ref in refs:
        try:
            out.append((ref, ref.load()))
        except (DatasetError, OSError):  # not available here: not in the plan
            continue
    return out


def default_views(loaded: list[tuple[DataRef, object]]) -> list[tuple[DataRef, Task]]:
    """Tiers 1 to 3 of the loaded lecture data sets ``[(ref, data)]``, as (data set, task) in plan order: every
    page's default view (what a talk opens), the landing views of all before the slow views of any."""
    out = [(ref, task) for ref, data in loaded for task in landing(ref, data)]
    for i, (ref, data) in enumerate(loaded):
        out += [(ref, task) for task in slow_samples(ref, data) + other_experiments(ref, data, with_alpha=i == 0)]
    return out


def plan(datasets: list[str | DataRef] | None = None) -> list[Task]:
    """Every default-view task of ``datasets`` (names or DataRefs; default: the lecture data sets, then every other
    registered one available here without a download), in the order above, without repeats. Given data sets are
    all "first": their landing views come before anyone's slow views."""
    if datasets is None:
        others = [s.name for s in list_datasets() if s.name not in LECTURE_DATASETS and not s.name.startswith("user:")
                  and available_here(s.name)]
        first = _loaded([DataRef.of(n) for n in LECTURE_DATASETS if available_here(n)])
        rest = _loaded([DataRef.of(n) for n in others])
    else:
        first, rest = _loaded([d if isinstance(d, DataRef) else DataRef.of(d) for d in datasets]), []
    tasks = [task for _, task in default_views(first)]
    for ref, data in first:
        tasks += long_views(ref, data)
    for ref, data in rest:
        tasks += landing(ref, data) + slow_samples(ref, data) + other_experiments(ref, data, False) + \
            long_views(ref, data)
    for ref, data in first + rest:
        tasks += large_memorisation(ref, data)
    return list(dict.fromkeys(tasks))


def warmup_datasets() -> list[DataRef] | None:
    """What $LOCALITY_WARMUP asks to warm up: None for the whole plan ("1"), [] for nothing ("0"), else the listed
    data sets ("fashion-mnist;grf:n_train=2000")."""
    text = settings.WARMUP.text()
    if text in ("", "1"):
        return None
    if not settings.WARMUP.flag():
        return []
    return [DataRef.parse(part) for part in text.split(";") if part.strip()]


def available_here(name: str) -> bool:
    """Whether data set ``name`` is registered and available here without a download."""
    try:
        return dataset_spec(name).availability()[0]
    except DatasetError:
        return False
