"""A seeded fermentation simulator that produces brewcast's raw tables.

Gravity follows the four-parameter logistic of DOMAIN.md,
``P(t) = Pe + (P0 - Pe) / (1 + exp(B (t - M)))`` with ``Pe = P0 (1 - AA)``: the strain
sets the apparent attenuation AA; under-pitching and low oxygen delay the midpoint M;
warmth shortens M and steepens B. Fermenters with little cooling capacity run warm while
fermentation is vigorous, so they finish sooner. Yeast generation is drawn but has no
effect (a check that a model does not lean on noise). Gravity is sampled by hand a few
times a day with noise and gaps; temperature is logged on a finer cadence. A small share
of batches gets stuck, and a small share of records is corrupted (typos, impossible
values, missing fields) so validation has something to catch. A :class:`Drift` slows one
slice from a date on, for the monitoring demo.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from rich.progress import Progress

from brewcast.schema import BATCHES, BRANDS, FERMENTERS, READINGS


@dataclass(frozen=True)
class Strain:
    attenuation: tuple[float, float]  # apparent attenuation range (DOMAIN.md: ~0.63-0.80)
    midpoint_hours: float  # M at the reference temperature and nominal pitch
    slope_per_hour: float  # B at the reference temperature
    reference_temperature_c: float


@dataclass(frozen=True)
class Recipe:
    lager: bool
    original_gravity: tuple[float, float]
    strains: tuple[str, ...]
    set_temperature_c: float


STRAINS: dict[str, Strain] = {
    "american_ale": Strain((0.73, 0.80), 42.0, 0.085, 19.0),
    "english_ale": Strain((0.63, 0.70), 40.0, 0.090, 18.5),
    "german_lager": Strain((0.70, 0.77), 88.0, 0.045, 11.0),
    "bavarian_wheat": Strain((0.70, 0.77), 36.0, 0.095, 20.0),
    "belgian_saison": Strain((0.76, 0.80), 46.0, 0.075, 23.0),
}

RECIPES: dict[str, Recipe] = {
    "harbour_pale_ale": Recipe(False, (11.5, 13.0), ("american_ale", "english_ale"), 19.0),
    "hop_hazard_ipa": Recipe(False, (14.0, 16.5), ("american_ale",), 19.5),
    "old_anchor_stout": Recipe(False, (15.0, 18.0), ("english_ale",), 18.5),
    "golden_pilsner": Recipe(True, (11.0, 12.5), ("german_lager",), 11.0),
    "munich_helles": Recipe(True, (11.0, 12.5), ("german_lager",), 10.5),
    "wheat_wave_hefeweizen": Recipe(False, (11.5, 13.5), ("bavarian_wheat",), 20.0),
    "red_rail_amber_lager": Recipe(True, (12.0, 14.0), ("german_lager",), 11.5),
    "farmhouse_saison": Recipe(False, (13.0, 15.5), ("belgian_saison",), 23.0),
}

#: Relative cooling capacity per fermenter: 1.0 holds set point, lower ones run warm.
COOLING_CAPACITY: dict[str, float] = dict(
    zip(FERMENTERS, (1.0, 1.0, 0.9, 0.8, 0.55, 1.0, 0.7, 0.5, 0.9, 1.0, 0.8, 0.65), strict=True)
)

NOMINAL_PITCH_RATE = {False: 0.75, True: 1.5}  # 10^6 cells/mL/°P, ale vs lager
GRAVITY_SAMPLE_HOURS = (8.0, 14.0, 20.0)  # cellar rounds; each may be skipped


@dataclass(frozen=True)
class Drift:
    """From ``start`` on, batches whose ``column`` equals ``value`` ferment slower.

    Two knobs. ``late_slope_factor`` is a *sluggish finish* (tired or flocculent yeast): the
    curve is unchanged up to its midpoint, then falls at ``factor * B``. Nothing observable
    at the midpoint tells it apart from a healthy batch, and a slowing slope even looks like
    an approaching plateau, so a model's hours remaining come out short: monitoring has to
    find it from the labels. ``midpoint_shift_hours`` delays the whole curve (a late start),
    which the gravity seen so far reveals to a model.
    """

    column: str
    value: str
    start: pd.Timestamp
    late_slope_factor: float = 0.5
    midpoint_shift_hours: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.late_slope_factor <= 1:
            raise ValueError(f"late_slope_factor must be in (0, 1], got {self.late_slope_factor}")


@dataclass(frozen=True)
class SimulationConfig:
    start: pd.Timestamp = field(default_factory=lambda: pd.Timestamp("2026-01-01", tz="UTC"))
    days: float = 120.0
    fermenters: int = 8
    seed: int = 42
    temperature_every_minutes: float = 30.0
    gravity_skip_probability: float = 0.15
    gravity_noise_plato: float = 0.08
    temperature_noise_c: float = 0.15
    stuck_probability: float = 0.03
    bad_reading_rate: float = 0.004
    bad_batch_rate: float = 0.02
    terminal_tolerance_plato: float = 0.3
    drift: Drift | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.fermenters <= len(FERMENTERS):
            raise ValueError(f"fermenters must be 1..{len(FERMENTERS)}, got {self.fermenters}")
        if self.days <= 0:
            raise ValueError("days must be positive")
        if self.drift is not None and self.drift.column not in (
            "brand",
            "yeast_strain",
            "fermenter",
        ):
            raise ValueError(
                f"drift column must be brand, yeast_strain or fermenter, not {self.drift.column!r}"
            )

    @property
    def end(self) -> pd.Timestamp:
        return self.start + pd.Timedelta(days=self.days)


@dataclass
class Simulation:
    """The simulated world: raw tables as ingest would see them, plus the hidden truth."""

    config: SimulationConfig
    batches: pd.DataFrame
    readings: pd.DataFrame
    truth: pd.DataFrame  # per batch: true parameters, finish time, stuck, drifted, corrupted


def _phase(t_hours: np.ndarray, slope: float, midpoint: float, late_slope: float) -> np.ndarray:
    """``B (t - M)``, with the slope ``late_slope`` after the midpoint (continuous at M)."""
    t = np.asarray(t_hours, dtype="float64") - midpoint
    return np.where(t < 0, slope * t, late_slope * t)


def logistic_gravity(
    t_hours: np.ndarray,
    p0: float,
    pe: float,
    slope: float,
    midpoint: float,
    late_slope: float | None = None,
) -> np.ndarray:
    """DOMAIN.md's four-parameter logistic gravity curve (optionally slower after M)."""
    phase = _phase(t_hours, slope, midpoint, slope if late_slope is None else late_slope)
    return pe + (p0 - pe) / (1.0 + np.exp(np.clip(phase, -60, 60)))


