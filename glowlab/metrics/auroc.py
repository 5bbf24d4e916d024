"""AUROC of flagging one set of scores over another (``glowlab-score``)."""

from __future__ import annotations

import torch
from torch import Tensor

from glowlab.metrics.base import Metric, per_image_values
from glowlab.metrics.registry import register


def auroc(positive: Tensor, negative: Tensor) -> float:
    """Area under the ROC curve of ``score > threshold`` flagging ``positive`` over ``negative``.

    The Mann-Whitney statistic: ``P(s_pos > s_neg) + P(s_pos = s_neg) / 2``, from average
    ranks (ties count one half). 1 = every positive scores above every negative, 0.5 = chance.
    Shapes: ``(P,)`` and ``(N,)``. (``torchmetrics``' ``binary_auroc`` agrees on ties but
    squashes scores outside ``[0, 1]`` through a sigmoid, which ties bpd-sized float32
    scores, and returns float32.)
    """
    positive, negative = positive.double().flatten(), negative.double().flatten()
    if not len(positive) or not len(negative):
        raise ValueError("auroc needs at least one positive and one negative score")
    scores = torch.cat([positive, negative])
    if not torch.isfinite(scores).all():
        raise ValueError("auroc got NaN or infinite scores")
    order = scores.argsort()
    _, group, counts = torch.unique_consecutive(
        scores[order], return_inverse=True, return_counts=True
    )
    last = counts.cumsum(0).double()  # 1-based rank of each tie group's last member
    average = last - (counts.double() - 1) / 2
    ranks = torch.empty_like(scores)
    ranks[order] = average[group]
    n_pos, n_neg = len(positive), len(negative)
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


@register
class AUROC(Metric):
    """``auroc`` of the positives' scores over the negatives' (:func:`auroc`), fed with
    ``update(scores, positive)``."""

    name = "auroc"
    higher_is_better = True
    needs = frozenset({"scores"})

    def __init__(self, model=None) -> None:
        super().__init__()
        self.positive = per_image_values()
        self.negative = per_image_values()

    def update(self, scores: Tensor, positive: bool) -> None:
        (self.positive if positive else self.negative).update(scores.double())

    def compute(self) -> dict[str, float | None]:
        return {self.name: auroc(self.positive.compute(), self.negative.compute())}
