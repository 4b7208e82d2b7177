"""The mask-ratio schedules against the formulas and reference values of the paper's code."""

import pytest

from modeling_lmd import MASK_SCHEDULES, mask_ratio_at


TOTAL = 3000  # 2T/3 = 2000 = Tc, T/6 = 500, T/3 = 1000


@pytest.mark.parametrize(
    "fraction, expected",
    [(0.0, 0.150), (0.1, 0.167), (0.25, 0.242), (0.5, 0.454), (0.75, 0.663), (0.9, 0.736), (1.0, 0.750)],
)
def test_cosine_matches_reference_table(fraction, expected):
    cosine_end = int(2 * TOTAL / 3)
    assert round(mask_ratio_at("cosine", round(fraction * cosine_end), TOTAL), 3) == expected


def test_uniform_hits_its_knots():
    assert mask_ratio_at("uniform", 0, TOTAL) == pytest.approx(0.15)
    assert mask_ratio_at("uniform", 1000, TOTAL) == pytest.approx(0.45)
    assert mask_ratio_at("uniform", 2000, TOTAL) == pytest.approx(0.75)


def test_piecewise_hits_its_knots_and_measures_the_third_piece_from_t_over_3():
    assert mask_ratio_at("piecewise", 0, TOTAL) == pytest.approx(0.15)
    assert mask_ratio_at("piecewise", 250, TOTAL) == pytest.approx(0.275)
    assert mask_ratio_at("piecewise", 500, TOTAL) == pytest.approx(0.40)
    assert mask_ratio_at("piecewise", 999, TOTAL) == pytest.approx(0.40)
    assert mask_ratio_at("piecewise", 1000, TOTAL) == pytest.approx(0.40)  # no jump at T/3
    assert mask_ratio_at("piecewise", 1500, TOTAL) == pytest.approx(0.575)
    assert mask_ratio_at("piecewise", 2000, TOTAL) == pytest.approx(0.75)


def test_constant_is_the_mae_ratio():
    assert {mask_ratio_at("constant", step, TOTAL) for step in range(0, TOTAL + 1, 100)} == {0.75}


@pytest.mark.parametrize("schedule", MASK_SCHEDULES)
@pytest.mark.parametrize("total", [1, 2, 7, 100, TOTAL])
def test_every_schedule_is_non_decreasing_bounded_and_ends_at_the_end_ratio(schedule, total):
    values = [mask_ratio_at(schedule, step, total) for step in range(total + 5)]
    assert all(later >= earlier - 1e-12 for earlier, later in zip(values, values[1:]))
    assert all(0.15 - 1e-12 <= value <= 0.75 + 1e-12 for value in values)
    for step in range(total + 5):
        if step >= 2 * total / 3:
            assert mask_ratio_at(schedule, step, total) == pytest.approx(0.75)


def test_custom_start_and_end_are_respected():
    assert mask_ratio_at("uniform", 0, 30, start=0.3, end=0.9) == pytest.approx(0.3)
    assert mask_ratio_at("cosine", 20, 30, start=0.3, end=0.9) == pytest.approx(0.9)
    assert mask_ratio_at("piecewise", 5, 30, start=0.3, end=0.9) == pytest.approx(0.3 + 0.6 * 5 / 12)


def test_deterministic():
    assert [mask_ratio_at("cosine", s, 77) for s in range(77)] == [mask_ratio_at("cosine", s, 77) for s in range(77)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"schedule": "linear", "step": 0, "total_steps": 10}, "uniform, piecewise, cosine, constant"),
        ({"schedule": "cosine", "step": -1, "total_steps": 10}, "step"),
        ({"schedule": "cosine", "step": 0, "total_steps": 0}, "total_steps"),
        ({"schedule": "cosine", "step": 0, "total_steps": 10, "start": 0.8, "end": 0.5}, "start"),
        ({"schedule": "cosine", "step": 0, "total_steps": 10, "end": 1.0}, "end"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mask_ratio_at(**kwargs)
