"""Feature networks of FID and KID: uint8 images ``(N, C, H, W)`` -> float32 features ``(N, d)``.

:func:`feature_network` builds one from a spec:

- ``inception``: the InceptionV3 of torchmetrics (torch-fidelity's port of the 2015-12-05
  TensorFlow graph that defined FID), its 2048 pool features; grey images are repeated to three
  channels, images of fewer bits scaled to 8. ``weights=<path>`` loads a local copy of
  :data:`INCEPTION_FILE` (machines without internet); without it torch-fidelity downloads the
  file into ``torch.hub``'s cache once. Its metrics are ``fid`` and ``kid``.
- ``classifier``: a small CNN that glowlab trains (once, seeded, on the CPU) on the train split
  of the data and caches under ``cache_dir``; its penultimate (128) features. Named
  ``<dataset>_classifier`` (``fid_fashion_mnist_classifier``), so its numbers are never mixed
  with Inception's.
- ``package.module:factory``: ``factory()`` gives an ``nn.Module`` of one's own, fed the uint8
  images as the data gives them; named after the factory.
- ``auto``: ``inception`` when its weights are at hand without a download (``weights`` given,
  or the file in ``torch.hub``'s cache), else ``classifier``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from urllib.error import URLError

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torchmetrics.image.fid import NoTrainInceptionV3

from glowlab.console import say
from glowlab.data import ImageDataModule
from glowlab.metrics.reference import digest, load_cached, split_batches
from glowlab.outputs import write_atomic
from glowlab.tools.progress import track
from glowlab.validation import check_int

log = logging.getLogger(__name__)

INCEPTION_URL = URL_INCEPTION_V3
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[-1]  # weights-inception-2015-12-05-6726825d.pth
CLASSIFIER_VERSION = 1
"""The classifier's recipe (architecture, optimiser, schedule): bump it when they change, so
that cached classifiers and the reference statistics of their features are rebuilt."""
CLASSIFIER_IMAGES = 60_000
"""The classifier trains on at most this many train images (a seeded subset of larger splits)."""


class FeatureNetwork(nn.Module):
    """uint8 images ``(N, C, H, W)`` in ``[0, 2^n_bits)`` -> float32 features ``(N, dim)``.

    ``name`` goes into the metric's key; :attr:`identity` (name and a hash of the weights)
    keys cached statistics of its features.
    """

    name: str
    dim: int

    def describe(self) -> str:
        """What the features are, in a few words (the metrics' notes)."""
        return self.name

    @cached_property
    def identity(self) -> str:
        """``<name>-<sha256 of the state dict, 16 hex digits>``."""
        digest = hashlib.sha256()
        for key, value in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        return f"{self.name}-{digest.hexdigest()[:16]}"


class InceptionFeatures(FeatureNetwork):
    """InceptionV3 pool features (2048) of torchmetrics' ``NoTrainInceptionV3`` with the
    original TensorFlow resize to 299×299 (torch-fidelity's, ``antialias=False``)."""

    name = "inception"
    dim = 2048

    def __init__(self, n_bits: int, weights: Path | None) -> None:
        super().__init__()
        self.n_bits = n_bits
        self.source = str(weights if weights is not None else cached_inception())
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(self.dim)],
            feature_extractor_weights_path=None if weights is None else str(weights),
            antialias=False,
        )

    def forward(self, images: Tensor) -> Tensor:
        if self.n_bits != 8:  # [0, 2^n - 1] -> [0, 255]
            images = (images.float() * (255 / (2**self.n_bits - 1))).round().to(torch.uint8)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.net(images)

    def describe(self) -> str:
        return f"InceptionV3 pool features (2048; weights {self.source})"


