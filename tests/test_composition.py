"""Composable parts: presets give the same numbers as before the refactor, through their
configs and through the Python API; a transform written by a user (the README's example)
trains by config; the flat options and checkpoints of glowlab 0.1 are handled."""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path

import pytest
import torch

import glowlab
from glowlab.conf import CONFIG_DIR
from glowlab.migration import check_model_config, guard_command_line, translate_checkpoint
from glowlab.models.parts import DequantizationChoice
from glowlab.nets.conditioners import FlowPPConditioner
from glowlab.transforms import Affine, LogisticMixture
from tests.conftest import compose_run
from tests.preset_reference import (
    RELATIVE_TOLERANCE,
    assert_matches_reference,
    build,
    model_config_shape,
    real_images,
    recorded_log_probs,
    reference_log_prob,
)

README = Path(__file__).resolve().parents[1] / "README.md"
LEGACY = Path(__file__).resolve().parent / "data" / "legacy"

# The Python-API spelling of each coupling/multiscale preset (depth 1, as the reference fixture
# is built); tests/test_family_parts.py has the single-scale and continuous ones.
PYTHON_API = {
    "glow_small": lambda s: glowlab.glow(s, levels=2, depth=1, width=128),
    "glow_cpu": lambda s: glowlab.glow(
        s,
        levels=2,
        depth=1,
        width=64,
        preprocess="logit",
        transform=functools.partial(Affine, scale="exp_tanh"),
    ),
    "nsf": lambda s: glowlab.glow(s, levels=2, depth=1, width=96, transform="spline"),
    "flowpp": lambda s: glowlab.glow(
        s,
        levels=2,
        depth=1,
        transform=functools.partial(LogisticMixture, components=4),
        conditioner=functools.partial(FlowPPConditioner, hidden=32, blocks=1, heads=4),
        preprocess="logit",
        dequantization=DequantizationChoice("variational", width=16, depth=2),
    ),
    "realnvp_small": lambda s: glowlab.realnvp(s, depth=1, width=32, blocks=2),
    "nice_small": lambda s: glowlab.nice(s, depth=1, width=64),
    "maf": lambda s: glowlab.maf(s, levels=2, depth=1, width=64),
    "resflow": lambda s: glowlab.resflow(s, levels=2, depth=1, width=64),
    "glow": lambda s: glowlab.glow(s, levels=3, depth=1),
    "realnvp": lambda s: glowlab.realnvp(s, depth=1),
    "nice": lambda s: glowlab.nice(s, depth=1),
    "maf_paper": lambda s: glowlab.maf(s, levels=3, depth=1, width=256, hidden_layers=2),
    "nsf_paper": lambda s: glowlab.glow(
        s, levels=3, depth=1, transform="spline", conditioner="resnet", width=96, blocks=3
    ),
    "resflow_paper": lambda s: glowlab.resflow(s, levels=3, depth=1, width=512, coeff=0.98),
    "flowpp_paper": lambda s: glowlab.glow(
        s,
        levels=2,
        depth=1,
        transform=functools.partial(LogisticMixture, components=32),
        conditioner=functools.partial(FlowPPConditioner, hidden=96, blocks=10, heads=4),
        preprocess="logit",
        dequantization=DequantizationChoice("variational", width=96, depth=4),
    ),
}


@pytest.mark.parametrize("name", sorted(recorded_log_probs()))
def test_preset_log_prob_is_unchanged_by_the_refactor(name: str) -> None:
    """float64 log p(x) of real images, after ActNorm init and a seeded perturbation, equals
    the value the code before the composable parts gave (tests/data/preset_log_probs.json)."""
    model, shape = build(name)
    assert_matches_reference(name, reference_log_prob(model, real_images(shape)))


@pytest.mark.parametrize("name", sorted(PYTHON_API))
def test_python_api_builds_the_same_model_as_the_config(name: str) -> None:
    shape = model_config_shape(name)
    torch.manual_seed(0)
    by_api = reference_log_prob(PYTHON_API[name](shape), real_images(shape))
    by_config = reference_log_prob(build(name)[0], real_images(shape))
    assert by_api == by_config, name  # bit-identical: the same model on the same machine
    assert_matches_reference(name, by_api)


def test_parts_compose_across_presets() -> None:
    model, _ = build("maf", ["model/transform=spline", "model.transform.bins=5"])
    layer = model.levels[0].transform.layers[2]  # Squeeze, ActNorm, MAF
    assert type(layer.transform).__name__ == "Spline" and layer.transform.bins == 5
    model, _ = build("glow_cpu", ["model/conditioner=resnet"])
    assert type(model.levels[0].transform.layers[3].net).__name__ == "ResNetConditioner"
    model, _ = build("glow_small", ["model/prior=planar", "model.prior.layers=2"])
    assert type(model.levels[-1].prior).__name__ == "PlanarPrior"


