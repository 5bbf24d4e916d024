"""The options every model shares, set once: ``ModelOptions``, given to ``assemble``.

A recipe takes its own layout options by name (``levels``, ``depth``, parts) and the shared
ones as ``**shared`` keyword arguments, which ``model_options`` turns into one checked
``ModelOptions`` (with the recipe's own defaults, e.g. ``preprocess="logit"`` for Real NVP).
Configs keep these keys in the model node (``model.preprocess``, ``model/prior=...``), except
``n_bits``: the train app and the tools give the data's bit depth at build time.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from glowlab.bijections.base import MEMORY_SAVING
from glowlab.models.parts import (
    DequantizationChoice,
    PriorChoice,
    dequantization_choice,
    prior_choice,
)
from glowlab.priors import check_label_dropout
from glowlab.validation import check_n_bits, check_positive, choose

PREPROCESSING = ("shift", "logit")
LABEL_PLACES = ("prior", "blocks")


@dataclass(frozen=True)
class ModelOptions:
    """What every model shares, checked once here.

    - ``n_bits``: bits per pixel of the data (1..8; the data's, given at build time);
    - ``preprocess``: ``shift`` (``[0, 1) -> [-0.5, 0.5)``) or ``logit`` (with
      ``logit_alpha``);
    - ``prior``: a ``PriorChoice`` or its kind's name (``learned``, ``standard``, ``planar``);
    - ``dequantization``: a ``DequantizationChoice`` or its kind's name (``uniform``,
      ``variational``, ``gaussian``; gaussian needs ``preprocess="shift"``);
    - ``num_classes``: class-conditional model (``y`` required); 0 or None: unconditional;
    - ``label_dropout``: classifier-free guidance training (needs ``num_classes``);
    - ``memory_saving``: ``none`` | ``reversible`` | ``checkpoint`` (see ``Sequential``);
    - ``labels``: where class labels go: ``prior`` (a class-conditional top prior) or
      ``blocks`` (the flow's layers take ``y``; the priors stay unconditional).
    """

    n_bits: int = 8
    preprocess: str = "shift"
    logit_alpha: float = 0.05
    prior: PriorChoice | str = "learned"
    dequantization: DequantizationChoice | str = "uniform"
    num_classes: int | None = None
    label_dropout: float = 0.0
    memory_saving: str = "none"
    labels: str = "prior"

    def __post_init__(self) -> None:
        check_n_bits(self.n_bits)
        choose("preprocess", self.preprocess, PREPROCESSING)
        choose("memory_saving", self.memory_saving, MEMORY_SAVING)
        choose("labels", self.labels, LABEL_PLACES)
        object.__setattr__(self, "prior", prior_choice(self.prior))
        object.__setattr__(self, "dequantization", dequantization_choice(self.dequantization))
        if self.num_classes is not None:
            check_positive("num_classes", self.num_classes, allow_zero=True)
            object.__setattr__(self, "num_classes", self.num_classes or None)
        check_label_dropout(self.label_dropout, self.num_classes)
        if self.dequantization.kind == "gaussian" and self.preprocess == "logit":
            raise ValueError(
                "model/dequantization=gaussian adds unbounded noise but preprocess='logit' "
                "needs inputs in (0, 1); set model.preprocess=shift"
            )
        if self.prior.kind == "planar" and self.num_classes and self.labels == "prior":
            raise ValueError(
                "prior='planar' is not class-conditional; use prior='learned' with num_classes"
            )

    @property
    def prior_classes(self) -> int | None:
        """The classes of the top prior: ``num_classes`` when labels go to the prior."""
        return self.num_classes if self.labels == "prior" else None


SHARED = tuple(field.name for field in fields(ModelOptions))


def model_options(
    recipe: Callable[..., Any], shared: Mapping[str, Any], **defaults: Any
) -> ModelOptions:
    """``ModelOptions(**shared)`` over the recipe's own ``defaults``. An option that is neither
    shared nor the ``recipe``'s own, or a ``labels`` place other than the recipe's (its layers
    decide whether they take labels), raises one ``ValueError`` line naming the valid ones."""
    for name in shared:
        if name not in SHARED:
            own = [p for p in inspect.signature(recipe).parameters if p != "shared"]
            near = difflib.get_close_matches(name, [*own, *SHARED], n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(
                f"{recipe.__name__}() has no option {name!r}{hint}; its own options are "
                f"{', '.join(own[1:])} and the shared ones {', '.join(SHARED)}"
            )
    place = defaults.get("labels", "prior")
    if shared.get("labels", place) != place:
        raise ValueError(
            f"labels={shared['labels']!r}: {recipe.__name__}() puts class labels in its "
            f"{'prior' if place == 'prior' else 'layers'}; drop the labels option "
            f"(labels={place!r})"
        )
    return ModelOptions(**{**defaults, **shared})


def check_recipe_sets(part: str, factory: Callable, keys: tuple[str, ...], source: str) -> None:
    """Refuse a part factory (a ``functools.partial``, e.g. from ``model.<part>``) that fixes
    an argument the recipe passes itself, which would be overridden silently: ``keys`` come
    from ``source`` (e.g. ``"model.num_classes"``)."""
    fixed = sorted(set(getattr(factory, "keywords", {})) & set(keys))
    if fixed:
        raise ValueError(
            f"model.{part}.{fixed[0]} is set by the recipe from {source}; remove it from "
            f"model.{part} (set {source} instead)"
        )
