"""The shared part of FID and KID: features of the model's samples against features of real
images, both under one feature network (``glowlab.metrics.features``).

On its first batch a :class:`SampleQuality` metric draws ``n`` samples from the batch's model
(its sampling settings as the caller configured them: temperature, guidance, denoising, the
layers' inversion options), featurizes them and feeds them, with the cached reference features
of ``n`` real images (``glowlab.metrics.reference``), to a torchmetrics state, which does the
maths; later batches add nothing. FID and KID in one loop share the samples (``Batch.memo``).
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torchmetrics
from torch import Tensor, nn

from glowlab.data import ImageDataModule
from glowlab.metrics.base import Batch, Metric
from glowlab.metrics.features import CLASSIFIER_IMAGES, feature_network
from glowlab.metrics.reference import SPLITS, reference_features
from glowlab.sampling import check_guidance
from glowlab.tools.progress import track
from glowlab.validation import check_int, check_positive, choose

if TYPE_CHECKING:
    from glowlab.models.multiscale import MultiscaleFlow


class GivenFeatures(nn.Module):
    """The identity on features ``(N, dim)``: the "feature extractor" handed to torchmetrics,
    which is fed features computed before (by a :class:`FeatureNetwork`, or given directly)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, features: Tensor) -> Tensor:
        return features


