"""Detection metrics without scikit-learn."""

from __future__ import annotations

import torch
from torch import Tensor


def auroc(positive: Tensor, negative: Tensor) -> float:
    """Area under the ROC curve of ``score > threshold`` flagging ``positive`` over ``negative``.

    The Mann-Whitney statistic: ``P(s_pos > s_neg) + P(s_pos = s_neg) / 2``, from average
    ranks (ties count one half). 1 = every positive scores above every negative, 0.5 = chance.
    Shapes: ``(P,)`` and ``(N,)``.
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
