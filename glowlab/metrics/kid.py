"""Kernel distance (KID) between the features of a model's samples and of real images.

``KID`` is the unbiased estimate of the squared maximum mean discrepancy under the kernel
``k(a, b) = (a·b / d + 1)^3``, averaged over ``subsets`` random subsets of ``subset_size``
features of each set (torchmetrics' ``KernelInceptionDistance``); ``kid_std`` is the standard
deviation over the subsets (the spread of one subset's estimate, not a standard error). Unlike
FID it has no bias that depends on the number of samples. Keyed ``kid`` with Inception
features, ``kid_<network>`` with another feature network.

References: Bińkowski et al., "Demystifying MMD GANs", 2018.
"""

from __future__ import annotations

import inspect
import warnings

import torch
from torch import Tensor
from torchmetrics.image.kid import KernelInceptionDistance

from glowlab.metrics.registry import register
from glowlab.metrics.sample_quality import GivenFeatures, SampleQuality
from glowlab.validation import check_int


def kernel_state(dim: int, subsets: int = 100) -> KernelInceptionDistance:
    """torchmetrics' KID fed features ``(N, dim)`` directly: float64, the real features kept
    over ``reset``, not gathered over DDP ranks (every rank draws the same samples)."""
    with warnings.catch_warnings():  # its note that it keeps every feature: we know
        warnings.filterwarnings("ignore", "Metric `Kernel Inception Distance` will save all")
        state = KernelInceptionDistance(
            GivenFeatures(dim), subsets=subsets, reset_real_features=False, sync_on_compute=False
        )
    return state.set_dtype(torch.float64)


def kernel_result(
    state: KernelInceptionDistance, subset_size: int, seed: int
) -> tuple[float, float]:
    """``(mean, std)`` of KID over the state's subsets of ``min(subset_size, N, M)`` features,
    drawn from ``seed`` (the global RNG is left as it was)."""
    sizes = [sum(len(f) for f in fs) for fs in (state.real_features, state.fake_features)]
    state.subset_size = min(subset_size, *sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = state.compute()
    return mean.item(), std.item()


def kernel_distance(
    real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID ``(mean, std)`` between features ``(N, d)`` and ``(M, d)``, by the code the
    :class:`KID` metric runs."""
    state = kernel_state(real.shape[1], subsets)
    state.update(real.double(), real=True)
    state.update(fake.double(), real=False)
    return kernel_result(state, subset_size, seed)


@register
class KID(SampleQuality):
    """KID of ``n`` samples against ``n`` real images, over ``subsets`` subsets of
    ``subset_size`` features (fewer when there are fewer); ``<key>_std`` is the std over the
    subsets. Other options: :class:`SampleQuality`."""

    name = "kid"

    def __init__(
        self, model, datamodule=None, *, subsets: int = 100, subset_size: int = 1000, **options
    ) -> None:
        check_int("subsets", subsets)
        check_int("subset_size", subset_size, low=2)
        self.subsets, self.subset_size = subsets, subset_size
        super().__init__(model, datamodule, **options)

    @property
    def what(self) -> str:
        size = min(self.subset_size, self.n, self.reference_size or self.n)
        return (
            "KID (unbiased squared MMD of the features, cubic polynomial kernel; mean and std "
            f"over {self.subsets} subsets of {size})"
        )

    def make_state(self, dim: int) -> KernelInceptionDistance:
        return kernel_state(dim, self.subsets)

    def distance(self) -> dict[str, float]:
        mean, std = kernel_result(self.state, self.subset_size, self.seed)
        return {self.key: mean, f"{self.key}_std": std}


# build_metrics passes a metric the options its signature names: KID's are SampleQuality's and
# its own keyword-only ones (each declared once, in SampleQuality.__init__ and above)
KID.__signature__ = inspect.Signature(
    [
        *inspect.signature(SampleQuality).parameters.values(),
        *(
            p
            for p in inspect.signature(KID.__init__).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        ),
    ]
)