def hours_to_terminal(
    p0: float, pe: float, slope: float, midpoint: float, tolerance: float
) -> float:
    """Hours after pitch when the curve comes within ``tolerance`` of its plateau ``pe``
    (``slope`` is the slope after the midpoint, where the plateau is approached)."""
    drop = p0 - pe
    if drop <= tolerance:
        return 0.0
    return midpoint + np.log(drop / tolerance - 1.0) / slope


def simulate(config: SimulationConfig | None = None, progress: bool = False) -> Simulation:
    """Simulate every fermenter back to back from ``config.start`` for ``config.days``."""
    cfg = config or SimulationConfig()
    rng = np.random.default_rng(cfg.seed)
    world_start_h = 0.0
    world_end_h = cfg.days * 24.0

    batch_rows: list[dict] = []
    truth_rows: list[dict] = []
    reading_parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []  # (batch, tag,h,val)

    fermenters = FERMENTERS[: cfg.fermenters]
    # Stagger the first fills so fermenters do not all start at midnight on day one.
    next_start = {fv: world_start_h + rng.uniform(0, 48) for fv in fermenters}
    expected = int(cfg.fermenters * cfg.days / 11) + 1
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("simulating batches", total=expected)
        while True:
            fv = min(next_start, key=next_start.__getitem__)
            start_h = round(next_start[fv] * 60) / 60  # pitch on the minute
            if start_h >= world_end_h:
                break
            index = len(batch_rows)
            batch, truth, parts = _simulate_batch(cfg, rng, index, fv, start_h, world_end_h)
            batch_rows.append(batch)
            truth_rows.append(truth)
            reading_parts.append(parts)
            next_start[fv] = truth["end_hours"] + rng.uniform(12, 30)  # clean-in-place
            bar.advance(task)

    batches = _batches_frame(cfg, batch_rows)
    readings = _readings_frame(cfg, batches, reading_parts, rng)
    truth = pd.DataFrame(truth_rows)
    truth.insert(0, "batch_id", batches["batch_id"].to_numpy())
    truth["finish_time"] = _to_ts(cfg, truth.pop("finish_hours").to_numpy())
    truth["end_time"] = _to_ts(cfg, truth.pop("end_hours").to_numpy())
    return Simulation(cfg, batches, readings, truth)


