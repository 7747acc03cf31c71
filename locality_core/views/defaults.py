"""What every page shows before anyone touches a control: one home for the defaults that the pages draw and the
warm-up precomputes, so that the two cannot drift apart.

Glossary
    DEFAULTS      the default view of every page: noise levels, seed, samples, Jacobian image and level, field
                  images, experiment settings, the coarse grid of precomputed pixels
    view_sigma    the one rounding of a noise level (6 significant digits, `denoisers.base.sigma_key`): the
                  sidebar's levels, the warm-up's and the cache keys' are the same numbers
    default pixel the image centre (row H // 2, column W // 2): where the Sensitivity page opens
"""

from __future__ import annotations

from dataclasses import dataclass

from locality_core import settings
from locality_core.analysis.fields import PRECISIONS, native_bfloat16
from locality_core.data import Dataset
from locality_core.denoisers.base import sigma_key
from locality_core.denoisers.registry import list_denoisers
from locality_core.schedule import REFERENCE_TIMESTEPS, t_to_sigma


def view_sigma(sigma: float) -> float:
    """A noise level as every page, the warm-up and the cache keys use it: 6 significant digits."""
    return sigma_key(sigma)


@dataclass(frozen=True)
class Defaults:
    seed: int = 0
    timesteps: tuple[int, ...] = tuple(REFERENCE_TIMESTEPS)
    sample_denoisers: tuple[str, ...] = ("unet", "analytical", "wiener", "optimal", "diffusers-unet")
    # 8 Fashion-MNIST samples in a second or two
    fast_samplers: tuple[str, ...] = ("unet", "wiener", "optimal", "diffusers-unet")
    sample_n: int = 8
    sample_steps: int = 10
    jacobian_image: int = 0
    jacobian_sigma_index: int = 4   # into `sigmas`, high to low: sigma = 3.44 (t = 500)
    jacobian_pairs: int = 16        # leading eigenpairs of a network's Jacobian (`analysis.basis.leading_basis`)
    field_n: int = 32
    experiment: str = "inject"      # "Locality follows the data" opens on the W pattern
    inject_strength: float = 1.0
    permute_seed: int = 0
    experiment_class: int = 0       # "One class": the first class (T-shirt/top on Fashion-MNIST)
    alpha_a: float = 2.0            # "GRF alpha": the two exponents and the training fields
    alpha_b: float = 4.0
    alpha_n_train: int = 5000
    grid_step: int = 7              # the coarse grid of pixels whose UNet fields are precomputed

    @property
    def sigmas(self) -> tuple[float, ...]:
        """High to low, as the sidebar resolves them."""
        return tuple(sorted({view_sigma(float(t_to_sigma(int(t)))) for t in self.timesteps}, reverse=True))

    def jacobian_sigma(self, sigmas=None) -> float:
        sigmas = self.sigmas if sigmas is None else sigmas
        return float(sigmas[min(self.jacobian_sigma_index, len(sigmas) - 1)])

    def grid_pixels(self, shape: tuple[int, int, int]) -> list[tuple[int, int]]:
        """The coarse grid of pixels whose UNet fields the warm-up computes (a click near one is instant)."""
        _, h, w = shape
        return [(r, c) for r in range(self.grid_step // 2, h, self.grid_step)
                for c in range(self.grid_step // 2, w, self.grid_step)]


DEFAULTS = Defaults()


def default_pixel(shape: tuple[int, int, int]) -> tuple[int, int]:
    return shape[1] // 2, shape[2] // 2


def field_precision() -> str:
    """Precision of network Jacobians in the app (fields and bases): bfloat16 where the CPU runs it natively,
    else float32; $LOCALITY_FIELD_PRECISION overrides."""
    chosen = settings.FIELD_PRECISION.text()
    if chosen in PRECISIONS:
        return chosen
    return "bfloat16" if native_bfloat16() else "float32"


def jacobian_denoiser(dataset: Dataset) -> str | None:
    """The Jacobian page's default denoiser: the first available one that is not linear (the UNet, usually)."""
    return next((s.name for s in list_denoisers() if not s.linear and s.availability(dataset)[0]), None)
