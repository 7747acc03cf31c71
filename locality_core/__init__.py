"""Locality Explorer's library: why image diffusion models generalise, computed from the data.

The layers, each a folder that uses only the ones below it (checked by `make lint`, import-linter's contract in
pyproject.toml):

    cli/         `locality ...`: every computation of the dashboard, scriptable
    views/       each page's default view as a function of (data set, view parameters), the lecture warm-up
    analysis/    sensitivity fields, Jacobian bases, DDIM sampling, agreement metrics, the experiments
    denoisers/   D(x, sigma) -> x0_hat: the contract, the registry, Wiener, optimal, analytical, LS/ELS, the UNet,
                 a diffusers UNet2DModel (imported: `import_network`)
    stats/       mean, covariance and its eigendecomposition, the spectrum
    data/        data sets as float32 tensors (N, C, H, W) in [-1, 1] with a fingerprint
    store/       the on-disk array cache, inter-process locks, atomic files, memory checks
    schedule.py, render.py, settings.py   the noise schedule, Pillow figures, the environment variables

Example
    import locality_core as lc

    data = lc.load_dataset("fashion-mnist")
    wiener = lc.get_denoiser("wiener", data)
    x = data.test[:4] + 0.5 * torch.randn_like(data.test[:4])
    x0_hat = wiener(x, 0.5)
    field = lc.denoiser_field(data, "unet", (14, 14), [3.44, 0.34])
"""

from locality_core.analysis.basis import JacobianBasis, denoiser_basis
from locality_core.analysis.fields import Field, denoiser_field, locality_sizes, wiener_field
from locality_core.analysis.metrics import agreement, nearest_training
from locality_core.analysis.sampling import cached_trajectory, initial_noise, sample_ddim
from locality_core.data import Dataset, DatasetError, import_images, list_datasets, load_dataset
from locality_core.denoisers.analytical import AnalyticalDenoiser
from locality_core.denoisers.base import Denoiser, LinearDenoiser, NotFittedError
from locality_core.denoisers.diffusers_unet import DiffusersDenoiser
from locality_core.denoisers.evaluate import heldout_mse, noisy_heldout
from locality_core.denoisers.optimal import OptimalDenoiser
from locality_core.denoisers.patches import ELSDenoiser, LSDenoiser
from locality_core.denoisers.registry import DenoiserError, get_denoiser, import_network, list_denoisers
from locality_core.denoisers.unet import EDMDenoiser
from locality_core.denoisers.wiener import WienerDenoiser
from locality_core.schedule import ddim_sigmas, sigma_to_t, t_to_sigma
from locality_core.stats.covariance import DataStats, compute_stats, get_stats
from locality_core.store.cache import ArrayCache, default_cache

__version__ = "0.1.0"

__all__ = [
    "AnalyticalDenoiser",
    "ArrayCache",
    "DataStats",
    "Dataset",
    "DatasetError",
    "Denoiser",
    "DenoiserError",
    "DiffusersDenoiser",
    "EDMDenoiser",
    "ELSDenoiser",
    "Field",
    "JacobianBasis",
    "LSDenoiser",
    "LinearDenoiser",
    "NotFittedError",
    "OptimalDenoiser",
    "WienerDenoiser",
    "__version__",
    "agreement",
    "cached_trajectory",
    "compute_stats",
    "ddim_sigmas",
    "default_cache",
    "denoiser_basis",
    "import_network",
    "denoiser_field",
    "get_denoiser",
    "get_stats",
    "heldout_mse",
    "import_images",
    "initial_noise",
    "list_datasets",
    "list_denoisers",
    "load_dataset",
    "locality_sizes",
    "nearest_training",
    "noisy_heldout",
    "sample_ddim",
    "sigma_to_t",
    "t_to_sigma",
    "wiener_field",
]
