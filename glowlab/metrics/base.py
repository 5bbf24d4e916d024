"""The metric contract: a small stateful class fed batch by batch, and the batch it reads.

A :class:`Metric` is built for a model (``Metric(model, **options)``), fed with
:meth:`Metric.update` over batches, and read with :meth:`Metric.compute`, which gives one or
more numbers by key (the main key first). Its running state lives in torchmetrics objects
(``MeanMetric``, ``CatMetric``, ...), so it is summed over DDP ranks when computed and moves
with ``.to(device)``; :meth:`Metric.reset` clears it.

``needs`` says what a metric reads, and so which loops can feed it:

- ``likelihood``: a :class:`Batch` of real images with the model's log-likelihoods under
  its dequantization draws (validation, test, ``glowlab-eval``);
- ``samples``: a :class:`Batch`, from whose model it draws samples (``batch.model.sample``);
- ``scores``: two sets of scores, ``update(scores, positive)`` (``glowlab-score``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar

import torch
import torchmetrics
from torch import Tensor, nn

if TYPE_CHECKING:
    from glowlab.models.multiscale import FlowOutput, MultiscaleFlow

NEEDS = ("likelihood", "samples", "scores")
# What a loop over batches of real images gives its metrics (validation, test, glowlab-eval).
IMAGE_LOOP = frozenset({"likelihood", "samples"})


class Metric(nn.Module, ABC):
    """One metric: ``name`` selects it (``module.metrics=[bpd,...]``, ``glowlab-eval
    metrics=[...]``) and is the key it is logged under (``val/<key>``, ``test/<key>``,
    ``metrics.json``, TensorBoard, HParams, ``glowlab-report``) unless :attr:`key` says
    otherwise; ``higher_is_better`` orders the report.

    Subclasses set the class attributes, build their torchmetrics state in ``__init__(model,
    **options)`` and define :meth:`update` and :meth:`compute`.
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    needs: ClassVar[frozenset[str]] = frozenset({"likelihood"})

    @property
    def key(self) -> str:
        """The main key of :meth:`compute` (``bpd`` gives ``noisy_bpd`` for a noisy model)."""
        return self.name

    @abstractmethod
    def update(self, batch: Batch) -> None:
        """Accumulate one batch. Call the model here (e.g. draw samples), never in
        :meth:`compute`: during validation only the batches see the evaluated (EMA) weights."""

    @abstractmethod
    def compute(self) -> dict[str, float | None]:
        """``{key: value}`` over the batches so far, :attr:`key` first; None where the metric
        is not defined for this model (a note in :meth:`describe` says why)."""

    def describe(self) -> dict[str, str]:
        """What the numbers are, for reports (``glowlab-eval``'s JSON): ``{field: text}``."""
        return {}

    def per_image(self) -> dict[str, Tensor]:
        """``{key: float64 (N,)}`` per-image values kept so far, in batch order (the CSV and
        histogram of ``glowlab-eval``); empty for metrics of a whole set."""
        return {}

    def reset(self) -> None:
        """Forget every batch (each validation starts afresh)."""
        for state in self._states():
            state.reset()

    def _states(self) -> list[torchmetrics.Metric]:
        return [module for module in self.modules() if isinstance(module, torchmetrics.Metric)]

    def _apply(self, fn, recurse: bool = True) -> Metric:
        # torchmetrics 1.9 resets a metric's dtype to float32 on a device move (``.to(device)``),
        # after which its updates cast to float32: keep each state's dtype
        dtypes = [(state, state.dtype) for state in self._states()]
        super()._apply(fn, recurse)
        for state, dtype in dtypes:
            state.set_dtype(dtype)
        return self


class Batch:
    """One batch of real images as the metrics see it.

    ``images`` ``(B, C, H, W)`` integer pixels, ``labels`` ``(B,)`` for a class-conditional
    model (else None). The ``draws`` dequantization draws are computed once, on first use,
    and shared by every metric: draw ``k`` passes ``noise = torch.rand(images.shape,
    generator)`` (drawn on the CPU from ``torch.Generator().manual_seed(seed)``, draws in
    order) to the model, so validation, test and ``glowlab-eval samples=1 seed=1234`` see the
    same noise. ``memo`` holds what metrics share within the batch, by a key of every setting
    that made it (FID and KID draw and featurize their samples once).
    """

    def __init__(
        self,
        model: MultiscaleFlow,
        images: Tensor,
        labels: Tensor | None,
        seed: int,
        draws: int = 1,
    ) -> None:
        self.model, self.images, self.labels = model, images, labels
        self.seed, self.draws = seed, draws
        self.memo: dict = {}

    @classmethod
    def without_images(cls, model: MultiscaleFlow, seed: int = 0) -> Batch:
        """A batch of no real images, ``(0, C, H, W)``, for the sample metrics alone (``fid``,
        ``kid``), which read only ``model`` and share ``memo``: a training callback, a script."""
        return cls(model, torch.zeros((0, *model.image_shape), dtype=torch.uint8), None, seed)

    @cached_property
    def outputs(self) -> list[FlowOutput]:
        """The model's output (``log_prob``, ``log_prior``, ``logdet``, ``log_q``, each
        ``(B,)`` nats) under each draw."""
        generator = torch.Generator().manual_seed(self.seed)
        outputs = []
        for _ in range(self.draws):
            noise = torch.rand(self.images.shape, generator=generator)
            noise = noise.to(self.images.device, self.model._dtype())
            outputs.append(self.model(self.images, self.labels, noise))
        return outputs

    @cached_property
    def log_weights(self) -> Tensor:
        """``w_k = log p(x + u_k) - log q(u_k | x)`` in nats, float64 ``(B, draws)``."""
        return torch.stack([out.log_prob.double() for out in self.outputs], dim=1)

    @property
    def dims(self) -> int:
        """``D = C·H·W``, the number of real pixels per image."""
        return math.prod(self.images.shape[1:])


def per_image_values() -> torchmetrics.CatMetric:
    """A float64 list of per-image values gathered over batches (and DDP ranks); NaNs are
    kept, not dropped, so a broken image shows."""
    return torchmetrics.CatMetric(nan_strategy="disable").set_dtype(torch.float64)


@torch.no_grad()
def measure(
    model: MultiscaleFlow,
    batches: Iterable[tuple[Tensor, Tensor]],
    metrics: Iterable[Metric],
    samples: int = 1,
    seed: int = 0,
) -> Tensor:
    """Feed every batch ``(uint8 (B, C, H, W), long (B,))`` to every metric, on the model's
    device; batch ``i`` draws its ``samples`` noises from seed ``seed + i`` (as validation
    and test do from ``module.eval_seed``). Returns the labels ``(N,)``; read the metrics."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples} must be >= 1 (noise draws per image)")
    metrics = list(metrics)
    device = next(model.parameters()).device
    for metric in metrics:
        metric.to(device)
    labels = []
    for i, (x, y) in enumerate(batches):
        y_model = y.to(device) if model.num_classes else None
        batch = Batch(model, x.to(device), y_model, seed + i, samples)
        for metric in metrics:
            metric.update(batch)
        labels.append(y)
    if not labels:
        raise ValueError("no images to score: the split or folder is empty")
    return torch.cat(labels)
