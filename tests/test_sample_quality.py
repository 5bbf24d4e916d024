"""FID and KID (glowlab.metrics.fid, .kid): torchmetrics' numbers against closed forms computed
here; with the classifier's features real data << a briefly trained Glow << uniform noise; the
Inception path offline from a local weights file; one-line errors; cached reference statistics
and classifier reused; one draw of samples shared by FID and KID."""

from __future__ import annotations

import math
import time
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as fidelity
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from glowlab.data import ImageDataModule
from glowlab.metrics import (
    FID,
    IMAGE_LOOP,
    KID,
    build_metrics,
    frechet_distance,
    kernel_distance,
    measure,
)
from glowlab.metrics import features as features_module
from glowlab.metrics import reference as reference_module
from glowlab.metrics.features import INCEPTION_FILE, INCEPTION_URL
from glowlab.metrics.reference import split_batches
from glowlab.models import glow
from tests.conftest import FASHION_MNIST

CLASSIFIER = {"features": "classifier", "classifier_images": 10_000, "classifier_epochs": 2}
"""A quicker classifier than the default (about 1.5 s; test accuracy about 81 %)."""


class ImageSource(nn.Module):
    """A stand-in model whose "samples" are given images, drawn by the metric as from a flow:
    sample ``i`` of the latent draw is ``images[i]``. Records each ``sample`` call."""

    def __init__(self, images: Tensor, num_classes: int | None = None) -> None:
        super().__init__()
        self.images, self.num_classes = images, num_classes
        self.anchor = nn.Parameter(torch.zeros(1))  # the metric reads the device from it
        self.calls: list[dict] = []

    def latent_noise(self, n: int, seed: int) -> list[Tensor]:
        return [torch.arange(n, dtype=torch.float32)[:, None]]

    def sample(self, n, temperature=1.0, y=None, eps=None, guidance=None, denoise=False):
        self.calls.append({"n": n, "temperature": temperature, "y": y, "guidance": guidance})
        return self.images[eps[0][:, 0].long()]


def one_batch() -> list[tuple[Tensor, Tensor]]:
    """The loop's batches: the metrics draw their samples on the first one."""
    return [(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))] * 2


@pytest.fixture(scope="module")
def datamodule() -> ImageDataModule:
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    return ImageDataModule(name="fashion_mnist", root=str(FASHION_MNIST), seed=0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: the classifier of :data:`CLASSIFIER` is trained once."""
    return tmp_path_factory.mktemp("cache")


def images_of(datamodule: ImageDataModule, split: str, n: int, seed: int) -> Tensor:
    return next(iter(split_batches(datamodule, split, n, seed, batch_size=n)))[0]


# ------------------------------------------------------------------ the maths
def test_fid_and_kid_match_closed_forms_for_features_given_directly() -> None:
    """Features with exactly prescribed means and covariances: torchmetrics' FID (through
    ``frechet_distance``, the metric's code) equals ``|mu1 - mu2|^2 + Tr(S1 + S2 -
    2 (S1^1/2 S2 S1^1/2)^1/2)`` from float64 eigen-decompositions; KID with one subset of all
    features equals the unbiased MMD^2 of the cubic kernel written out here."""
    rng = np.random.default_rng(0)
    d, n = 5, 400

    def gaussian_features(mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
        z = rng.standard_normal((n, d))
        z -= z.mean(0)
        z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # cov exactly I
        return z @ np.linalg.cholesky(cov).T + mean

    a, b = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) + 1.0
    s1, s2 = a @ a.T + 0.5 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    f1, f2 = gaussian_features(mu1, s1), gaussian_features(mu2, s2)
    np.testing.assert_allclose(np.cov(f2, rowvar=False), s2, atol=1e-10)

    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    middle = np.linalg.eigvalsh(root1 @ s2 @ root1)
    closed = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.sqrt(middle).sum()
    fid = frechet_distance(torch.from_numpy(f1), torch.from_numpy(f2))
    assert fid == pytest.approx(closed, rel=1e-9)
    assert frechet_distance(torch.from_numpy(f1), torch.from_numpy(f1)) == pytest.approx(
        0, abs=1e-8
    )

    def kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x @ y.T / d + 1) ** 3

    m = len(f1)
    off = 1 - np.eye(m)
    mmd = (
        (kernel(f1, f1) * off).sum() / (m * (m - 1))
        + (kernel(f2, f2) * off).sum() / (m * (m - 1))
        - 2 * kernel(f1, f2).mean()
    )
    mean, std = kernel_distance(torch.from_numpy(f1), torch.from_numpy(f2), subsets=3)
    assert mean == pytest.approx(mmd, rel=1e-9) and std == pytest.approx(0, abs=1e-9)
    # subsets of 100: a spread, drawn from the seed, the global RNG untouched
    state = torch.random.get_rng_state()
    first = kernel_distance(torch.from_numpy(f1), torch.from_numpy(f2), 20, 100, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first == kernel_distance(torch.from_numpy(f1), torch.from_numpy(f2), 20, 100, seed=3)
    assert first[1] > 0 and abs(first[0] - mmd) < 3 * first[1]


# ------------------------------------------------------------------ the feature network
@pytest.fixture(scope="module")
def trained_glow(datamodule: ImageDataModule) -> nn.Module:
    """A small Glow after 200 steps on 4,096 Fashion-MNIST train images (about 7 s)."""
    x = images_of(datamodule, "train", 4096, seed=0)
    torch.manual_seed(0)
    model = glow((1, 28, 28), levels=2, depth=2, width=32, preprocess="logit")
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(200):
        loss = model.bits_per_dim(x[torch.randint(0, len(x), (64,), generator=order)]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_fid_orders_real_data_model_samples_and_noise_with_the_classifier(
    datamodule: ImageDataModule, cache_dir: Path, trained_glow: nn.Module
) -> None:
    """FID(500 real test images vs 500 train images) << FID(the Glow's samples) << FID(uniform
    noise images); KID in the same order."""
    noise = torch.randint(0, 256, (500, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    sources = {
        "real": ImageSource(images_of(datamodule, "test", 500, seed=1)),
        "model": trained_glow,
        "noise": ImageSource(noise.to(torch.uint8)),
    }
    fid, kid = {}, {}
    for name, model in sources.items():
        metrics = [
            cls(model, datamodule, n=500, cache_dir=cache_dir, **CLASSIFIER) for cls in (FID, KID)
        ]
        measure(model, one_batch(), metrics)
        results = [metric.compute() for metric in metrics]
        fid[name] = results[0]["fid_fashion_mnist_classifier"]
        kid[name] = results[1]["kid_fashion_mnist_classifier"]
        assert results[0]["sampling_images_per_s"] == results[1]["sampling_images_per_s"] > 0
    assert 10 * fid["real"] < fid["model"] and 2 * fid["model"] < fid["noise"], fid
    assert 10 * kid["real"] < kid["model"] < kid["noise"], kid
    note = metrics[0].describe()["fid_fashion_mnist_classifier_note"]
    assert "n=500 samples (T=1, latent seed 0)" in note and "500 real images of the train" in note
    assert "trained on 10000 train images, test accuracy" in note


class RowMeans(nn.Module):
    """A feature network of one's own: the 28 row means of a 28×28 grey image."""

    def forward(self, images: Tensor) -> Tensor:
        return images.float().mean(dim=(1, 3))


