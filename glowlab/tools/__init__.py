"""Research tools on a trained checkpoint, each a Hydra app and a plain function.

- ``evaluate``: the metrics of a checkpoint (bits per dim on a split, FID/KID of its samples),
  reconstruction error (``glowlab-eval``).
- ``sample``: sample grids at several temperatures (``glowlab-sample``).
- ``interpolate``: latent interpolation between two images (``glowlab-interpolate``).
- ``manipulate``: attribute directions and latent arithmetic (``glowlab-manipulate``).
- ``score``: per-image bpd and out-of-distribution AUROC (``glowlab-score``).

Shared pieces: ``loading`` (checkpoint -> model, data), ``images`` (user image files),
``plots`` (PIL figures), ``progress`` (progress bars), ``cli``. The numbers themselves come
from ``glowlab.metrics``.
"""
