"""Units at the edge: hand examples, round trips, refusals, and the unit a column's values
give away."""

from __future__ import annotations

import numpy as np
import pytest

from brewcast import units


def test_hand_examples():
    assert units.sg_to_plato(1.048) == pytest.approx(11.9, abs=0.05)  # DOMAIN.md
    assert units.sg_to_plato(1.000) == pytest.approx(0.0, abs=0.01)
    assert units.to_canonical([68.0], "°F", "temperature", "t")[0] == pytest.approx(20.0)
    assert units.to_canonical([32.0], "degF", "temperature", "t")[0] == pytest.approx(0.0)
    assert units.to_canonical([293.15], "K", "temperature", "t")[0] == pytest.approx(20.0)
    assert units.to_canonical([12.0], "Plato", "gravity", "g")[0] == 12.0
    assert units.to_canonical([12.48], "Brix", "gravity", "g", brix_correction=1.04)[
        0
    ] == pytest.approx(12.0)


def test_round_trips():
    sg = np.linspace(0.990, 1.120, 27)
    assert np.allclose(units.plato_to_sg(units.sg_to_plato(sg)), sg, atol=1e-9)
    celsius = np.linspace(-2.0, 40.0, 43)
    for unit in ("°F", "K", "°C"):
        back = units.to_canonical(
            units.from_canonical(celsius, unit, "temperature"), unit, "temperature", "t"
        )
        assert np.allclose(back, celsius)
    plato = np.linspace(0.0, 30.0, 31)
    back = units.to_canonical(units.from_canonical(plato, "SG", "gravity"), "SG", "gravity", "g")
    assert np.allclose(back, plato, atol=1e-6)


@pytest.mark.parametrize("spelling", ["°F", "F", "degF", "Fahrenheit", " f ", "ºF"])
def test_spellings_of_fahrenheit(spelling):
    assert units.parse_unit(spelling, "temperature", "tag") == "°F"


def test_refusals_name_the_place_and_the_unit():
    with pytest.raises(units.UnitError, match=r"FV01_Temp: unknown temperature unit 'furlong'"):
        units.parse_unit("furlong", "temperature", "FV01_Temp")
    with pytest.raises(units.UnitError, match="no unit given"):
        units.parse_unit(None, "gravity", "FV01_Plato")
    with pytest.raises(units.UnitError, match="is a temperature unit, not a gravity unit"):
        units.parse_unit("°F", "gravity", "FV01_Plato")
    with pytest.raises(units.UnitError, match="wort-correction factor"):
        units.to_canonical([12.0], "Brix", "gravity", "FV01_Brix")


def test_likely_unit_names_the_unit_values_were_recorded_in():
    assert units.likely_unit(np.array([1.050, 1.030, 1.012, 1.010]), "°P") == "SG"
    assert units.likely_unit(np.array([12.0, 8.0, 3.1]), "°P") is None
    # a dry finish in °P (a mead at 0.03 °P) is not specific gravity: its history starts high
    assert units.likely_unit(np.array([20.2, 9.0, 0.5, 0.03]), "°P") is None
    assert units.likely_unit(np.array([12.0, 8.0]), "SG") == "°P"
    assert units.likely_unit(np.array([50.0, 64.0, 68.0]), "°C") == "°F"
    assert units.likely_unit(np.array([18.0, 20.0, 1.0]), "°C") is None
    assert units.likely_unit(np.array([18.0, 19.0]), "°F") == "°C"
    assert units.likely_unit(np.array([np.nan]), "°C") is None
