"""Metrics: small stateful classes that validation, test, ``glowlab-eval``, ``glowlab-score``,
``glowlab-report`` and the HParams table all read from.

- ``base.py``: the contract (:class:`Metric`: ``name``, ``higher_is_better``, ``needs``,
  ``update``/``compute``/``reset``), the :class:`Batch` a metric reads and :func:`measure`;
- ``registry.py``: ``@register`` and selection by name (or ``package.module:name``);
- one file per metric: ``bpd.py`` (bpd and its parts; ``noisy_bpd`` under noise
  augmentation), ``importance_weighted.py`` (``iw_bound``), ``auroc.py``, and the sample
  quality metrics ``fid.py`` and ``kid.py`` (``fid``/``kid`` with Inception features,
  ``fid_<network>``/``kid_<network>`` with another), which share ``sample_quality.py`` (draw
  the samples once, featurize, feed torchmetrics), ``features.py`` (the feature networks:
  Inception, a classifier trained on the dataset, one's own) and ``reference.py`` (the real
  images' features, cached).

Adding a metric: write one file with a ``@register``-ed :class:`Metric` subclass (the README,
"Adding a metric").
"""

from glowlab.metrics.auroc import AUROC, auroc
from glowlab.metrics.base import IMAGE_LOOP, Batch, Metric, measure
from glowlab.metrics.bpd import BitsPerDim
from glowlab.metrics.features import FeatureNetwork, feature_network
from glowlab.metrics.fid import FID, frechet_distance
from glowlab.metrics.importance_weighted import ImportanceWeightedBound
from glowlab.metrics.kid import KID, kernel_distance
from glowlab.metrics.reference import reference_features
from glowlab.metrics.registry import REGISTRY, build_metrics, metric_class, register
from glowlab.metrics.sample_quality import SampleQuality

__all__ = [
    "AUROC",
    "FID",
    "IMAGE_LOOP",
    "KID",
    "REGISTRY",
    "Batch",
    "BitsPerDim",
    "FeatureNetwork",
    "ImportanceWeightedBound",
    "Metric",
    "SampleQuality",
    "auroc",
    "build_metrics",
    "feature_network",
    "frechet_distance",
    "kernel_distance",
    "measure",
    "metric_class",
    "reference_features",
    "register",
]