def _simulate_batch(
    cfg: SimulationConfig,
    rng: np.random.Generator,
    index: int,
    fermenter: str,
    start_h: float,
    world_end_h: float,
) -> tuple[dict, dict, tuple]:
    brand = BRANDS[rng.integers(len(BRANDS))]
    recipe = RECIPES[brand]
    strain_name = recipe.strains[rng.integers(len(recipe.strains))]
    strain = STRAINS[strain_name]
    start_ts = cfg.start + pd.Timedelta(hours=start_h)

    og = rng.uniform(*recipe.original_gravity)
    attenuation = rng.uniform(*strain.attenuation)
    stuck = rng.random() < cfg.stuck_probability
    if stuck:  # the yeast gives up early: the plateau sits well above the strain's terminal
        attenuation *= rng.uniform(0.4, 0.7)
    pe = og * (1.0 - attenuation)

    day_of_year = start_ts.day_of_year
    ambient = 12.0 + 9.0 * np.sin(2 * np.pi * (day_of_year - 110) / 365.25) + rng.normal(0, 2.0)
    cooling = COOLING_CAPACITY[fermenter]
    set_temp = recipe.set_temperature_c
    # Vigorous fermentation releases heat; weak cooling (and a warm cellar) lets it overshoot.
    overshoot = (1.0 - cooling) * (5.0 + 0.15 * max(ambient - 10.0, 0.0))
    pitch_temp = set_temp - 1.0 + rng.normal(0, 0.7)
    nominal_rate = NOMINAL_PITCH_RATE[recipe.lager]
    pitch_rate = float(np.clip(nominal_rate * rng.lognormal(0, 0.25), 0.15, 2.9))
    oxygen = float(np.clip(rng.normal(9.0, 1.5), 4.0, 14.0))
    generation = float(rng.integers(0, 11))

    effective_temp = set_temp + 0.6 * overshoot
    warmth = effective_temp - strain.reference_temperature_c
    midpoint = (
        strain.midpoint_hours
        * (nominal_rate / pitch_rate) ** 0.35
        * (8.0 / oxygen) ** 0.15
        * np.exp(-0.07 * warmth)
        * rng.lognormal(0, 0.06)
    )
    slope = strain.slope_per_hour * np.exp(0.05 * warmth) * rng.lognormal(0, 0.06)

    meta = {"brand": brand, "yeast_strain": strain_name, "fermenter": fermenter}
    drifted = bool(
        cfg.drift is not None
        and start_ts >= cfg.drift.start
        and meta[cfg.drift.column] == cfg.drift.value
    )
    late_slope = slope
    if drifted:
        midpoint += cfg.drift.midpoint_shift_hours
        late_slope = slope * cfg.drift.late_slope_factor

    if stuck:
        finish_h = np.nan
        duration = midpoint + 6.0 / late_slope + rng.uniform(48, 96)
    else:
        finish_h = hours_to_terminal(og, pe, late_slope, midpoint, cfg.terminal_tolerance_plato)
        duration = finish_h + rng.uniform(36, 72)  # plateau + diacetyl rest before crash
    end_h = start_h + duration
    observed_until = min(end_h, world_end_h) - start_h

    # Gravity: cellar rounds, each skipped at random, plus the OG reading at pitch.
    first_day = np.floor(start_h / 24.0)
    days = np.arange(first_day, first_day + np.ceil(observed_until / 24.0) + 2)
    rounds = (days[:, None] * 24.0 + np.array(GRAVITY_SAMPLE_HOURS)[None, :]).ravel()
    rounds = rounds + rng.normal(0, 0.3, rounds.size)
    rel = rounds - start_h
    rel = rel[(rel > 0.5) & (rel <= observed_until)]
    rel = rel[rng.random(rel.size) >= cfg.gravity_skip_probability]
    gravity_h = np.concatenate([[0.05], rel])
    gravity = logistic_gravity(gravity_h, og, pe, slope, midpoint, late_slope)
    gravity = np.round(gravity + rng.normal(0, cfg.gravity_noise_plato, gravity.size), 1)

    # Temperature: fine cadence; pitch temperature relaxes to set point, overshoot with activity.
    step = cfg.temperature_every_minutes / 60.0
    temp_h = np.arange(0.0, observed_until, step)
    s = 1.0 / (1.0 + np.exp(-np.clip(_phase(temp_h, slope, midpoint, late_slope), -60, 60)))
    activity = 4.0 * s * (1.0 - s)
    temperature = (
        set_temp
        + (pitch_temp - set_temp) * np.exp(-temp_h / 6.0)
        + overshoot * activity
        + rng.normal(0, cfg.temperature_noise_c, temp_h.size)
    )
    temperature = np.round(temperature, 2)

    batch = {
        **meta,
        "original_gravity_plato": round(float(og), 2),
        "pitch_temperature_c": round(float(pitch_temp), 2),
        "pitch_rate_million_cells_per_ml_plato": round(pitch_rate, 3),
        "dissolved_oxygen_ppm": round(oxygen, 2),
        "ambient_temperature_c": round(float(ambient), 2),
        "yeast_generation": generation,
        "start_hours": start_h,
        "end_hours": end_h if end_h <= world_end_h else np.nan,
    }
    truth = {
        "attenuation": attenuation,
        "terminal_gravity_plato": pe,
        "midpoint_hours": midpoint,
        "slope_per_hour": slope,
        "late_slope_per_hour": late_slope,
        "effective_temperature_c": effective_temp,
        "cooling_capacity": cooling,
        "stuck": stuck,
        "drifted": drifted,
        "finish_hours": start_h + finish_h,
        "end_hours": end_h,
        "hours_to_finish": finish_h,
    }
    tags = np.concatenate([np.zeros(gravity_h.size, np.int8), np.ones(temp_h.size, np.int8)])
    hours = start_h + np.concatenate([gravity_h, temp_h])
    values = np.concatenate([gravity, temperature])
    return batch, truth, (index, tags, hours, values)


