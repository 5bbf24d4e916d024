"""What the apps print: Hydra's composition errors as one line with the closest key or option,
errors once, no third-party noise, a progress bar without "Epoch 10/-2", and progress lines
off a terminal."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
from rich.console import Console

from glowlab.cli import run_cli
from glowlab.conf import CONFIG_DIR
from glowlab.console import ProgressBar, quiet_third_party
from glowlab.migration import guard_command_line
from glowlab.tools.progress import track
from tests.conftest import compose_run

TINY = [
    "data=synthetic",
    "data.image_size=8",
    "data.batch_size=16",
    "data.train_subset=48",  # 3 batches: the epoch (and its validation) ends at the last step
    "model.depth=1",
    "model.conditioner.hidden=8",
    "module.init_batch_size=32",
    "module.scheduler.warmup_steps=1",
    "trainer.max_steps=3",
    "trainer.log_every_n_steps=1",
    "logger=csv",
]
NOISE = (
    "GPU available",
    "TPU available",
    "HPU available",
    "litlogger",
    "Seed set to",
    "_pytree",
    "LeafSpec",
    "to estimate number of stepping batches",
    "warnings.warn(",
)


def _guard(prog: str, config_name: str, argv: list[str]) -> str:
    """The one line ``guard_command_line`` exits with."""
    with pytest.raises(SystemExit) as info:
        guard_command_line(prog, CONFIG_DIR, config_name, argv)
    message = str(info.value.code)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["model.dpth=4"],
            "glowlab-train: error: model.dpth is not an option of model (glow_small); "
            "did you mean model.depth? (options: ",
        ),
        (
            ["model.conditioner.hiden=8"],
            "model.conditioner.hiden is not an option of model.conditioner (glow); "
            "did you mean model.conditioner.hidden?",
        ),
        (["seeed=1"], "seeed is not an option of train; did you mean seed?"),
        (["model=glw"], "model=glw is not an option of model; did you mean model=glow?"),
        (
            ["model/transform=splin"],
            "model/transform=splin is not an option of model/transform; did you mean "
            "model/transform=spline? (options: additive, affine, affine_centred, affine_tanh, "
            "mixture, spline)",
        ),
        (
            ["experiment=fmnist_glw_cpu"],
            "did you mean experiment=fmnist_glow_cpu or experiment=fmnist_glow_gpu?",
        ),
        (["+model.depth=3"], "model.depth is already an option; set it without the +"),
        (["~model.foo"], "~model.foo is not an option of model (glow_small)"),
        (["optimizer=adm"], "optimizer@module.optimizer=<option> (options: adam, adamax"),
        (["model.depth=[1,"], "cannot read an override: no viable alternative"),
        (["model.depth=1,2"], "add -m to sweep over it"),
        (
            ["-m", "model.depth=1,2", "model=glow_small,glw"],
            "glowlab-train: error: job #1 (model.depth=1 model=glw): model=glw is not an option",
        ),
    ],
)
def test_hydra_composition_errors_are_one_line_with_the_closest_valid_name(
    argv: list[str], expected: str
) -> None:
    assert expected in _guard("glowlab-train", "train", argv)


def test_every_app_gets_the_same_one_line_answers() -> None:
    for prog, config_name, argv, expected in [
        ("glowlab-sample", "sample", ["ckpt=x", "nn=4"], "nn is not an option of sample"),
        ("glowlab-eval", "eval", ["ckpt=x", "spilt=test"], "did you mean split?"),
        ("glowlab-score", "score", ["ckpt=x", "imags=a"], "imags is not an option of score"),
        ("glowlab-interpolate", "interpolate", ["ckpt=x", "stepz=3"], "did you mean steps?"),
        ("glowlab-manipulate", "manipulate", ["ckpt=x", "alfas=[1]"], "did you mean alphas?"),
    ]:
        message = _guard(prog, config_name, argv)
        assert message.startswith(f"{prog}: error: ") and expected in message, message
        assert "model" not in message.split("options:")[1]  # only the app's own options


def test_valid_command_lines_and_other_hydra_flags_pass_the_guard() -> None:
    guard_command_line("glowlab-train", CONFIG_DIR, "train", ["model.depth=3", "seed=1"])
    guard_command_line("glowlab-train", CONFIG_DIR, "train", ["-m", "model.depth=1,2"])
    leave_to_hydra = ["--config-dir", "/elsewhere", "model.dpth=1"]  # another config
    guard_command_line("glowlab-train", CONFIG_DIR, "train", leave_to_hydra)
    printing = _guard("glowlab-train", "train", ["--cfg", "job", "model.dpth=1"])
    assert "model.dpth is not an option of model" in printing


def test_a_plus_key_the_target_does_not_take_names_the_closest_parameter(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    def build(cfg) -> None:
        instantiate(cfg.model, image_shape=[1, 8, 8], n_bits=8)

    cfg = compose_run(tmp_path, ["+model.dpth=4"])  # the recipe names its own and shared options
    with pytest.raises(SystemExit) as info:
        run_cli("glowlab-train", build, cfg)
    message = str(info.value.code)
    assert message.startswith("glowlab-train: error: glow() has no option 'dpth' (did you mean")
    assert "'depth'?); its own options are levels, depth" in message
    assert "wrong type" not in message and "\n" not in message


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "glowlab.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_a_training_run_prints_no_noise_and_logs_its_summary(tmp_path: Path) -> None:
    done = _run([*TINY, f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    for noise in NOISE:
        assert noise not in printed, noise
    assert done.stdout.count("glowlab: val/bpd") == 1 and "| steps 3 |" in done.stdout
    assert done.stdout.count(f"glowlab: run dir {tmp_path}/run") == 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert "[glowlab.train][INFO] - glowlab: val/bpd" in log
    assert "Seed set to" not in log


def test_an_error_is_printed_once_and_logged(tmp_path: Path) -> None:
    done = _run([*TINY, "data.n_bits=9", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert done.returncode == 1
    printed = done.stdout + done.stderr
    assert printed.count("n_bits") == 1, printed
    assert "glowlab-train: error: data.n_bits=9" in done.stderr
    assert "glowlab-train: error: data.n_bits=9" in (tmp_path / "run" / "train.log").read_text()


def test_the_progress_bar_has_no_negative_epoch_count() -> None:
    def description(max_epochs: int, epoch: int) -> str:
        bar = ProgressBar()
        trainer = L.Trainer(max_epochs=max_epochs, max_steps=100, callbacks=[bar], logger=False)
        bar.setup(trainer, None, "fit")
        return bar._get_train_description(epoch).strip()

    assert description(-1, 10) == "Epoch 10"
    assert description(5, 3) == "Epoch 3/4"


def test_noise_filters_drop_only_the_listed_lines(caplog: pytest.LogCaptureFixture) -> None:
    quiet_third_party()
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO):
        rank_zero.info("GPU available: False, used: False")
        rank_zero.info("`Trainer.fit` stopped: `max_steps=3` reached.")
        rank_zero.info("Restoring states from the checkpoint path at /x/last.ckpt")
        rank_zero.info("Trainer will use only 1 of 2 GPUs because it is running inside an IDE")
        logging.getLogger("lightning.fabric.utilities.seed").info("Seed set to 0")
    assert [r.getMessage() for r in caplog.records] == [
        "Trainer will use only 1 of 2 GPUs because it is running inside an IDE"
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_third_party()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, 1)
        warnings.warn("a real deprecation of your option", FutureWarning, 1)
    assert [str(w.message) for w in caught] == ["a real deprecation of your option"]
    line = warnings.formatwarning("careful", UserWarning, __file__, 1, "source line")
    assert line == f"{__file__}:1: UserWarning: careful\n"


def test_progress_lines_when_stderr_is_not_a_terminal() -> None:
    def slow(n: int):
        for i in range(n):
            time.sleep(0.03)
            yield i

    pipe = Console(file=io.StringIO(), force_terminal=False)
    assert list(track(slow(6), "sampling T=1", True, total=6, console=pipe, every_s=0.05)) == [
        *range(6)
    ]
    lines = pipe.file.getvalue().splitlines()
    assert len(lines) >= 2 and lines[-1].startswith("sampling T=1: 6/6 (100%) | 0:00:00 elapsed")
    assert all(line.startswith("sampling T=1: ") and "left" in line for line in lines)
    quiet = Console(file=io.StringIO(), force_terminal=False)
    assert list(track(slow(3), "x", False, total=3, console=quiet, every_s=0.0)) == [0, 1, 2]
    assert quiet.file.getvalue() == ""  # progress=false prints nothing
    fast = Console(file=io.StringIO(), force_terminal=False)
    assert list(track(range(3), "x", True, console=fast)) == [0, 1, 2]
    assert fast.file.getvalue() == ""  # a short loop prints no line