class ClassifierFeatures(FeatureNetwork):
    """A small CNN classifier; its features are the 128 ReLU units before the last layer.

    ``x / (2^n_bits - 1) - 1/2 -> conv 5×5/2 (16) -> ReLU -> conv 3×3/2 (32) -> ReLU ->
    linear (128) -> ReLU`` = features ``-> linear (classes)`` = logits.
    """

    dim = 128

    def __init__(
        self, name: str, image_shape: tuple[int, int, int], n_bits: int, classes: int
    ) -> None:
        super().__init__()
        self.name, self.n_bits = name, n_bits
        c, h, w = image_shape
        self.body = nn.Sequential(
            nn.Conv2d(c, 16, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * ((h + 3) // 4) * ((w + 3) // 4), self.dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.dim, classes)
        self.accuracy = float("nan")
        self.train_images = 0

    def forward(self, images: Tensor) -> Tensor:
        x = images.to(self.head.weight.dtype) / (2**self.n_bits - 1) - 0.5
        return self.body(x)

    def describe(self) -> str:
        return (
            f"{self.name}: the 128 penultimate features of a small CNN trained on "
            f"{self.train_images} train images, test accuracy {self.accuracy:.1%}"
        )


class UserFeatures(FeatureNetwork):
    """``factory()``'s module, fed the uint8 images; ``dim`` from a forward of one image."""

    def __init__(self, name: str, net: nn.Module, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.name, self.net = name, net.eval().requires_grad_(False)
        with torch.no_grad():
            out = self.net(torch.zeros(1, *image_shape, dtype=torch.uint8))
        if out.dim() != 2 or out.shape[0] != 1:
            raise ValueError(
                f"features={name}: the network gives features of shape {tuple(out.shape)} for "
                "one image; it must give (N, d) for N images"
            )
        self.dim = out.shape[1]

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images).float()

    def train(self, mode: bool = True) -> UserFeatures:
        return super().train(False)  # a fixed feature network: never in training mode


def feature_network(
    spec: str,
    datamodule: ImageDataModule,
    weights: str | Path | None = None,
    cache_dir: str | Path = "logs/cache",
    progress: bool = False,
    classifier_images: int = CLASSIFIER_IMAGES,
    classifier_epochs: int = 4,
) -> FeatureNetwork:
    """The feature network ``spec`` (module docstring) for ``datamodule``'s images, in eval mode
    on the CPU with gradients off. ``classifier_images`` and ``classifier_epochs`` size the
    classifier's training (both are part of its cache key)."""
    spec = str(spec)
    if weights is not None and spec not in ("auto", "inception"):
        raise ValueError(
            f"weights={weights} is the Inception weights file but features={spec}; use "
            "features=inception (or auto), or drop weights"
        )
    if spec == "auto":
        at_hand = weights is not None or cached_inception().exists()
        spec = "inception" if at_hand else "classifier"
    if spec not in ("inception", "classifier") and ":" not in spec:
        raise ValueError(
            f"features={spec!r} is not a feature network; choose auto, inception, classifier "
            "or package.module:factory (a function returning an nn.Module)"
        )
    if spec == "classifier":
        check_int("classifier_images", classifier_images, low=2)
        check_int("classifier_epochs", classifier_epochs)
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: not the caller's
        if spec == "inception":
            network = _inception(datamodule, weights)
        elif spec == "classifier":
            network = _classifier(
                datamodule, Path(cache_dir), classifier_images, classifier_epochs, progress
            )
        else:
            network = _user_network(spec, datamodule)
    return network.eval().requires_grad_(False)


def cached_inception() -> Path:
    """Where torch-fidelity's download of :data:`INCEPTION_FILE` is kept (``torch.hub``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def _no_weights_message(why: str) -> str:
    return (
        f"the Inception weights of FID/KID are not at hand ({why}): download "
        f"{INCEPTION_FILE} (torch-fidelity's release, {INCEPTION_URL}) and pass "
        "fid.weights=<path to it>, or use features=classifier (a small classifier glowlab "
        "trains on the dataset)"
    )


def _inception(datamodule: ImageDataModule, weights: str | Path | None) -> InceptionFeatures:
    """:class:`InceptionFeatures` from the file ``weights``, else torch-fidelity's download;
    a one-line error when neither works."""
    channels = datamodule.image_shape[0]
    if channels not in (1, 3):
        raise ValueError(
            f"features=inception takes grey or RGB images, but {datamodule.name} has {channels} "
            "channels; use features=classifier"
        )
    if weights is not None:
        weights = Path(weights).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(_no_weights_message(f"no file {weights}"))
    try:
        return InceptionFeatures(datamodule.n_bits, weights)
    except (URLError, OSError) as error:  # offline, or the cache is not writable
        if weights is not None:
            raise ValueError(f"cannot read the Inception weights {weights} ({error})") from None
        raise FileNotFoundError(_no_weights_message(f"download failed: {error}")) from None
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{weights or cached_inception()} is not the Inception weights torchmetrics takes "
            f"({first}); use {INCEPTION_FILE} from {INCEPTION_URL}"
        ) from None


def _user_network(spec: str, datamodule: ImageDataModule) -> UserFeatures:
    """:class:`UserFeatures` of ``package.module:factory``."""
    module, _, factory = spec.rpartition(":")
    try:
        make = getattr(importlib.import_module(module), factory)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"features={spec}: cannot load {factory!r} from {module!r} ({error}); put the "
            "module on PYTHONPATH"
        ) from None
    net = make()
    if not isinstance(net, nn.Module):
        raise ValueError(f"features={spec}: {factory}() gave a {type(net).__name__}, not a module")
    return UserFeatures(factory, net, tuple(datamodule.image_shape))


def _classifier(
    datamodule: ImageDataModule, cache_dir: Path, max_images: int, epochs: int, progress: bool
) -> ClassifierFeatures:
    """The dataset's classifier: loaded from ``cache_dir/features/`` when trained before with
    the same recipe, else trained (:func:`train_classifier`, on one CPU thread) and saved
    atomically."""
    datamodule.setup()
    classes = datamodule.num_classes
    if not classes or classes < 2:
        raise ValueError(
            f"features=classifier needs images labelled with two classes or more, and "
            f"{datamodule.name} has {classes or 'no'} label classes; "
            "use features=inception (fid.weights=<path>) or features=package.module:factory"
        )
    shape, n_bits = tuple(datamodule.image_shape), datamodule.n_bits
    images = min(max_images, len(datamodule.train_set))
    key = {
        "version": CLASSIFIER_VERSION,
        "dataset": datamodule.name,
        "root": str(datamodule.root),
        "shape": list(shape),
        "n_bits": n_bits,
        "classes": classes,
        "train_images": images,
        "epochs": epochs,
    }
    name = f"{datamodule.name}_classifier"
    path = cache_dir / "features" / f"{name}-{digest(key)}.pt"
    torch.manual_seed(0)  # the initial weights (the caller's RNG is forked)
    network = ClassifierFeatures(name, shape, n_bits, classes)
    saved = load_cached(path, key)
    if saved is not None:
        network.load_state_dict(saved["state_dict"])
        network.accuracy, network.train_images = saved["accuracy"], saved["train_images"]
        return network
    started = time.perf_counter()
    with one_thread():
        train_classifier(network, datamodule, images, epochs, progress)
    seconds = time.perf_counter() - started
    state = {
        "key": key,
        "state_dict": network.state_dict(),
        "accuracy": network.accuracy,
        "train_images": network.train_images,
    }
    write_atomic(path, lambda file: torch.save(state, file), "feature classifier")
    say(
        f"{name}: trained a feature classifier on {network.train_images} train images in "
        f"{seconds:.1f} s, test accuracy {network.accuracy:.1%} (cached: {path})",
        log,
    )
    return network


def train_classifier(
    network: ClassifierFeatures,
    datamodule: ImageDataModule,
    max_images: int,
    epochs: int,
    progress: bool = False,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
) -> None:
    """Train ``network`` (with its head, from its initial weights) on up to ``max_images`` train
    images (a seeded subset) on the CPU: Adam, one-cycle schedule peaking at ``2·lr``,
    cross-entropy, ``epochs`` passes in a seeded order (a progress bar over them if
    ``progress``); then set its ``accuracy`` on the whole test split. Fashion-MNIST (55,000
    images, 4 epochs): about 13 s on one CPU thread, test accuracy 89.5 %."""
    batches = list(split_batches(datamodule, "train", max_images, seed, batch_size=5000))
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    steps_per_epoch = max(len(x) // batch_size, 1)
    optimizer = torch.optim.Adam(network.parameters(), lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, 2 * lr, total_steps=epochs * steps_per_epoch
    )
    order = torch.Generator().manual_seed(seed)
    network.train()
    for _ in track(range(epochs), f"training {network.name}", progress):
        perm = torch.randperm(len(x), generator=order)
        for i in range(steps_per_epoch):
            chosen = perm[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(network.head(network(x[chosen])), y[chosen])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    network.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in split_batches(datamodule, "test", batch_size=2000):
            correct += (network.head(network(images)).argmax(1) == labels).sum().item()
            total += len(labels)
    network.accuracy, network.train_images = correct / total, len(x)


@contextmanager
def one_thread() -> Iterator[None]:
    """torch's CPU ops on one thread inside the block: the same numbers whatever the caller's
    thread count, and no threads fighting over the cores of a shared machine (a 2-core
    machine under load trained the classifier in 94 s on two threads, 13 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