def _to_ts(config: SimulationConfig, hours: np.ndarray) -> pd.Series:
    """Hours since the world's start -> UTC timestamps to the second (NaN -> NaT)."""
    hours = np.asarray(hours, dtype="float64")
    micros = config.start.value // 1000 + np.nan_to_num(hours) * 3.6e9
    stamps = pd.to_datetime(np.round(micros).astype("int64"), unit="us", utc=True).floor("s")
    return pd.Series(stamps).where(~np.isnan(hours), pd.NaT)


def _batches_frame(cfg: SimulationConfig, rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    starts = _to_ts(cfg, frame.pop("start_hours").to_numpy())
    frame["start_time"] = starts
    frame["end_time"] = _to_ts(cfg, frame.pop("end_hours").to_numpy())
    frame["batch_id"] = [
        f"{fv}-{ts:%Y%m%d-%H%M}" for fv, ts in zip(frame["fermenter"], starts, strict=True)
    ]
    frame = _corrupt_batches(cfg, frame)
    return BATCHES.conform(frame[BATCHES.names], source="simulator")


def _corrupt_batches(cfg: SimulationConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """Missing fields and typos in batch metadata, as hand entry produces them."""
    rng = np.random.default_rng(cfg.seed + 1)
    frame = frame.copy()
    bad = np.flatnonzero(rng.random(len(frame)) < cfg.bad_batch_rate)
    for i, kind in zip(bad, rng.integers(0, 3, bad.size), strict=True):
        if kind == 0:
            frame.loc[i, "yeast_strain"] = None
        elif kind == 1:
            frame.loc[i, "original_gravity_plato"] *= 10  # decimal slip
        else:
            frame.loc[i, "dissolved_oxygen_ppm"] = np.nan
    return frame


def _readings_frame(
    cfg: SimulationConfig,
    batches: pd.DataFrame,
    parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
    rng: np.random.Generator,
) -> pd.DataFrame:
    if not parts:
        return READINGS.empty()
    batch_index = np.concatenate([np.full(p[1].size, p[0], np.int32) for p in parts])
    tags = np.concatenate([p[1] for p in parts])
    hours = np.concatenate([p[2] for p in parts])
    values = np.concatenate([p[3] for p in parts])

    # Corrupt a small share of readings: decimal slips, impossible values, missing values.
    bad = np.flatnonzero(rng.random(values.size) < cfg.bad_reading_rate)
    kinds = rng.integers(0, 3, bad.size)
    values[bad[kinds == 0]] *= 10.0
    values[bad[kinds == 1]] = np.where(tags[bad[kinds == 1]] == 0, -1.0, 999.0)
    values[bad[kinds == 2]] = np.nan

    timestamps = _to_ts(cfg, hours).to_numpy()
    tag_names = np.array(READINGS["tag"].vocabulary, dtype=object)
    frame = pd.DataFrame(
        {
            "batch_id": pd.Categorical.from_codes(batch_index, batches["batch_id"].astype(str)),
            "tag": pd.Categorical.from_codes(tags.astype(np.int32), tag_names),
            "timestamp": timestamps,
            "value": values,
        }
    )
    # Two readings of one tag rounded to the same second would collide on the key.
    frame = frame.drop_duplicates(["batch_id", "tag", "timestamp"])
    frame["batch_id"] = frame["batch_id"].astype(str)
    frame["tag"] = frame["tag"].astype(str)
    return READINGS.conform(frame, source="simulator")