class SampleQuality(Metric):
    """Base of :class:`~glowlab.metrics.fid.FID` and :class:`~glowlab.metrics.kid.KID`.

    Args:
        model: the flow whose samples are measured (checks ``guidance`` and ``denoise``).
        datamodule: the real images (required).
        n: samples drawn, and real images of the reference (fewer if the split is smaller).
        features: the feature network (``auto``, ``inception``, ``classifier``,
            ``package.module:factory``; ``glowlab.metrics.features``).
        weights: a local file of the Inception weights (offline machines).
        reference: the split the real images come from.
        temperature, guidance, denoise: passed to ``model.sample``.
        batch_size: samples drawn (and images featurized) at a time.
        seed: seeds the latent draw (``model.latent_noise(n, seed)``), the reference subset
            and KID's subsets.
        cache_dir: where the classifier and the reference features are cached.
        progress: progress bars over the sampling and featurizing loops.
        classifier_images, classifier_epochs: size the classifier's training
            (``features=classifier``).
    """

    needs = frozenset({"samples"})
    higher_is_better = False
    what: str
    """What the number is, for the note (``"FID (Fréchet distance of ...)"``)."""

    def __init__(
        self,
        model: MultiscaleFlow,
        datamodule: ImageDataModule | None = None,
        n: int = 10_000,
        features: str = "auto",
        weights: str | Path | None = None,
        reference: str = "train",
        temperature: float = 1.0,
        guidance: float | None = None,
        denoise: bool = False,
        batch_size: int = 500,
        seed: int = 0,
        cache_dir: str | Path = "logs/cache",
        progress: bool = False,
        classifier_images: int = CLASSIFIER_IMAGES,
        classifier_epochs: int = 4,
    ) -> None:
        super().__init__()
        if datamodule is None:
            raise ValueError(
                f"metric {self.name!r} compares samples with real images, so it needs the data: "
                f"use it in glowlab-eval (metrics=[bpd,{self.name}]) or in training through "
                "callbacks/fid=on"
            )
        check_int("n", n, low=2)
        choose("reference", reference, SPLITS)
        check_positive("temperature", temperature, allow_zero=True)
        check_int("batch_size", batch_size)
        check_int("seed", seed, low=0)
        if not isinstance(denoise, bool):
            raise ValueError(f"denoise={denoise!r} must be true or false")
        if denoise:
            model.check_denoise()
        self.guidance = None if guidance is None else check_guidance(model, guidance)
        self.datamodule, self.n, self.reference = datamodule, n, reference
        self.temperature, self.denoise = float(temperature), denoise
        self.batch_size, self.seed, self.progress = batch_size, seed, progress
        self.cache_dir = Path(cache_dir)
        self.network = feature_network(
            features,
            datamodule,
            weights,
            cache_dir,
            progress,
            classifier_images,
            classifier_epochs,
        )
        self.state = self.make_state(self.network.dim)
        self.reference_size = 0  # real images fed (once; the state keeps them over resets)
        self.fed = False  # this round's samples fed
        self.seconds = math.nan  # spent in model.sample for them

    @abstractmethod
    def make_state(self, dim: int) -> torchmetrics.Metric:
        """The torchmetrics state, fed features ``(N, dim)`` with ``update(features, real)``;
        it must keep the real features over ``reset`` (``reset_real_features=False``)."""

    @property
    def key(self) -> str:
        """``fid`` / ``kid`` for Inception features, else ``fid_<network>`` / ``kid_<network>``."""
        network = self.network.name
        return self.name if network == "inception" else f"{self.name}_{network}"

    def update(self, batch: Batch) -> None:
        """On the first batch since :meth:`reset`: feed the reference (once) and the samples of
        ``batch.model``; later batches add nothing."""
        if self.fed:
            return
        device = self.device
        if not self.reference_size:
            real = reference_features(
                self.network,
                self.datamodule,
                self.reference,
                self.n,
                self.seed,
                self.cache_dir,
                self.batch_size,
                self.progress,
            )
            self.state.update(real.to(device, torch.float64), real=True)
            self.reference_size = len(real)
        settings = (self.network.identity, self.n, self.temperature, self.guidance)
        settings += (self.denoise, self.seed)
        if settings not in batch.memo:
            batch.memo[settings] = self.sample_features(batch.model)
        fake, self.seconds = batch.memo[settings]
        self.state.update(fake.to(device, torch.float64), real=False)
        self.fed = True

    @property
    def device(self) -> torch.device:
        """Where the feature network (and so the metric) is."""
        return next(self.network.parameters(), torch.empty(0)).device

    def sample_features(self, model: MultiscaleFlow) -> tuple[Tensor, float]:
        """Features ``(n, d)`` of ``n`` samples of ``model`` (labels cycling through the classes
        for a class-conditional model, as ``glowlab-sample`` does), drawn in chunks of
        ``batch_size`` from ``model.latent_noise(n, seed)``, and the seconds spent sampling."""
        model_device = next(model.parameters()).device
        labels = torch.arange(self.n) % model.num_classes if model.num_classes else None
        eps = model.latent_noise(self.n, self.seed)
        features, seconds = [], 0.0
        described = f"{self.name}: {self.n} samples at T={self.temperature:g}"
        for start in track(range(0, self.n, self.batch_size), described, self.progress):
            part = slice(start, start + self.batch_size)
            y = None if labels is None else labels[part].to(model_device)
            noise = [e[part].to(model_device) for e in eps]
            _synchronize(model_device)
            started = time.perf_counter()
            images = model.sample(
                len(noise[0]),
                self.temperature,
                y=y,
                eps=noise,
                guidance=self.guidance,
                denoise=self.denoise,
            )
            _synchronize(model_device)
            seconds += time.perf_counter() - started
            with torch.no_grad():
                features.append(self.network(images.to(self.device)).float())
        return torch.cat(features), seconds

    def compute(self) -> dict[str, float | None]:
        """``{key: value, ..., "sampling_images_per_s": n / seconds in model.sample}``."""
        if not self.fed:
            raise RuntimeError(f"metric {self.name!r}: compute() before any update()")
        return {**self.distance(), "sampling_images_per_s": self.n / self.seconds}

    @abstractmethod
    def distance(self) -> dict[str, float]:
        """The metric's keys and values from :attr:`state`."""

    def reset(self) -> None:
        """Forget the samples (the next update draws them again); the reference stays."""
        super().reset()
        self.fed = False

    def describe(self) -> dict[str, str]:
        sampling = f"T={self.temperature:g}"
        if self.guidance is not None:
            sampling += f", guidance {self.guidance:g}"
        if self.denoise:
            sampling += ", denoised"
        real = self.reference_size or f"up to {self.n}"
        return {
            f"{self.key}_note": (
                f"{self.what}, between n={self.n} samples ({sampling}, latent seed "
                f"{self.seed}) and {real} real images of the {self.reference} split "
                f"({self.datamodule.name}); features: {self.network.describe()}"
            )
        }


def _synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (so that the sampling time is the sampling's)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