def _readme_example(name: str) -> str:
    """The fenced block after ``<!-- example: name -->`` in the README."""
    text = README.read_text()
    match = re.search(rf"<!-- example: {re.escape(name)} -->\n```\w*\n(.*?)```", text, re.S)
    assert match, f"README lost its example {name}"
    return match.group(1)


@pytest.mark.slow
def test_readme_transform_example_trains_by_config(tmp_path, monkeypatch) -> None:
    """The README's own transform, registered by a user config dir on Hydra's search path,
    is exact (inverse, brute-force logdet) and trains two steps in a Glow."""
    from glowlab.train import train

    (tmp_path / "my_transforms.py").write_text(_readme_example("my_transforms.py"))
    node = tmp_path / "my_conf" / "model" / "transform" / "sinh_arcsinh.yaml"
    node.parent.mkdir(parents=True)
    node.write_text(_readme_example("my_conf/model/transform/sinh_arcsinh.yaml"))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_transforms", None)
    import my_transforms

    transform = my_transforms.SinhArcsinh().double()
    x = torch.linspace(-3, 3, 12, dtype=torch.float64).view(1, 3, 4)
    params = 0.7 * torch.randn(1, 3, 4, 2, dtype=torch.float64)
    z, log_derivative = transform(x, params)
    assert torch.allclose(transform.inverse(z, params), x, atol=1e-10)
    derivative = torch.autograd.functional.jacobian(lambda v: transform(v, params)[0].sum(), x)
    assert torch.allclose(derivative.log(), log_derivative, atol=1e-10)

    run_dir = tmp_path / "run"
    cfg = compose_run(
        run_dir,
        [
            f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
            "data=synthetic",
            "data.image_size=8",
            "data.batch_size=8",
            "data.train_subset=32",
            "model=glow_cpu",
            "model/transform=sinh_arcsinh",
            "model.depth=1",
            "model.conditioner.hidden=8",
            "module.init_batch_size=16",
            "trainer.max_steps=2",
            "trainer.max_epochs=null",
            "trainer.val_check_interval=2",
            "callbacks.progress_bar=null",
            "callbacks.sample_grid.n=4",
            "logger=csv",
            "test=false",
        ],
    )
    metrics = train(cfg)
    assert metrics["steps"] == 2 and metrics["val/bpd"] is not None
    from glowlab.tools.loading import load_flow

    model, _ = load_flow(run_dir / "checkpoints" / "last.ckpt")  # the tools rebuild it too
    coupling = model.levels[0].transform.layers[3]
    assert type(coupling.transform).__name__ == "SinhArcsinh"


# ------------------------------------------------------------------ glowlab 0.1 configs
@pytest.mark.parametrize(
    ("model", "new_key"),
    [
        ({"_target_": "glowlab.models.glow", "coupling": "spline"}, "model/transform="),
        ({"_target_": "glowlab.models.glow", "spline_bins": 16}, "model.transform.bins"),
        ({"_target_": "glowlab.models.glow", "width": 64}, "model.conditioner.hidden"),
        ({"_target_": "glowlab.models.realnvp", "blocks": 2}, "model.conditioner.blocks"),
        ({"_target_": "glowlab.models.maf", "planar_layers": 2}, "model.prior.layers"),
        ({"_target_": "glowlab.models.glow", "prior": "planar"}, "model/prior=planar"),
        ({"_target_": "glowlab.models.glow", "dequantization": "variational"}, "model/dequ"),
    ],
)
def test_flat_options_name_their_new_key(model: dict, new_key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(new_key)):
        check_model_config(model)


def test_width_stays_an_option_of_the_non_coupling_families() -> None:
    check_model_config({"_target_": "glowlab.models.maf", "width": 64})


def test_command_line_with_a_moved_key_stops_with_the_new_key() -> None:
    with pytest.raises(SystemExit, match=r"model\.spline_bins.*model\.transform\.bins"):
        guard_command_line("glowlab-train", CONFIG_DIR, "train", ["model.spline_bins=16"])
    guard_command_line("glowlab-train", CONFIG_DIR, "train", ["model=maf", "model.width=8"])


# ------------------------------------------------------------------ glowlab 0.1 checkpoints
@pytest.mark.parametrize("name", ["glow_spline", "glow_affine"])
def test_checkpoint_from_before_the_refactor_loads_with_the_same_numbers(name: str) -> None:
    """tests/data/legacy/<name>.ckpt was trained with the code before the change; the tools'
    loader rebuilds it from its translated config with identical log-likelihoods."""
    from glowlab.tools.loading import load_flow

    model, _ = load_flow(LEGACY / f"{name}.ckpt")
    model = model.double()
    x = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        got = model.log_prob(x.to(torch.uint8), noise=noise)
    expected = json.loads((LEGACY / f"{name}.json").read_text())["log_prob"]
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)


