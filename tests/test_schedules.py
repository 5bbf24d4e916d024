"""The learning-rate schedules' factors at the warm-up, the middle and the end of a run."""

from __future__ import annotations

import math

import pytest
import torch

from glowlab.training.schedules import warmup_constant, warmup_cosine, warmup_linear


def _factors(build, total: int = 100, **kwargs) -> list[float]:
    """The schedule's learning rate ÷ the peak at steps ``0 … total``."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = build(optimizer, total_steps=total, **kwargs)
    return [schedule.lr_lambdas[0](step) for step in range(total + 1)]


def test_linear_decay_goes_straight_to_the_final_fraction() -> None:
    f = _factors(warmup_linear, warmup_steps=10, final_fraction=0.1)
    assert f[0] == pytest.approx(0.1 * (0.1 + 0.9 * 1.0))  # warm-up: (step + 1) / 10
    assert f[9] == pytest.approx(0.1 + 0.9 * 0.91)  # warm-up done at step 9
    assert f[50] == pytest.approx(0.1 + 0.9 * 0.5)  # half way: half the decay
    assert f[100] == pytest.approx(0.1)
    decay = [b - a for a, b in zip(f[10:], f[11:], strict=False)]
    assert decay == pytest.approx([-0.009] * len(decay))  # a straight line


def test_cosine_decay_and_constant_warm_up() -> None:
    f = _factors(warmup_cosine, warmup_steps=0)
    assert f[0] == 1.0 and f[100] == pytest.approx(0.0, abs=1e-12)
    assert f[25] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert _factors(warmup_constant, warmup_steps=4)[:6] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_a_schedule_is_chosen_by_its_config_group(tmp_path) -> None:
    from hydra.utils import instantiate

    from tests.conftest import compose_run

    cfg = compose_run(tmp_path, ["scheduler@module.scheduler=warmup_linear"])
    f = _factors(instantiate(cfg.module.scheduler), total=1000)
    assert f[600] == pytest.approx(0.4)  # linear: 1 − 600/1000 after the 200 warm-up steps


def test_following_the_clock_moves_the_schedule_to_the_budget_spent() -> None:
    from glowlab.training.schedules import follow_the_clock

    spent = [0.0]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_linear(optimizer, total_steps=100, warmup_steps=0)
    follow_the_clock(schedule, 100, lambda: spent[0])
    factor = schedule.lr_lambdas[0]
    assert factor(30) == pytest.approx(0.7)  # ahead of the clock: the steps lead
    spent[0] = 0.5
    assert factor(30) == pytest.approx(0.5)  # behind it: half the budget, half the schedule
    spent[0] = 1.2
    assert factor(30) == 0.0  # past the budget: the schedule's end
