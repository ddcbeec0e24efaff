import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowctl import InvalidArgumentError, UnknownNameError
from flowctl.schedules import (
    CosineSchedule,
    LinearSchedule,
    SigmoidSchedule,
    StepSchedule,
    adaptive_sigmoid,
    make_schedule,
)

lengths = st.floats(0.5, 50.0)
schedules = st.one_of(
    st.just(StepSchedule()),
    lengths.map(LinearSchedule),
    lengths.map(CosineSchedule),
    st.builds(SigmoidSchedule, lengths, steepness=st.floats(0.1, 40.0)),
    st.floats(-1.0, 1.0).map(adaptive_sigmoid),
)
positions = st.floats(-100.0, 100.0)


@given(schedules, positions, positions)
def test_schedules_are_monotone_and_in_unit_interval(schedule, s1, s2):
    lo, hi = sorted((s1, s2))
    a_lo, a_hi = schedule(lo), schedule(hi)
    assert 0.0 <= a_lo <= a_hi <= 1.0


@given(schedules, st.floats(0.0, 100.0))
def test_schedules_start_at_zero_and_reach_one_at_their_end(schedule, after):
    assert schedule(-1e-9) == 0.0
    assert schedule(-5.0) == 0.0
    if schedule.length > 0:
        assert schedule(0.0) == 0.0
    assert schedule(schedule.end) == 1.0
    assert schedule(schedule.end + after) == 1.0
    assert schedule.end == schedule.length


def test_step_is_the_direct_switch():
    step = StepSchedule()
    assert step(-0.5) == 0.0 and step(0.0) == 1.0 and step.end == 0.0


def test_shapes_at_midpoint():
    assert LinearSchedule(4)(1.0) == 0.25
    assert CosineSchedule(4)(2.0) == pytest.approx(0.5)
    assert SigmoidSchedule(6)(3.0) == pytest.approx(0.5)


def test_sigmoid_is_the_seeds_logistic_rescaled():
    k, length = 10.0, 5
    raw = lambda p: 1 / (1 + math.exp(-k * (p - 0.5)))  # noqa: E731  the seed's formula
    for i in range(1, length):
        p = i / length
        expected = (raw(p) - raw(0)) / (raw(1) - raw(0))
        assert SigmoidSchedule(length, steepness=k)(i) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("similarity, steps", [(0.99, 3), (0.951, 3), (0.95, 5), (0.93, 5), (0.90, 8), (0.5, 8), (-1.0, 8)])
def test_adaptive_buckets(similarity, steps):
    schedule = adaptive_sigmoid(similarity)
    assert schedule.length == steps and schedule.steepness == 10.0


def test_make_schedule_by_name():
    assert make_schedule("linear", 5) == LinearSchedule(5)
    assert make_schedule("adaptive", 0.97) == SigmoidSchedule(3)
    assert make_schedule("step") == StepSchedule()
    with pytest.raises(UnknownNameError) as err:
        make_schedule("sigmoidal", 5)
    assert err.value.argument == "name" and "linear" in str(err.value)


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda: LinearSchedule(0), "length"),
        (lambda: CosineSchedule(-2), "length"),
        (lambda: LinearSchedule(float("nan")), "length"),
        (lambda: SigmoidSchedule(5, steepness=0), "steepness"),
        (lambda: StepSchedule(3), "length"),
        (lambda: adaptive_sigmoid(1.5), "similarity"),
        (lambda: adaptive_sigmoid(float("nan")), "similarity"),
    ],
)
def test_bad_schedule_arguments(build, argument):
    with pytest.raises(InvalidArgumentError) as err:
        build()
    assert err.value.argument == argument
