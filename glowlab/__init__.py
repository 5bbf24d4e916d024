"""glowlab: exact, fast multiscale normalizing flows for images.

Glossary: one word for one thing, in the code, the configs and the docs.

- **bijection**: an invertible map with its log-determinant, ``forward(x, cond=None) ->
  (z, logdet)`` from data to latent (``logdet`` of shape ``(B,)``) and ``inverse(z,
  cond=None) -> x`` (``glowlab.bijections.base.Bijection``). Everything between the integer
  image and the latents is one.
- **layer**: one bijection in a chain (``Sequential``): ActNorm, a 1×1 convolution, a
  coupling, a masked autoregressive layer, a TarFlow block, a squeeze, ...
- **transform**: an *elementwise* transform ``z = τ(x; θ)``, strictly increasing in each
  element given its parameters ``θ`` (``glowlab.transforms``: ``affine``, ``affine_centred``,
  ``additive``, ``spline``, ``mixture``; config group ``model/transform``). Layers hold one;
  nothing else is a transform, except ``Level.transform`` (a level's chain of layers, named
  so in every checkpoint's weights).
- **conditioner**: the network that computes a layer's parameters ``θ`` (Glow's convolutions,
  RealNVP's ResNet, Flow++'s gated attention, masked convolutions, a causal Transformer);
  config group ``model/conditioner``. Networks are not bijections.
- **coupling**: a layer that splits ``x`` by a mask into ``(x_a, x_b)``, keeps ``x_a`` and
  transforms ``x_b`` with ``θ = conditioner(x_a)``.
- **flow step**: the group of layers a recipe repeats ``depth`` times in a level (Glow:
  ActNorm → 1×1 convolution → coupling).
- **level**: one scale of a ``MultiscaleFlow`` (``Level``): a squeeze and flow steps, then,
  for all but the last, a factor-out of half the channels to its prior. A single-scale
  family (TarFlow, Jet, flow matching) has one level.
- **block**: the layer a single-scale or continuous recipe repeats, given as a part
  (``model.block``): a TarFlow block, one causal Transformer over patches and the transform
  of each patch (``TarFlowBlock``, counted by ``tarflow``'s ``blocks``), or FFJORD's CNF.
  Inside a network (ResNet conditioner, U-Net) ``blocks`` counts the network's residual
  blocks; a Transformer's depth is counted in ``layers`` (the ViT conditioner's ``depth``).
- **prior**: the density of the latents: factor-out priors ``p(z_l | kept)`` and the top
  prior (config group ``model/prior``).
- **latent**: ``z``, what a level hands to its prior (``encode`` returns one per level).
- **dequantization**: integer images into the continuous pixel scale: uniform noise,
  Flow++'s learned ``q(u | x)`` or TarFlow's Gaussian noise augmentation
  (``glowlab.bijections.dequantization``; config group ``model/dequantization``).
- **preprocess**: the fixed bijection after dequantization: ``shift`` to ``[-0.5, 0.5)`` or
  ``logit``.
- **part**: a replaceable piece of a model chosen by config: transform, conditioner, prior,
  dequantization (a config group under ``conf/model/``, a ``_partial_`` node).
- **recipe**: the Python function that arranges a family's parts into a model
  (``glowlab.glow``, ``glowlab.tarflow``, ...); the ``_target_`` of a model config.
- **family**: the models one layer class and one recipe build (Glow, MAF, TarFlow, ...).
- **preset**: a model config ``conf/model/<name>.yaml``: a recipe with its parts and sizes
  (``glow_small``, ``tarflow_paper``), chosen as ``model=<name>``.
- **labels**: class labels, integers ``(B,)`` in ``[0, num_classes)``, as the data yields
  them; ``y`` is their argument name in the model's methods (``log_prob(x, y)``,
  ``sample(n, y=...)``) and ``cond`` in the bijection contract, which passes them on.
  ``context`` is something else: the features a network sees besides its input (a
  factor-out prior's kept half, the dequantizer's image features).
- **objective**: what training minimises, computed from the model: maximum likelihood,
  RNODE-regularised likelihood or conditional flow matching.
- **metric**: a number reported for a split (``val/bpd``, ``test/bpd``, noisy bpd, the
  importance-weighted bound, AUROC); validation and test always report the true bpd.
- **bpd**: bits per dimension, ``−log₂ p(x) / D`` of the integer images.
"""

from glowlab.models import MultiscaleFlow, ffjord, glow, maf, nice, realnvp, resflow
from glowlab.models.flow_matching import flow_matching
from glowlab.models.transformers import jet, tarflow

__version__ = "0.1.0"
__all__ = ["MultiscaleFlow", "__version__", "ffjord", "glow", "maf", "nice", "realnvp", "resflow"]
__all__ += ["flow_matching"]
__all__ += ["jet", "tarflow"]
