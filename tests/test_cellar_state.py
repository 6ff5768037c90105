"""What the cellar should do: a probe's decision is its ready call; a hand log's decision
asks for a gravity reading first, and a reading that agrees with one a day earlier makes it
ready (brewcast.plateau.cellar_state)."""

from __future__ import annotations

import numpy as np

from brewcast.plateau import PlateauRule, cellar_state

RULE = PlateauRule(tolerance_plato=0.3, window_hours=48.0, confirm_hours=20.0)


def test_a_probe_is_ready_on_the_decision():
    hours = np.arange(0.0, 100.0, 0.25)
    gravity = np.linspace(12.0, 2.5, hours.size)
    assert cellar_state(hours, gravity, False, RULE)[0] == "fermenting"
    assert cellar_state(hours, gravity, True, RULE)[0] == "ready"


def test_a_hand_log_asks_for_a_reading_then_is_ready_when_it_agrees():
    hours = np.array([0.0, 24.0, 48.0, 72.0, 96.0])
    gravity = np.array([12.0, 9.0, 5.0, 3.4, 2.9])  # still 0.5 °P down in the last day
    state, detail = cellar_state(hours, gravity, True, RULE)
    assert state == "take a reading"
    assert "2.6 °P or above confirms" in detail and "2.9 °P" in detail
    agreeing = cellar_state([*hours, 120.0], [*gravity, 2.8], True, RULE)
    assert agreeing[0] == "ready" and "within 0.3 °P of 2.9 °P read 24 h before" in agreeing[1]
    still_falling = cellar_state([*hours, 120.0], [*gravity, 2.4], True, RULE)
    assert still_falling[0] == "take a reading"
    # two readings the same morning do not confirm each other: a day apart is the rule
    same_day = cellar_state([*hours, 100.0], [*gravity, 2.9], True, RULE)
    assert same_day[0] == "take a reading"
    assert cellar_state(hours, gravity, False, RULE)[0] == "fermenting"


def test_readings_no_fermentation_could_make_confirm_nothing():
    """A probe whose last readings fall 12.7 °P a day (out of the liquid, moved) is not
    ready on the model's decision: the cellar is asked for a reading; a plausible slope, or
    none known, leaves the decision as it was."""
    hours = np.arange(0.0, 100.0, 0.25)
    gravity = np.linspace(12.0, 2.5, hours.size)
    state, detail = cellar_state(hours, gravity, True, RULE, slope_per_day=-12.7)
    assert state == "take a reading" and "fall 12.7 °P a day" in detail
    assert cellar_state(hours, gravity, True, RULE, slope_per_day=3.0)[0] == "take a reading"
    for plausible in (-9.9, 0.0, 1.9, None, float("nan")):
        assert cellar_state(hours, gravity, True, RULE, slope_per_day=plausible)[0] == "ready"
    assert cellar_state(hours, gravity, False, RULE, slope_per_day=-12.7)[0] == "fermenting"


def test_a_hand_log_is_asked_for_a_reading_once_the_finish_is_likely():
    """A hand log's prompt has its own, lower threshold (a reading is cheap): where the
    model says likely but not decided, the cellar is asked for a reading, and a reading that
    agrees with one a day earlier makes it ready; a device still waits for the decision."""
    hours = np.array([0.0, 24.0, 48.0, 72.0, 96.0])
    gravity = np.array([12.0, 9.0, 5.0, 3.4, 2.9])
    state, detail = cellar_state(hours, gravity, False, RULE, likely=True)
    assert state == "take a reading" and "2.6 °P or above confirms" in detail
    agreeing = cellar_state([*hours, 120.0], [*gravity, 2.8], False, RULE, likely=True)
    assert agreeing[0] == "ready"
    assert cellar_state(hours, gravity, False, RULE, likely=False)[0] == "fermenting"
    probe = np.arange(0.0, 100.0, 0.25)
    curve = np.linspace(12.0, 2.5, probe.size)
    assert cellar_state(probe, curve, False, RULE, likely=True)[0] == "fermenting"