def test_translation_renames_the_tanh_scales() -> None:
    checkpoint = torch.load(LEGACY / "glow_affine.ckpt", weights_only=True)
    translated = translate_checkpoint(checkpoint)
    keys = [k for k in translated["state_dict"] if k.endswith("tanh_scale")]
    assert keys and all(k.endswith(".transform.tanh_scale") for k in keys)
    assert translated["glowlab"]["config"]["model"]["transform"]["scale"] == "exp_tanh"
    assert "coupling" not in translated["glowlab"]["config"]["model"]


# ------------------------------------------- checkpoints of the code before families-from-parts
BEFORE_PARTS = ["glow_5bit_af3475a", "maf_af3475a"]
"""Written by a 2-step ``python -m glowlab.train`` of commit af3475a (``data=synthetic
data.image_size=8``; the glow one with ``data.n_bits=5``); their JSON holds the log p of 3
fixed images, the eval bpd and a sample's pixel sum that code gave."""
GLOW_5BIT_RUN = [
    "data=synthetic",
    "data.image_size=8",
    "data.n_bits=5",
    "data.batch_size=8",
    "data.val_size=16",
    "model=glow_small",
    "model.levels=2",
    "model.depth=1",
    "model.conditioner.hidden=8",
    "trainer=cpu",
    "trainer.max_epochs=-1",
    "++trainer.limit_val_batches=1",
    "++trainer.limit_test_batches=1",
    "callbacks=minimal",
    "logger=csv",
]
"""The overrides that wrote ``glow_5bit_af3475a.ckpt`` (with ``trainer.max_steps=2``)."""


@pytest.mark.parametrize("name", BEFORE_PARTS)
def test_checkpoint_from_before_the_parts_gives_the_same_numbers_in_the_tools(
    name: str, tmp_path: Path
) -> None:
    """Its config names ``glowlab.bijections.conditioners.*`` and holds ``model.n_bits``: the
    loader, glowlab-eval and sampling give exactly the numbers of the code that wrote it."""
    from glowlab.tools import evaluate
    from glowlab.tools.loading import load_flow

    expected = json.loads((LEGACY / f"{name}.json").read_text())
    ckpt = LEGACY / f"{name}.ckpt"
    model, _ = load_flow(ckpt)
    torch.manual_seed(0)
    with torch.no_grad():
        assert int(model.sample(2, temperature=0.7).long().sum()) == expected["sample_sum"]
    model = model.double()
    x = torch.randint(0, 2**model.n_bits, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        got = model.log_prob(x.to(torch.uint8), noise=noise).tolist()
    assert got == pytest.approx(expected["log_prob"], rel=RELATIVE_TOLERANCE, abs=0)
    args = [f"ckpt={ckpt}", "device=cpu", "progress=false", "max_images=4", "samples=1"]
    result = evaluate.main(compose_run(tmp_path / "eval", args, config_name="eval"))
    assert result["bpd"] == pytest.approx(expected["eval_bpd"], rel=1e-6)  # float32 evaluation


def test_translation_moves_the_networks_and_drops_model_n_bits() -> None:
    checkpoint = torch.load(LEGACY / "glow_5bit_af3475a.ckpt", weights_only=False)
    assert checkpoint["glowlab"]["config"]["model"]["n_bits"] == 8  # the preset's, ignored
    translated = translate_checkpoint(checkpoint)
    model = translated["glowlab"]["config"]["model"]
    assert model["conditioner"]["_target_"] == "glowlab.nets.conditioners.GlowConditioner"
    assert "n_bits" not in model and translated["glowlab"]["n_bits"] == 5
    assert translate_checkpoint(translated) == translated
    assert checkpoint["glowlab"]["config"]["model"]["n_bits"] == 8  # the input is left alone
    old = translate_checkpoint(torch.load(LEGACY / "glow_affine.ckpt", weights_only=True))
    assert old["glowlab"]["config"]["model"]["conditioner"]["_target_"].startswith("glowlab.nets")


@pytest.mark.slow
def test_run_from_before_the_parts_resumes(tmp_path: Path) -> None:
    """Its saved config, translated, matches today's config of the same command."""
    from glowlab.train import train

    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes((LEGACY / "glow_5bit_af3475a.ckpt").read_bytes())
    run = [
        *GLOW_5BIT_RUN,
        "trainer.max_steps=3",
        "module.resume_schedule=rebuild",
        f"ckpt_path={ckpt}",
    ]
    assert train(compose_run(tmp_path / "run", run))["steps"] == 3


def test_model_n_bits_names_data_n_bits() -> None:
    """The model is built for the data's bit depth: a saved command or config that sets
    ``model.n_bits`` stops with one line naming ``data.n_bits``."""
    message = r"model\.n_bits is no longer an option.*set data\.n_bits=5 instead"
    with pytest.raises(SystemExit, match=message):
        guard_command_line("glowlab-train", CONFIG_DIR, "train", ["model.n_bits=5"])
    with pytest.raises(ValueError, match=message):
        check_model_config({"_target_": "glowlab.models.glow", "n_bits": 5})
