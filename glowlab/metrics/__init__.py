"""Metrics: small stateful classes that validation, test, ``glowlab-eval``, ``glowlab-score``,
``glowlab-report`` and the HParams table all read from.

- ``base.py``: the contract (:class:`Metric`: ``name``, ``higher_is_better``, ``needs``,
  ``update``/``compute``/``reset``), the :class:`Batch` a metric reads and :func:`measure`;
- ``registry.py``: ``@register`` and selection by name (or ``package.module:name``);
- one file per metric: ``bpd.py`` (bpd and its parts; ``noisy_bpd`` under noise
  augmentation), ``importance_weighted.py`` (``iw_bound``), ``auroc.py``.

Adding a metric: write one file with a ``@register``-ed :class:`Metric` subclass (the README,
"Adding a metric").
"""

from glowlab.metrics.auroc import AUROC, auroc
from glowlab.metrics.base import IMAGE_LOOP, Batch, Metric, measure
from glowlab.metrics.bpd import BitsPerDim
from glowlab.metrics.importance_weighted import ImportanceWeightedBound
from glowlab.metrics.registry import REGISTRY, build_metrics, metric_class, register

__all__ = [
    "AUROC",
    "IMAGE_LOOP",
    "REGISTRY",
    "Batch",
    "BitsPerDim",
    "ImportanceWeightedBound",
    "Metric",
    "auroc",
    "build_metrics",
    "measure",
    "metric_class",
    "register",
]
