"""TarFlow: a Transformer autoregressive flow block over image patches.

One block on ``(B, C, H, W)``:

1. patchify into ``T = (H/p)·(W/p)`` tokens ``x_t`` of ``D = C·p·p`` values (logdet 0), in
   raster order or, ``reverse=True``, flipped (stack blocks alternating it);
2. a causal Transformer reads the tokens: ``e_t = W_in x_t + pos_t (+ class embedding)``,
   pre-LN layers with causal self-attention, a zero-initialised out-projection; its output at
   position ``t − 1`` holds the transform parameters ``θ_t`` of token ``t``, so ``θ_t``
   depends on ``x_{<t}`` only and the first token gets ``θ_0 = 0`` (the identity for affine
   and spline transforms: it passes unchanged);
3. every token is transformed elementwise: ``z_t = τ(x_t; θ_t)``, by default TarFlow's affine
   ``z_t = (x_t − μ_t)·exp(−α_t)`` (``Affine(scale="soft_clamp", centred=True)``);
   ``logdet = Σ_t Σ_d log|∂τ/∂x_{t,d}|``, exact because the Jacobian is block-triangular in
   token order;
4. unpatchify back to ``(B, C, H, W)``.

Density (data → latent) takes one parallel pass. The inverse is autoregressive:

- ``inversion="sequential"``: ``x_0 = τ⁻¹(z_0; 0)``, then for ``t = 1..T−1`` one Transformer
  step on the new token ``x_{t−1}`` with a key/value cache gives ``θ_t`` and
  ``x_t = τ⁻¹(z_t; θ_t)`` — ``T − 1`` one-token steps, exact;
- ``inversion="jacobi"``: the fixed-point iteration ``x^{k+1} = τ⁻¹(z; θ(x^k))`` from
  ``x^0 = z``, every iteration one parallel pass over all tokens. Tokens ``< k`` are exact
  after ``k`` iterations, so at most ``T`` iterations give the exact inverse; it stops
  earlier once ``max |x^{k+1} − x^k| ≤ jacobi_tolerance`` (or at ``jacobi_max_iterations``),
  and ``last_jacobi_iterations`` records the count. Numerical, so ``exact_inverse`` is False.

Class conditioning (``num_classes``): a class embedding is added to every token; index
``num_classes`` is the "null" class, trained when ``label_dropout > 0``: the model
(``MultiscaleFlow``) replaces each label by it with that probability, one draw per image
shared by all blocks (classifier-free guidance training); ``cond=None`` means the null class.
With ``guidance = w ≠ 0`` the *inverse* (sampling) uses the guided parameters
``θ = θ_c + w·(θ_c − θ_∅)`` of the conditioner's raw outputs (the paper's guidance on ``μ``
and ``α``; for ``scale="exp"`` the raw output is ``α`` itself); the forward (density) never
uses guidance, so with ``w ≠ 0`` ``inverse`` is deliberately not the inverse of ``forward``.

``bf16=True`` runs the Transformer (embeddings, attention, MLPs, out-projection) under
bfloat16 autocast; the parameters are cast back, so the transform and the logdet are computed
in the input's dtype (fp32). The cached one-token steps then round differently from the
parallel pass, so the inverse is no longer exact (``exact_inverse`` is False).

References: Zhai et al., "Normalizing flows are capable generative models" (TarFlow), 2025;
Ho & Salimans, "Classifier-free diffusion guidance", 2022; Song et al., "Accelerating
feedforward computation via parallel nonlinear equation solving", 2021; Liu & Qin,
"Accelerate TarFlow sampling with GS-Jacobi iteration", 2025.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from glowlab.bijections.base import Bijection, sum_except_batch
from glowlab.nets.transformer import (
    Transformer,
    check_heads,
    check_patch_size,
    patchify,
    unpatchify,
)
from glowlab.transforms import (
    CENTRED_AFFINE,
    ElementwiseTransform,
    TransformFactory,
    transform_factory,
)
from glowlab.validation import check_int, check_positive, check_range, choose

INVERSIONS = ("sequential", "jacobi")


class TarFlowBlock(Bijection):
    """One TarFlow block (module docstring) on ``(B, C, H, W)`` images of ``image_shape``.

    Args:
        image_shape: ``(C, H, W)``; ``patch_size`` must divide ``H`` and ``W``.
        patch_size: ``p``; tokens hold ``C·p·p`` values.
        width: Transformer width (``heads`` must divide it; TarFlow uses head dim 64).
        layers: Transformer layers in the block.
        transform: an ``ElementwiseTransform`` factory or built-in name (default TarFlow's
            affine); it is built with ``channels = C·p·p``.
        reverse: process the tokens in flipped raster order.
        num_classes: add a class embedding (``num_classes + 1`` rows, the last the null
            class); ``cond`` is then the labels ``(B,)`` long.
        label_dropout: training probability of replacing a label by the null class.
        guidance: classifier-free guidance weight ``w`` used by ``inverse`` (0: none).
        inversion: ``"sequential"`` (KV cache, exact) or ``"jacobi"`` (parallel fixed point).
        jacobi_tolerance: stop once the largest change of an iteration is at most this.
        jacobi_max_iterations: iteration cap (``None``: ``T``, which is always exact).
        bf16: bfloat16 autocast inside the Transformer.
        mlp_ratio: MLP hidden units per width unit.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        patch_size: int = 2,
        width: int = 128,
        layers: int = 2,
        heads: int = 2,
        transform: str | TransformFactory | None = None,
        reverse: bool = False,
        num_classes: int | None = None,
        label_dropout: float = 0.0,
        guidance: float = 0.0,
        inversion: str = "sequential",
        jacobi_tolerance: float = 1e-5,
        jacobi_max_iterations: int | None = None,
        bf16: bool = False,
        mlp_ratio: int = 4,
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        check_patch_size(patch_size, h, w)
        check_int("layers", layers)
        check_heads(width, heads)
        if num_classes is not None:
            check_positive("num_classes", num_classes)
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout={label_dropout!r} must be in [0, 1) (0.1 is usual)")
        check_range("guidance", guidance)
        if (label_dropout or guidance) and not num_classes:
            raise ValueError(
                "label_dropout and guidance need a class-conditional block: set num_classes"
            )
        if (h // patch_size) * (w // patch_size) < 2:
            raise ValueError(
                f"patch_size={patch_size} makes the {h}×{w} image a single token, which a "
                "TarFlow block leaves unchanged; use a smaller patch_size"
            )
        self.image_shape = (c, h, w)
        self.patch_size = patch_size
        self.tokens = (h // patch_size) * (w // patch_size)
        self.dim = c * patch_size * patch_size
        self.reverse = reverse
        self.num_classes = num_classes or None
        self.label_dropout = label_dropout
        self.guidance = guidance
        self.inversion = inversion
        self.jacobi_tolerance = jacobi_tolerance
        self.jacobi_max_iterations = jacobi_max_iterations
        self.bf16 = bf16
        self.last_jacobi_iterations: int | None = None
        self.transform: ElementwiseTransform = transform_factory(
            CENTRED_AFFINE if transform is None else transform
        )(channels=self.dim)
        n_params = self.transform.n_params
        self.embed = nn.Linear(self.dim, width)
        self.position = nn.Parameter(0.02 * torch.randn(self.tokens, width))
        if self.num_classes:
            self.class_embedding = nn.Embedding(self.num_classes + 1, width)
            nn.init.normal_(self.class_embedding.weight, std=0.02)
        self.transformer = Transformer(width, layers, heads, causal=True, mlp_ratio=mlp_ratio)
        self.out = nn.Linear(width, n_params * self.dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    # ----------------------------------------------------------------- options
    @property
    def inversion(self) -> str:
        return self._inversion

    @inversion.setter
    def inversion(self, value: str) -> None:
        self._inversion = choose("inversion", value, INVERSIONS)

    @property
    def jacobi_tolerance(self) -> float:
        return self._jacobi_tolerance

    @jacobi_tolerance.setter
    def jacobi_tolerance(self, value: float) -> None:
        check_positive("jacobi_tolerance", value, allow_zero=True)
        self._jacobi_tolerance = float(value)

    @property
    def jacobi_max_iterations(self) -> int | None:
        return self._jacobi_max_iterations

    @jacobi_max_iterations.setter
    def jacobi_max_iterations(self, value: int | None) -> None:
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(
                f"jacobi_max_iterations={value!r} must be an integer >= 1 or None (= tokens)"
            )
        self._jacobi_max_iterations = value

    @property
    def exact_inverse(self) -> bool:
        """True for the sequential fp32/fp64 inverse of an exactly invertible transform
        without label dropout (a random forward cannot be re-run by reversible backprop)."""
        return (
            self.inversion == "sequential"
            and not self.bf16
            and self.transform.exact_inverse
            and not (self.num_classes and self.label_dropout)
        )

    def sampling_options(self) -> dict[str, Any]:
        """The inverse's options and their current values (``glowlab.sampling``; the
        guidance weight is the model's, set on every guided part at once)."""
        return {
            "inversion": self.inversion,
            "jacobi_tolerance": self.jacobi_tolerance,
            "jacobi_max_iterations": self.jacobi_max_iterations,
        }

    def configure_sampling(self, **options: Any) -> None:
        """Set options of ``sampling_options`` (each checked by its setter)."""
        for name, value in options.items():
            setattr(self, name, value)

    def sampling_report(self) -> dict[str, Any]:
        """What the latest inverse did: the Jacobi iterations (None after a sequential one)."""
        return {"jacobi_iterations": self.last_jacobi_iterations}

    # ----------------------------------------------------------------- pieces
    def _tokens(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, T, D)`` in this block's token order."""
        tokens = patchify(x, self.patch_size)  # (B, T, D)
        return tokens.flip(1) if self.reverse else tokens

    def _image(self, tokens: Tensor) -> Tensor:
        """``(B, T, D) -> (B, C, H, W)``, undoing ``_tokens``."""
        if self.reverse:
            tokens = tokens.flip(1)
        return unpatchify(tokens, self.patch_size, self.image_shape)

    def _labels(self, cond: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
        """Class indices ``(B,)``: the null class for ``cond=None``. Label dropout is the
        model's (``MultiscaleFlow`` drops a label once for all blocks), so ``cond`` may hold
        the null class itself when the block was built with ``label_dropout``."""
        if not self.num_classes:
            return None
        null = self.num_classes
        if cond is None:
            return torch.full((batch,), null, dtype=torch.long, device=device)
        if cond.shape != (batch,) or cond.dtype != torch.long:
            raise ValueError(
                f"cond must be class labels of shape ({batch},) and dtype long, got "
                f"{tuple(cond.shape)} {cond.dtype}"
            )
        top = null + 1 if self.label_dropout else null
        if cond.numel() and (cond.min() < 0 or cond.max() >= top):
            raise ValueError(f"cond must hold class indices in [0, {top}), got {cond.tolist()}")
        return cond

    def _embed(self, tokens: Tensor, start: int, labels: Tensor | None) -> Tensor:
        """``(B, n, D) -> (B, n, width)`` for the tokens at positions ``start..start+n−1``."""
        e = self.embed(tokens) + self.position[start : start + tokens.shape[1]]
        if labels is not None:
            e = e + self.class_embedding(labels)[:, None]  # (B, 1, width)
        return e

    def _autocast(self, like: Tensor):
        return torch.autocast(like.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _raw(self, tokens: Tensor, labels: Tensor | None) -> Tensor:
        """Raw parameters ``(B, T, P·D)`` of every token from the tokens before it (one
        parallel causal pass; token 0 gets zeros)."""
        b = tokens.shape[0]
        with self._autocast(tokens):
            hidden = self.transformer(self._embed(tokens[:, :-1], 0, labels))  # (B, T−1, width)
            out = self.out(hidden)  # (B, T−1, P·D)
        out = out.to(tokens.dtype)
        return torch.cat([out.new_zeros(b, 1, out.shape[-1]), out], dim=1)  # (B, T, P·D)

    def _params(self, raw: Tensor) -> Tensor:
        """Raw ``(B, n, P·D)`` → per-element parameters ``(B, D, n, P)``."""
        return self.transform.split_params(raw.transpose(1, 2))  # (B, P·D, n) → (B, D, n, P)

    def _guided(self, raw: Tensor, batch: int) -> Tensor:
        """``θ_c + w·(θ_c − θ_∅)`` from raw parameters of the doubled batch ``[cond; null]``."""
        if raw.shape[0] == batch:
            return raw
        conditional, unconditional = raw[:batch], raw[batch:]
        return conditional + self.guidance * (conditional - unconditional)

    def _inverse_labels(self, cond: Tensor | None, batch: int, device) -> Tensor | None:
        """Labels for sampling: ``[labels; null]`` (batch doubled) when guidance is on."""
        labels = self._labels(cond, batch, device)
        if labels is None or not self.guidance:
            return labels
        return torch.cat([labels, torch.full_like(labels, self.num_classes)])

    # ----------------------------------------------------------------- the bijection
    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        tokens = self._tokens(x)  # (B, T, D)
        params = self._params(self._raw(tokens, self._labels(cond, x.shape[0], x.device)))
        z, log_derivative = self.transform(
            tokens.transpose(1, 2).contiguous(), params
        )  # (B, D, T)
        logdet = (
            x.new_zeros(x.shape[0]) if log_derivative is None else sum_except_batch(log_derivative)
        )
        return self._image(z.transpose(1, 2)), logdet

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        labels = self._inverse_labels(cond, z.shape[0], z.device)
        if self.inversion == "jacobi":
            return self._image(self._jacobi(self._tokens(z), labels))
        self.last_jacobi_iterations = None
        return self._image(self._sequential(self._tokens(z), labels))

    def _sequential(self, z: Tensor, labels: Tensor | None) -> Tensor:
        """Token-by-token inverse with a key/value cache: ``(B, T, D) -> (B, T, D)``."""
        b, t_count, _ = z.shape
        repeat = 1 if labels is None else labels.shape[0] // b
        zero = z.new_zeros(b, 1, self.transform.n_params * self.dim)
        xs = [
            self.transform.inverse(z[:, :1].transpose(1, 2).contiguous(), self._params(zero))
        ]  # (B, D, 1)
        cache = self.transformer.new_cache()
        for t in range(1, t_count):
            previous = xs[-1].transpose(1, 2).repeat(repeat, 1, 1)  # (B·repeat, 1, D)
            with self._autocast(z):
                hidden = self.transformer.step(self._embed(previous, t - 1, labels), cache)
                out = self.out(hidden)  # (B·repeat, 1, P·D)
            raw = self._guided(out.to(z.dtype), b)
            z_t = z[:, t : t + 1].transpose(1, 2).contiguous()  # (B, D, 1)
            xs.append(self.transform.inverse(z_t, self._params(raw)))
        return torch.cat(xs, dim=2).transpose(1, 2)  # (B, T, D)

    def _jacobi(self, z: Tensor, labels: Tensor | None) -> Tensor:
        """Parallel fixed-point inverse ``x^{k+1} = τ⁻¹(z; θ(x^k))``: ``(B, T, D) → (B, T, D)``.

        Stops when the largest change ``max |x^{k+1} − x^k|`` is ``≤ jacobi_tolerance`` or
        after ``min(jacobi_max_iterations, T)`` iterations (``T`` iterations are exact).
        """
        b, t_count, _ = z.shape
        repeat = 1 if labels is None else labels.shape[0] // b
        cap = t_count if self.jacobi_max_iterations is None else self.jacobi_max_iterations
        cap = min(cap, t_count)
        z_elements = z.transpose(1, 2).contiguous()  # (B, D, T)
        x = z
        iterations = 0
        for iterations in range(1, cap + 1):  # noqa: B007 (the count is reported)
            raw = self._guided(self._raw(x.repeat(repeat, 1, 1), labels), b)
            x_next = self.transform.inverse(z_elements, self._params(raw)).transpose(1, 2)
            change = (x_next - x).abs().max().item() if x.numel() else 0.0
            x = x_next
            if change <= self.jacobi_tolerance:
                break
        self.last_jacobi_iterations = iterations
        return x

    def extra_repr(self) -> str:
        return (
            f"tokens={self.tokens}, dim={self.dim}, patch_size={self.patch_size}, "
            f"reverse={self.reverse}, inversion={self.inversion!r}, guidance={self.guidance}"
        )


__all__ = ["INVERSIONS", "TarFlowBlock"]