def row_means() -> nn.Module:
    return RowMeans()


def test_a_feature_network_of_ones_own_gives_the_fid_of_its_features(
    datamodule: ImageDataModule, tmp_path: Path
) -> None:
    """``features=package.module:factory``: the key names the factory, and the metric's value
    is the Fréchet distance of its features of the samples and of the seeded train subset."""
    samples = images_of(datamodule, "test", 200, seed=4)
    model = ImageSource(samples)
    metric = FID(model, datamodule, n=200, features=f"{__name__}:row_means", cache_dir=tmp_path)
    assert metric.key == "fid_row_means"
    measure(model, one_batch(), [metric])
    real = images_of(datamodule, "train", 200, seed=0)  # the reference: seed 0's subset
    expected = frechet_distance(RowMeans()(real), RowMeans()(samples))
    assert metric.compute()["fid_row_means"] == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="cannot load 'nothing' from 'tests.test_sample_quality'"):
        FID(model, datamodule, features=f"{__name__}:nothing")


# ------------------------------------------------------------------ Inception, offline
@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No internet (torch-fidelity's download fails) and an empty ``torch.hub`` cache."""

    def no_download(url: str, **_) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(fidelity, "load_state_dict_from_url", no_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def random_inception_weights(path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Save the state dict of a randomly initialised torch-fidelity InceptionV3 (the
    architecture torchmetrics loads; its own constructor always loads weights, so loading is
    skipped here once)."""
    with monkeypatch.context() as patched:
        patched.setattr(fidelity, "load_state_dict_from_url", lambda url, **_: {})
        patched.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda *a: None)
        torch.manual_seed(0)
        net = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return path


def test_inception_plumbing_offline_with_random_weights_from_a_local_file(
    datamodule: ImageDataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: None
) -> None:
    """Random weights (the real file is not needed for plumbing): keys ``fid``/``kid``, the
    features are those of torchmetrics' own FID built from the same file, and ``auto`` picks
    Inception when the weights are given."""
    weights = random_inception_weights(tmp_path / "random_inception.pth", monkeypatch)
    samples = images_of(datamodule, "test", 6, seed=0)
    source = ImageSource(samples)
    options = {"n": 6, "weights": weights, "cache_dir": tmp_path / "cache", "batch_size": 3}
    metrics = [FID(source, datamodule, features="inception", **options)]
    metrics.append(KID(source, datamodule, features="auto", **options))
    assert [m.key for m in metrics] == ["fid", "kid"]
    measure(source, one_batch(), metrics)
    fid, kid = (metric.compute() for metric in metrics)
    assert set(fid) == {"fid", "sampling_images_per_s"}
    assert set(kid) == {"kid", "kid_std", "sampling_images_per_s"}
    assert math.isfinite(fid["fid"]) and fid["fid"] > 0 and math.isfinite(kid["kid"])
    assert len(source.calls) == 2  # FID and KID shared the two chunks of three samples
    theirs = FrechetInceptionDistance(feature_extractor_weights_path=str(weights), antialias=False)
    with torch.no_grad():
        expected = theirs.inception(samples.expand(-1, 3, -1, -1))
        torch.testing.assert_close(metrics[0].network(samples), expected)
    assert f"weights {weights}" in metrics[0].describe()["fid_note"]


def test_inception_without_its_weights_offline_fails_in_one_line(
    datamodule: ImageDataModule, tmp_path: Path, offline: None
) -> None:
    model = ImageSource(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    for weights in (None, tmp_path / "missing.pth"):
        with pytest.raises(FileNotFoundError) as error:
            FID(model, datamodule, features="inception", weights=weights, cache_dir=tmp_path)
        message = str(error.value)
        assert "\n" not in message, message
        for part in (INCEPTION_FILE, INCEPTION_URL, "fid.weights=<path", "features=classifier"):
            assert part in message, part
    assert "no file" in message and "missing.pth" in message
    not_weights = tmp_path / "not_weights.pth"
    torch.save({"fc.weight": torch.zeros(1)}, not_weights)
    with pytest.raises(ValueError, match=f"not the Inception weights .*use {INCEPTION_FILE}"):
        FID(model, datamodule, features="inception", weights=not_weights, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="needs the data: use it in glowlab-eval"):
        build_metrics(["fid"], model, "module.metrics", IMAGE_LOOP)
    with pytest.raises(ValueError, match="features='vgg' is not a feature network"):
        FID(model, datamodule, features="vgg")
    with pytest.raises(ValueError, match="but features=classifier; use features=inception"):
        FID(model, datamodule, features="classifier", weights=not_weights)


# ------------------------------------------------------------------ caches and sharing
def test_cached_statistics_are_reused_and_the_classifier_is_not_retrained(
    datamodule: ImageDataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: None
) -> None:
    """The second run reads the classifier and the reference features (faster, same numbers);
    a classifier trained otherwise is another cache entry. ``auto`` offline without the
    Inception file is the classifier."""
    trained, featurized = [], []
    train = features_module.train_classifier
    monkeypatch.setattr(
        features_module, "train_classifier", lambda *a, **k: trained.append(1) or train(*a, **k)
    )
    batches = reference_module.split_batches
    monkeypatch.setattr(
        reference_module,
        "split_batches",
        lambda *a, **k: featurized.append(a[1]) or batches(*a, **k),
    )
    model = ImageSource(images_of(datamodule, "test", 300, seed=2))
    options = {"n": 300, "cache_dir": tmp_path, "classifier_images": 3000, "classifier_epochs": 1}

    def run() -> tuple[dict, float]:
        started = time.perf_counter()
        metrics = build_metrics(
            ["fid", "kid"], model, "metrics", IMAGE_LOOP, datamodule=datamodule, **options
        )
        measure(model, one_batch(), metrics)
        results = {k: v for m in metrics for k, v in m.compute().items() if "per_s" not in k}
        return results, time.perf_counter() - started

    first, first_s = run()
    assert trained == [1] and featurized == ["train"]  # one training, one reference
    second, second_s = run()
    assert trained == [1] and featurized == ["train"]
    assert second == first and second_s < first_s
    assert set(first) == {
        "fid_fashion_mnist_classifier",
        "kid_fashion_mnist_classifier",
        "kid_fashion_mnist_classifier_std",
    }
    options["classifier_epochs"] = 2
    third, _ = run()
    assert trained == [1, 1] and third != first
    assert len(list((tmp_path / "features").glob("*.pt"))) == 2


def test_fid_and_kid_draw_once_per_round_with_the_sampling_settings(
    datamodule: ImageDataModule, cache_dir: Path
) -> None:
    """One draw (two chunks) for FID and KID together; a reset draws again; a class-conditional
    model gets labels cycling through the classes, and the temperature and guidance given."""
    model = ImageSource(images_of(datamodule, "test", 64, seed=3), num_classes=10)
    options = {"n": 64, "batch_size": 32, "temperature": 0.7, "cache_dir": cache_dir}
    rng = torch.random.get_rng_state()
    metrics = [cls(model, datamodule, **options, **CLASSIFIER) for cls in (FID, KID)]
    measure(model, one_batch(), metrics)
    first = [metric.compute()[metric.key] for metric in metrics]
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's RNG is untouched
    assert metrics[0].state.real_features_sum.dtype == torch.float64  # after .to(device)
    assert [call["n"] for call in model.calls] == [32, 32]
    assert {call["temperature"] for call in model.calls} == {0.7}
    labels = torch.cat([call["y"] for call in model.calls])
    assert torch.equal(labels, torch.arange(64) % 10)
    for metric in metrics:
        metric.reset()
    measure(model, one_batch(), metrics)
    assert len(model.calls) == 4
    assert [metric.compute()[metric.key] for metric in metrics] == first  # reference kept
    with pytest.raises(ValueError, match="guidance=1.5 needs a class-conditional model"):
        FID(model, datamodule, guidance=1.5, **options, **CLASSIFIER)
