"""Units at the edge: every source says which unit a value is in, ingest converts it, and the
lake holds only the canonical units (°P for gravity, °C for temperature).

Temperatures go through pint (offset units are its job); gravity has no SI unit, so the
specific-gravity and Brix conversions are the brewing formulas of ``DOMAIN.md``. A unit
this module does not know is an error naming the spelling and the accepted ones, never a
guess; :func:`likely_unit` says when values only make sense in another unit.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np

Quantity = Literal["gravity", "temperature"]

#: The lake's unit per quantity.
CANONICAL: dict[str, str] = {"gravity": "°P", "temperature": "°C"}

#: Which quantity each canonical reading tag and batch column holds.
QUANTITY_OF: dict[str, Quantity] = {
    "gravity_plato": "gravity",
    "temperature_c": "temperature",
    "original_gravity_plato": "gravity",
    "pitch_temperature_c": "temperature",
    "ambient_temperature_c": "temperature",
}

#: Accepted spellings (case-insensitive, spaces ignored) -> unit name.
_SPELLINGS: dict[str, tuple[Quantity, str]] = {
    **dict.fromkeys(("°c", "c", "degc", "celsius", "degreescelsius", "ºc"), ("temperature", "°C")),
    **dict.fromkeys(
        ("°f", "f", "degf", "fahrenheit", "degreesfahrenheit", "ºf"), ("temperature", "°F")
    ),
    **dict.fromkeys(("k", "kelvin", "degk", "°k"), ("temperature", "K")),
    **dict.fromkeys(
        ("°p", "p", "plato", "degp", "degreesplato", "ºp", "°plato"), ("gravity", "°P")
    ),
    # "G": GravityMon's and Brewfather's gravity-unit for specific gravity
    **dict.fromkeys(("sg", "specificgravity", "s.g.", "g"), ("gravity", "SG")),
    **dict.fromkeys(("brix", "°bx", "bx", "°brix", "degreesbrix"), ("gravity", "°Bx")),
}
_PINT_NAMES = {"°C": "degC", "°F": "degF", "K": "kelvin"}


class UnitError(ValueError):
    """A unit is unknown, missing, or cannot be converted; the message says which and why."""


def parse_unit(text: str | None, quantity: Quantity, where: str) -> str:
    """The unit ``text`` names, checked to measure ``quantity``; ``where`` names the column or
    tag in the error."""
    if text is None or not str(text).strip():
        raise UnitError(
            f"{where}: no unit given for {quantity}; declare one of {accepted(quantity)}"
        )
    key = str(text).strip().lower().replace(" ", "")
    found = _SPELLINGS.get(key)
    if found is None:
        raise UnitError(
            f"{where}: unknown {quantity} unit {text!r}; accepted: {accepted(quantity)}"
        )
    if found[0] != quantity:
        raise UnitError(f"{where}: {text!r} is a {found[0]} unit, not a {quantity} unit")
    return found[1]


def accepted(quantity: Quantity) -> list[str]:
    return sorted({unit for q, unit in _SPELLINGS.values() if q == quantity})


def sg_to_plato(sg: np.ndarray | float) -> np.ndarray:
    """Specific gravity (20/20 °C) to °P: the standard cubic (ASBC)."""
    s = np.asarray(sg, dtype="float64")
    return -616.868 + 1111.14 * s - 630.272 * s**2 + 135.997 * s**3


def plato_to_sg(plato: np.ndarray | float) -> np.ndarray:
    """°P to specific gravity: the cubic of :func:`sg_to_plato` inverted by Newton steps
    (monotonic on 0.98..1.20, so a few steps from the textbook approximation converge)."""
    p = np.asarray(plato, dtype="float64")
    s = 1.0 + p / (258.6 - (p / 258.2) * 227.1)
    for _ in range(6):
        slope = 1111.14 - 2 * 630.272 * s + 3 * 135.997 * s**2
        s = s - (sg_to_plato(s) - p) / slope
    return s


@lru_cache(maxsize=1)
def _registry():
    import pint

    return pint.UnitRegistry()


def to_canonical(
    values: np.ndarray,
    unit: str,
    quantity: Quantity,
    where: str,
    brix_correction: float | None = None,
) -> np.ndarray:
    """``values`` in ``unit`` (a spelling :func:`parse_unit` accepts) as the canonical unit.

    Brix is refractometer sugar: converted only with the user's wort-correction factor
    (°P = °Bx / factor), and only before alcohol is present, which the user vouches for.
    """
    name = parse_unit(unit, quantity, where)
    v = np.asarray(values, dtype="float64")
    if name == CANONICAL[quantity]:
        return v
    if name == "SG":
        return sg_to_plato(v)
    if name == "°Bx":
        if not brix_correction:
            raise UnitError(
                f"{where}: Brix needs the refractometer's wort-correction factor "
                f"(BREWCAST_BRIX_WORT_CORRECTION, typically 1.02-1.06); refused without it"
            )
        return v / brix_correction
    ureg = _registry()
    return ureg.Quantity(v, _PINT_NAMES[name]).to("degC").magnitude


def from_canonical(values: np.ndarray, unit: str, quantity: Quantity) -> np.ndarray:
    """The canonical ``values`` in ``unit``: how a brewery in that unit would record them."""
    name = parse_unit(unit, quantity, "from_canonical")
    v = np.asarray(values, dtype="float64")
    if name == CANONICAL[quantity]:
        return v
    if name == "SG":
        return plato_to_sg(v)
    if name == "°Bx":
        raise UnitError("Brix is an input unit only (it needs a correction factor)")
    ureg = _registry()
    return ureg.Quantity(v, "degC").to(_PINT_NAMES[name]).magnitude


#: Every specific gravity a hydrometer reads lies here: a °P history that never leaves it
#: was sent in SG.
SG_SPAN = (0.985, 1.13)


def likely_unit(values: np.ndarray, unit: str) -> str | None:
    """The unit ``values`` were more likely recorded in, when they make no sense in ``unit``
    (``None`` when they do, or when no other unit fits): SG values near 1.0 in a °P column,
    °F temperatures in a °C one. Meant for a whole batch's or file's values, so one odd
    reading is left to the range checks.

    Gravity in °P is judged by its maximum: a fermentation starts at 6 °P or more, so a
    history that never leaves 0.985..1.13 is specific gravity (a batch seen only in its
    last, driest days can look the same: judge a batch's whole history where it is known).
    Temperature is judged by its median: a cellar is -2..40 °C, and 41..95 in a °C column
    is a Fahrenheit reading; under 36 in a °F column is Celsius.
    """
    name = _SPELLINGS.get(unit.strip().lower().replace(" ", ""), (None, unit))[1]
    v = np.asarray(values, dtype="float64")
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    median = float(np.median(v))
    if name == "°P":
        return "SG" if v.min() >= SG_SPAN[0] and v.max() <= SG_SPAN[1] else None
    if name == "SG":
        return "°P" if 1.5 <= median <= 30.0 else None
    if name == "°C":
        return "°F" if 40.0 < median <= 95.0 else None
    if name == "°F":
        return "°C" if -2.0 <= median < 36.0 else None
    return None
