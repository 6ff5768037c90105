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

A :class:`BreweryProfile` is one brewery as its data looks: its own names, cellar, reading
cadence, the metadata it records and its units. :class:`Realism` adds what real curves show
and the plain world lacks (slow tails, dry-hop bumps, free rise and cold crash, dropouts and
sentinels); it is off in the ``"default"`` profile, whose world stays the same seed for seed.
Realism draws from its own generators, never from the world's, for that reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from rich.progress import Progress

from brewcast.plateau import LOW_ALCOHOL_OG_PLATO, PlateauRule, find_plateau
from brewcast.schema import BATCHES, READINGS
from brewcast.units import CANONICAL


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
    style: str = ""
    #: how often the brewery brews it, against its other brands (a long tail of brands)
    weight: float = 1.0


STRAINS: dict[str, Strain] = {
    "american_ale": Strain((0.73, 0.80), 42.0, 0.085, 19.0),
    "english_ale": Strain((0.63, 0.70), 40.0, 0.090, 18.5),
    "german_lager": Strain((0.70, 0.77), 88.0, 0.045, 11.0),
    "bavarian_wheat": Strain((0.70, 0.77), 36.0, 0.095, 20.0),
    "belgian_saison": Strain((0.76, 0.80), 46.0, 0.075, 23.0),
}

RECIPES: dict[str, Recipe] = {
    "harbour_pale_ale": Recipe(
        False, (11.5, 13.0), ("american_ale", "english_ale"), 19.0, "pale_ale"
    ),
    "hop_hazard_ipa": Recipe(False, (14.0, 16.5), ("american_ale",), 19.5, "ipa"),
    "old_anchor_stout": Recipe(False, (15.0, 18.0), ("english_ale",), 18.5, "stout"),
    "golden_pilsner": Recipe(True, (11.0, 12.5), ("german_lager",), 11.0, "lager"),
    "munich_helles": Recipe(True, (11.0, 12.5), ("german_lager",), 10.5, "lager"),
    "wheat_wave_hefeweizen": Recipe(False, (11.5, 13.5), ("bavarian_wheat",), 20.0, "wheat"),
    "red_rail_amber_lager": Recipe(True, (12.0, 14.0), ("german_lager",), 11.5, "lager"),
    "farmhouse_saison": Recipe(False, (13.0, 15.5), ("belgian_saison",), 23.0, "saison"),
}

#: The simulated brewery's names: its brands, strains and fermenters (a real brewery brings
#: its own; the schema declares none of them).
BRANDS = tuple(RECIPES)
YEAST_STRAINS = tuple(STRAINS)
FERMENTERS = tuple(f"FV{i:02d}" for i in range(1, 13))

#: Relative cooling capacity per fermenter: 1.0 holds set point, lower ones run warm.
COOLING_CAPACITY: dict[str, float] = dict(
    zip(FERMENTERS, (1.0, 1.0, 0.9, 0.8, 0.55, 1.0, 0.7, 0.5, 0.9, 1.0, 0.8, 0.65), strict=True)
)

NOMINAL_PITCH_RATE = {False: 0.75, True: 1.5}  # 10^6 cells/mL/°P, ale vs lager
GRAVITY_SAMPLE_HOURS = (8.0, 14.0, 20.0)  # cellar rounds; each may be skipped

#: Sentinels of real logs, in canonical units: a Tilt out of liquid (SG 1.25) and 999 °F.
GRAVITY_SENTINEL_PLATO = 52.88
TEMPERATURE_SENTINEL_C = (999.0 - 32.0) * 5.0 / 9.0
#: Above this tail drift the labels' last-24-h plateau rule stops firing (DOMAIN.md).
MAX_TAIL_PLATO_PER_DAY = 0.25


@dataclass(frozen=True)
class Realism:
    """What real fermentation logs show that a clean logistic lacks (DOMAIN.md). All off.

    ``tail_plato_per_day``: the plateau keeps drifting down at up to this rate until the
    crash (the strain's terminal gravity is still where it ends). ``dry_hop_probability``:
    a share of batches gets hops late, a sudden apparent rise of ``dry_hop_rise_plato``
    that decays with ``dry_hop_decay_hours``. ``free_rise_c``: the diacetyl rest's rise
    near the end of fermentation. ``cold_crash_c``: after the plateau the tank is cooled
    to this range for ``cold_crash_hours`` (cooling and maturation), which lengthens the
    batch. ``dropouts_per_week`` gaps of ``dropout_hours`` lose every reading in them;
    ``sentinel_rate`` of readings become a device's sentinel. ``after_transfer_hours``:
    the batch's log goes on this long after the crash, read in the bright tank, lower by
    ``after_transfer_drop_plato`` (cold, degassed). ``missing_og_share`` of batches have no
    OG entered; ``empty_sub_batch_share`` of batches get a sub-batch (``<id>.1``) that
    carries no readings, as an ERP splits a brew between tanks.
    """

    tail_plato_per_day: float = 0.0
    dry_hop_probability: float = 0.0
    dry_hop_rise_plato: tuple[float, float] = (0.2, 0.5)
    dry_hop_decay_hours: float = 8.0
    free_rise_c: float = 0.0
    cold_crash_c: tuple[float, float] | None = None
    cold_crash_hours: tuple[float, float] = (36.0, 72.0)
    dropouts_per_week: float = 0.0
    dropout_hours: tuple[float, float] = (2.0, 48.0)
    sentinel_rate: float = 0.0
    after_transfer_hours: tuple[float, float] = (0.0, 0.0)
    after_transfer_drop_plato: tuple[float, float] = (0.2, 0.6)
    missing_og_share: float = 0.0
    empty_sub_batch_share: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.tail_plato_per_day <= MAX_TAIL_PLATO_PER_DAY:
            raise ValueError(
                f"tail_plato_per_day must be in [0, {MAX_TAIL_PLATO_PER_DAY}] (faster drift "
                f"defeats the plateau rule of the labels), got {self.tail_plato_per_day}"
            )
        for name in (
            "dry_hop_probability",
            "sentinel_rate",
            "missing_og_share",
            "empty_sub_batch_share",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


#: Batch metadata columns a brewery may or may not record (brand and fermenter it always does).
OPTIONAL_METADATA = (
    "style",
    "yeast_strain",
    "original_gravity_plato",
    "pitch_temperature_c",
    "pitch_rate_million_cells_per_ml_plato",
    "dissolved_oxygen_ppm",
    "ambient_temperature_c",
    "yeast_generation",
)


@dataclass(frozen=True)
class BreweryProfile:
    """One brewery as its data looks: its names, its cellar, its cadence and its records.

    ``units`` is the unit the brewery records each quantity in, as plain data for the
    writers (the simulator itself always produces °P and °C).
    """

    name: str
    recipes: Mapping[str, Recipe]
    strains: Mapping[str, Strain]
    cooling_capacity: Mapping[str, float]  # fermenter -> 1.0 holds set point, lower runs warm
    gravity_rounds_hours: tuple[float, ...]  # hours of the day a gravity may be taken
    gravity_skip_probability: float
    temperature_every_minutes: float
    recorded: frozenset[str] = frozenset(OPTIONAL_METADATA)
    realism: Realism = Realism()
    units: Mapping[str, str] = field(default_factory=lambda: dict(CANONICAL))
    #: days of the week (Monday 0) the cellar takes gravity readings on
    gravity_weekdays: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)
    #: batch-to-batch spread of the curve's timing (log-normal sigma of midpoint and slope)
    batch_variation: float = 0.06

    def __post_init__(self) -> None:
        unknown = set(self.recorded) - set(OPTIONAL_METADATA)
        if unknown:
            raise ValueError(f"profile {self.name}: unknown metadata column(s) {sorted(unknown)}")
        for brand, recipe in self.recipes.items():
            if missing := [s for s in recipe.strains if s not in self.strains]:
                raise ValueError(f"profile {self.name}: {brand} uses unknown strain(s) {missing}")

    @property
    def brands(self) -> tuple[str, ...]:
        return tuple(self.recipes)

    @property
    def fermenters(self) -> tuple[str, ...]:
        return tuple(self.cooling_capacity)

    @property
    def gravity_readings_per_day(self) -> float:
        return len(self.gravity_rounds_hours) * (1.0 - self.gravity_skip_probability)


DEFAULT_PROFILE = BreweryProfile(
    name="default",
    recipes=RECIPES,
    strains=STRAINS,
    cooling_capacity=COOLING_CAPACITY,
    gravity_rounds_hours=GRAVITY_SAMPLE_HOURS,
    gravity_skip_probability=0.15,
    temperature_every_minutes=30.0,
)

#: A production ale brewery on the Deschutes process (DOMAIN.md): ales at about 60 °F, a
#: free rise to about 70 °F for the diacetyl rest, then cooling to near freezing; gravity by
#: hand once or twice a day; °F and SG; no yeast, pitch-rate, oxygen or generation records.
HIGH_DESERT_STRAINS: dict[str, Strain] = {
    "house_ale": Strain((0.74, 0.80), 56.0, 0.046, 16.0),
    "house_english_ale": Strain((0.65, 0.72), 52.0, 0.050, 16.5),
    "kolsch_hybrid": Strain((0.72, 0.78), 64.0, 0.038, 15.5),
    "pilsner_lager": Strain((0.70, 0.77), 110.0, 0.024, 11.0),
}
HIGH_DESERT_RECIPES: dict[str, Recipe] = {
    "cascade_crest_ipa": Recipe(False, (15.0, 17.0), ("house_ale",), 16.0, "ipa"),
    "river_bend_pale_ale": Recipe(
        False, (12.0, 13.5), ("house_ale", "house_english_ale"), 16.0, "pale_ale"
    ),
    "obsidian_ridge_stout": Recipe(False, (16.0, 18.5), ("house_english_ale",), 16.5, "stout"),
    "lava_rock_porter": Recipe(False, (14.0, 16.0), ("house_english_ale",), 16.5, "porter"),
    "juniper_haze_ipa": Recipe(False, (14.5, 16.5), ("house_ale",), 17.0, "ipa"),
    "high_desert_kolsch": Recipe(False, (11.0, 12.5), ("kolsch_hybrid",), 15.5, "kolsch"),
    "fresh_snow_pilsner": Recipe(True, (11.5, 12.5), ("pilsner_lager",), 11.0, "lager"),
}
HIGH_DESERT_PROFILE = BreweryProfile(
    name="high_desert",
    recipes=HIGH_DESERT_RECIPES,
    strains=HIGH_DESERT_STRAINS,
    cooling_capacity=dict(
        zip(
            (f"FERM-{i:02d}" for i in range(1, 11)),
            (1.0, 1.0, 0.95, 0.9, 0.85, 0.7, 0.6, 1.0, 0.9, 0.75),
            strict=True,
        )
    ),
    gravity_rounds_hours=(9.0, 17.0),
    gravity_skip_probability=0.25,
    temperature_every_minutes=30.0,
    recorded=frozenset({"original_gravity_plato", "pitch_temperature_c", "ambient_temperature_c"}),
    realism=Realism(
        tail_plato_per_day=0.15,
        dry_hop_probability=0.5,
        free_rise_c=5.5,
        cold_crash_c=(0.0, 2.0),
        dropouts_per_week=0.5,
        sentinel_rate=0.002,
    ),
    units={"gravity": "SG", "temperature": "°F"},
)

#: A commercial craft brewery that logs by hand in its ERP (DOMAIN.md, "A commercial
#: brewery's hand log"): one gravity reading a working day at most, in °P; about ten styles
#: and a long tail of brands (most brewed one to three times), low-alcohol brands among
#: them; OG sometimes not entered, sub-batches without readings, slow conditioning tails
#: and readings taken in the bright tank after the transfer. No strain is recorded.
HAND_LOG_STRAINS: dict[str, Strain] = {
    "clean_ale": Strain((0.74, 0.81), 60.0, 0.035, 19.0),
    "hazy_ale": Strain((0.68, 0.75), 50.0, 0.050, 20.0),
    "belgian_ale": Strain((0.78, 0.85), 58.0, 0.045, 21.0),
    "farmhouse": Strain((0.82, 0.90), 64.0, 0.050, 24.0),
    "lager": Strain((0.72, 0.80), 130.0, 0.020, 11.0),
    "mixed_culture": Strain((0.80, 0.88), 76.0, 0.030, 20.0),
    "maltose_negative": Strain((0.25, 0.40), 40.0, 0.050, 18.0),
}
#: style -> (OG range °P, strains, set temperature °C, lager, how many brands)
HAND_LOG_STYLES: dict[str, tuple[tuple[float, float], tuple[str, ...], float, bool, int]] = {
    "neipa": ((14.0, 17.0), ("hazy_ale",), 20.0, False, 24),
    "ipa": ((14.0, 16.5), ("clean_ale",), 19.0, False, 16),
    "pale_ale": ((11.0, 13.0), ("clean_ale",), 19.0, False, 10),
    "lager": ((11.0, 12.5), ("lager",), 11.0, True, 8),
    "fruit_beer": ((11.0, 14.0), ("mixed_culture",), 20.0, False, 14),
    "low_alcohol": ((3.0, 6.0), ("maltose_negative",), 18.0, False, 6),
    "belgian": ((15.0, 19.0), ("belgian_ale",), 21.0, False, 8),
    "saison": ((12.0, 15.0), ("farmhouse",), 24.0, False, 8),
    "stout": ((14.0, 18.0), ("clean_ale",), 19.5, False, 6),
    "sour": ((10.0, 12.0), ("mixed_culture",), 20.0, False, 6),
}


def _hand_log_recipes() -> dict[str, Recipe]:
    """106 brands over ten styles, brewed in a long tail: the k-th most brewed brand about
    k^-0.8 as often as the first (the styles' brands interleaved, so every style has a
    regular and a tail; the first about 40 of 350 brews); low-alcohol brands about 8%."""
    recipes = {}
    rank = 0
    for i in range(max(style[4] for style in HAND_LOG_STYLES.values())):
        for name, (og, strains, set_c, lager, brands) in HAND_LOG_STYLES.items():
            if i >= brands:
                continue
            rank += 1
            weight = 1.0 / rank**0.8
            if name == "low_alcohol":
                weight *= 1.2
            recipes[f"{name}_{i + 1:02d}"] = Recipe(lager, og, strains, set_c, name, weight)
    return recipes


HAND_LOG_PROFILE = BreweryProfile(
    name="hand_log",
    recipes=_hand_log_recipes(),
    strains=HAND_LOG_STRAINS,
    cooling_capacity=dict(
        zip(
            (f"CT{i}" for i in range(1, 11)),
            (1.0, 1.0, 0.95, 0.9, 0.9, 0.85, 0.8, 1.0, 0.95, 0.85),
            strict=True,
        )
    ),
    gravity_rounds_hours=(10.0,),
    gravity_skip_probability=0.2,
    temperature_every_minutes=24 * 60.0,
    recorded=frozenset({"original_gravity_plato", "style"}),
    realism=Realism(
        tail_plato_per_day=0.08,
        dry_hop_probability=0.4,
        cold_crash_c=(0.0, 2.0),
        cold_crash_hours=(48.0, 96.0),
        after_transfer_hours=(24.0, 120.0),
        missing_og_share=0.10,
        empty_sub_batch_share=0.15,
    ),
    units={"gravity": "°P", "temperature": "°C"},
    gravity_weekdays=(0, 1, 2, 3, 4),
    batch_variation=0.2,
)

#: The breweries :class:`SimulationConfig` can simulate, by name.
PROFILES: dict[str, BreweryProfile] = {
    p.name: p for p in (DEFAULT_PROFILE, HIGH_DESERT_PROFILE, HAND_LOG_PROFILE)
}


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
    #: None: the profile's cadence and skip rate.
    temperature_every_minutes: float | None = None
    gravity_skip_probability: float | None = None
    gravity_noise_plato: float = 0.08
    temperature_noise_c: float = 0.15
    stuck_probability: float = 0.03
    bad_reading_rate: float = 0.004
    bad_batch_rate: float = 0.02
    #: What finished means (the labels' rule), for the truth's finish times.
    plateau: PlateauRule = field(default_factory=PlateauRule)
    drift: Drift | None = None
    #: The brewery (a key of :data:`PROFILES`) and its realism (None: the profile's own).
    profile: str = "default"
    realism: Realism | None = None

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(
                f"unknown brewery profile {self.profile!r}; known profiles: {', '.join(PROFILES)}"
            )
        count = len(self.brewery.fermenters)
        if not 1 <= self.fermenters <= count:
            raise ValueError(
                f"fermenters must be 1..{count} for brewery {self.profile!r}, got {self.fermenters}"
            )
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
    def brewery(self) -> BreweryProfile:
        return PROFILES[self.profile]

    @property
    def effects(self) -> Realism:
        """The realism in force: the config's own, else the profile's."""
        return self.brewery.realism if self.realism is None else self.realism

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

    fermenters = cfg.brewery.fermenters[: cfg.fermenters]
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
    truth["transfer_hours"] = truth["transfer_hours"].where(np.isfinite(truth["transfer_hours"]))
    for name in ("finish", "end", "dry_hop", "crash", "transfer"):
        truth[f"{name}_time"] = _to_ts(cfg, truth.pop(f"{name}_hours").to_numpy())
    return Simulation(cfg, _hand_entry(cfg, batches), readings, truth)


def _hand_entry(cfg: SimulationConfig, batches: pd.DataFrame) -> pd.DataFrame:
    """An ERP's hand-entered batch records: some OGs never entered, and sub-batches (a brew
    split between tanks, ``<id>.1``) that carry no readings of their own."""
    effects = cfg.effects
    if effects.missing_og_share == 0 and effects.empty_sub_batch_share == 0:
        return batches
    rng = np.random.default_rng((cfg.seed, 0, 9))
    out = batches.copy()
    blank = rng.random(len(out)) < effects.missing_og_share
    out.loc[blank, "original_gravity_plato"] = np.nan
    split = out[rng.random(len(out)) < effects.empty_sub_batch_share]
    subs = split.assign(batch_id=split["batch_id"] + ".1")
    return BATCHES.conform(pd.concat([out, subs], ignore_index=True), source="simulator")


@dataclass
class _Curve:
    """One batch's true gravity curve in hours since pitch, with its realism (if any)."""

    og: float
    pe: float
    slope: float
    midpoint: float
    late_slope: float
    tail_per_hour: float = 0.0
    crash_at: float = np.inf  # the crash stops the slow tail
    dry_hop_at: float = np.nan
    dry_hop_rise: float = 0.0
    dry_hop_decay: float = 8.0
    transfer_at: float = np.inf  # read in the bright tank from then on, lower
    transfer_drop: float = 0.0

    @property
    def plain(self) -> bool:
        return (
            self.tail_per_hour == 0.0
            and np.isnan(self.dry_hop_at)
            and not np.isfinite(self.transfer_at)
        )

    def tail(self, t_hours: np.ndarray | float) -> np.ndarray:
        """The slow tail's drop so far: its rate grows with the share fermented (softplus)."""
        b = self.late_slope
        x = np.minimum(np.asarray(t_hours, dtype="float64"), self.crash_at) - self.midpoint
        base = np.logaddexp(0.0, -b * self.midpoint)
        return self.tail_per_hour / b * (np.logaddexp(0.0, b * x) - base)

    def gravity(self, t_hours: np.ndarray) -> np.ndarray:
        """Apparent gravity: the logistic, less the tail (which ends at ``pe``), plus hops."""
        if self.plain:  # the plain world's curve, bit for bit
            return logistic_gravity(
                t_hours, self.og, self.pe, self.slope, self.midpoint, self.late_slope
            )
        plateau = self.pe + float(self.tail(self.crash_at))
        g = logistic_gravity(t_hours, self.og, plateau, self.slope, self.midpoint, self.late_slope)
        g = g - self.tail(t_hours)
        if not np.isnan(self.dry_hop_at):
            since = np.asarray(t_hours, dtype="float64") - self.dry_hop_at
            bump = self.dry_hop_rise * np.exp(-np.maximum(since, 0.0) / self.dry_hop_decay)
            g = g + np.where(since >= 0, bump, 0.0)
        transferred = np.asarray(t_hours, dtype="float64") >= self.transfer_at
        return g - np.where(transferred, self.transfer_drop, 0.0)


@dataclass(frozen=True)
class _Heat:
    """What sets a batch's temperature trace."""

    set_temp: float
    pitch_temp: float
    overshoot: float
    cooling: float


def _realism_rng(cfg: SimulationConfig, index: int, effect: int) -> np.random.Generator:
    """A generator of its own per batch and effect: realism never shifts the world's draws,
    and switching one effect off leaves the others as they were."""
    return np.random.default_rng((cfg.seed, index, effect))


def _draw_batch(
    cfg: SimulationConfig, rng: np.random.Generator, fermenter: str, start_ts: pd.Timestamp
) -> tuple[dict, dict, _Curve, _Heat, bool]:
    """The batch's recipe, pitch and curve (metadata row, truth, curve, heat, stuck)."""
    brewery = cfg.brewery
    weights = np.array([r.weight for r in brewery.recipes.values()])
    if np.all(weights == weights[0]):
        brand = brewery.brands[rng.integers(len(brewery.brands))]
    else:  # a long tail of brands: the same draw count, weighted
        brand = brewery.brands[rng.choice(len(brewery.brands), p=weights / weights.sum())]
    recipe = brewery.recipes[brand]
    strain_name = recipe.strains[rng.integers(len(recipe.strains))]
    strain = brewery.strains[strain_name]

    og = rng.uniform(*recipe.original_gravity)
    attenuation = rng.uniform(*strain.attenuation)
    # a low-alcohol wort stops early on purpose: its plateau is a finish (brewcast.plateau)
    stuck = bool(rng.random() < cfg.stuck_probability) and og >= LOW_ALCOHOL_OG_PLATO
    if stuck:  # the yeast gives up early: the plateau sits well above the strain's terminal
        attenuation *= rng.uniform(0.4, 0.7)
    pe = og * (1.0 - attenuation)

    day_of_year = start_ts.day_of_year
    ambient = 12.0 + 9.0 * np.sin(2 * np.pi * (day_of_year - 110) / 365.25) + rng.normal(0, 2.0)
    cooling = brewery.cooling_capacity[fermenter]
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
        * rng.lognormal(0, brewery.batch_variation)
    )
    slope = (
        strain.slope_per_hour * np.exp(0.05 * warmth) * rng.lognormal(0, brewery.batch_variation)
    )

    meta = {
        "brand": brand,
        "style": recipe.style or None,
        "yeast_strain": strain_name,
        "fermenter": fermenter,
    }
    drifted = bool(
        cfg.drift is not None
        and start_ts >= cfg.drift.start
        and meta[cfg.drift.column] == cfg.drift.value
    )
    late_slope = slope
    if drifted:
        midpoint += cfg.drift.midpoint_shift_hours
        late_slope = slope * cfg.drift.late_slope_factor

    batch = {
        **meta,
        "original_gravity_plato": round(float(og), 2),
        "pitch_temperature_c": round(float(pitch_temp), 2),
        "pitch_rate_million_cells_per_ml_plato": round(pitch_rate, 3),
        "dissolved_oxygen_ppm": round(oxygen, 2),
        "ambient_temperature_c": round(float(ambient), 2),
        "yeast_generation": generation,
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
    }
    curve = _Curve(og, pe, slope, midpoint, late_slope)
    return batch, truth, curve, _Heat(set_temp, pitch_temp, overshoot, cooling), stuck


def _simulate_batch(
    cfg: SimulationConfig,
    rng: np.random.Generator,
    index: int,
    fermenter: str,
    start_h: float,
    world_end_h: float,
) -> tuple[dict, dict, tuple]:
    """One batch: its metadata row, its truth row and its readings (batch, tag, hours, value)."""
    start_ts = cfg.start + pd.Timedelta(hours=start_h)
    batch, truth, curve, heat, stuck = _draw_batch(cfg, rng, fermenter, start_ts)
    midpoint, late_slope = curve.midpoint, curve.late_slope
    if stuck:
        finish_h = np.nan
        duration = midpoint + 6.0 / late_slope + rng.uniform(48, 96)
    else:
        finish_h = hours_to_terminal(
            curve.og, curve.pe, late_slope, midpoint, cfg.plateau.tolerance_plato
        )
        duration = finish_h + rng.uniform(36, 72)  # plateau + diacetyl rest before crash
    crash_target, crash_hours = _add_realism(cfg, index, curve, duration)
    total = duration + crash_hours
    after = cfg.effects.after_transfer_hours
    if after[1] > 0:  # read on in the bright tank
        transfer = _realism_rng(cfg, index, 5)
        curve.transfer_at = total
        curve.transfer_drop = float(transfer.uniform(*cfg.effects.after_transfer_drop_plato))
        total += float(transfer.uniform(*after))
    if not stuck:
        finish_h = _plateau_hours(curve, total, cfg.plateau)
    end_h = start_h + total
    observed_until = min(end_h, world_end_h) - start_h

    gravity_h, gravity = _gravity_readings(cfg, rng, curve, start_h, observed_until)
    temp_h, temperature = _temperature_readings(cfg, rng, curve, heat, observed_until, crash_target)
    batch = {
        **batch,
        "start_hours": start_h,
        "end_hours": end_h if end_h <= world_end_h else np.nan,
    }
    truth = {
        **truth,
        "finish_hours": start_h + finish_h,
        "end_hours": end_h,
        "hours_to_finish": finish_h,
        "dry_hop_hours": start_h + curve.dry_hop_at,
        "crash_hours": start_h + duration if crash_target is not None else np.nan,
        "transfer_hours": start_h + curve.transfer_at,
    }
    tags = np.concatenate([np.zeros(gravity_h.size, np.int8), np.ones(temp_h.size, np.int8)])
    hours = np.concatenate([gravity_h, temp_h])
    values = np.concatenate([gravity, temperature])
    keep, values = _degrade(cfg, index, tags, hours, values)
    return batch, truth, (index, tags[keep], start_h + hours[keep], values[keep])


def _add_realism(
    cfg: SimulationConfig, index: int, curve: _Curve, duration: float
) -> tuple[float | None, float]:
    """Give ``curve`` its slow tail and dry hops; the crash target and length (or None, 0)."""
    effects = cfg.effects
    curve.crash_at = duration
    if effects.tail_plato_per_day > 0:
        rate = effects.tail_plato_per_day * _realism_rng(cfg, index, 1).uniform(0.5, 1.0)
        curve.tail_per_hour = rate / 24.0
    hops = _realism_rng(cfg, index, 2)
    if effects.dry_hop_probability > 0 and hops.random() < effects.dry_hop_probability:
        # Late in fermentation: from about three quarters down to just after the plateau.
        late = hours_to_terminal(
            curve.og, curve.pe, curve.late_slope, curve.midpoint, cfg.plateau.tolerance_plato
        )
        earliest = curve.midpoint + 1.1 / curve.late_slope
        curve.dry_hop_at = float(
            min(hops.uniform(earliest, max(late + 12.0, earliest + 1.0)), duration - 30.0)
        )
        curve.dry_hop_rise = float(hops.uniform(*effects.dry_hop_rise_plato))
        curve.dry_hop_decay = effects.dry_hop_decay_hours
    if effects.cold_crash_c is None:
        return None, 0.0
    crash = _realism_rng(cfg, index, 3)
    return float(crash.uniform(*effects.cold_crash_c)), float(
        crash.uniform(*effects.cold_crash_hours)
    )


def _plateau_hours(curve: _Curve, total_hours: float, rule: PlateauRule) -> float:
    """When the noise-free curve's plateau starts (every 15 minutes until the batch ends):
    the labels' rule (:mod:`brewcast.plateau`), so truth and labels agree."""
    t = np.arange(0.0, total_hours, 0.25)
    plateau = find_plateau(t, curve.gravity(t), curve.og, rule, closed=True)
    return float(t[plateau.index]) if plateau.status == "finished" else np.nan


def _gravity_readings(
    cfg: SimulationConfig,
    rng: np.random.Generator,
    curve: _Curve,
    start_h: float,
    observed_until: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Hand readings on the cellar's rounds, each skipped at random, plus the OG at pitch."""
    brewery = cfg.brewery
    skip = cfg.gravity_skip_probability
    skip = brewery.gravity_skip_probability if skip is None else skip
    first_day = np.floor(start_h / 24.0)
    days = np.arange(first_day, first_day + np.ceil(observed_until / 24.0) + 2)
    rounds = (days[:, None] * 24.0 + np.array(brewery.gravity_rounds_hours)[None, :]).ravel()
    rounds = rounds + rng.normal(0, 0.3, rounds.size)
    if len(brewery.gravity_weekdays) < 7:  # the cellar's working week
        weekday = (cfg.start.day_of_week + np.floor((cfg.start.hour + rounds) / 24.0)) % 7
        rounds = rounds[np.isin(weekday, brewery.gravity_weekdays)]
    rel = rounds - start_h
    rel = rel[(rel > 0.5) & (rel <= observed_until)]
    rel = rel[rng.random(rel.size) >= skip]
    gravity_h = np.concatenate([[0.05], rel])
    gravity = curve.gravity(gravity_h)
    gravity = np.round(gravity + rng.normal(0, cfg.gravity_noise_plato, gravity.size), 1)
    return gravity_h, gravity


def _temperature_readings(
    cfg: SimulationConfig,
    rng: np.random.Generator,
    curve: _Curve,
    heat: _Heat,
    observed_until: float,
    crash_target: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fine cadence: pitch temperature relaxes to set point, overshoots with activity; with
    realism, a free rise for the diacetyl rest and a cold crash after the plateau."""
    every = cfg.temperature_every_minutes
    every = cfg.brewery.temperature_every_minutes if every is None else every
    temp_h = np.arange(0.0, observed_until, every / 60.0)
    phase = _phase(temp_h, curve.slope, curve.midpoint, curve.late_slope)
    s = 1.0 / (1.0 + np.exp(-np.clip(phase, -60, 60)))
    activity = 4.0 * s * (1.0 - s)
    temperature = (
        heat.set_temp
        + (heat.pitch_temp - heat.set_temp) * np.exp(-temp_h / 6.0)
        + heat.overshoot * activity
        + rng.normal(0, cfg.temperature_noise_c, temp_h.size)
    )
    rise = cfg.effects.free_rise_c
    if rise:  # let the tank warm once about 88 % of the extract is gone
        since = temp_h - (curve.midpoint + 2.0 / curve.late_slope)
        temperature = temperature + rise * (1.0 - np.exp(-np.maximum(since, 0.0) / 8.0))
    if crash_target is not None:  # weak cooling crashes slower
        since = np.maximum(temp_h - curve.crash_at, 0.0)
        weight = np.exp(-since / (6.0 / heat.cooling))
        temperature = crash_target + weight * (temperature - crash_target)
    return temp_h, np.round(temperature, 2)


def _degrade(
    cfg: SimulationConfig, index: int, tags: np.ndarray, hours: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Dropouts (gaps that lose every reading) and device sentinels: which readings remain,
    and the values. The OG reading at pitch is kept."""
    effects = cfg.effects
    keep = np.ones(hours.size, dtype=bool)
    pitch = (tags == 0) & (hours < 0.1)
    if effects.dropouts_per_week > 0 and hours.size:
        gaps = _realism_rng(cfg, index, 4)
        span = float(hours.max())
        for _ in range(gaps.poisson(effects.dropouts_per_week * span / 168.0)):
            begin = gaps.uniform(0.0, span)
            keep &= ~((hours >= begin) & (hours < begin + gaps.uniform(*effects.dropout_hours)))
    if effects.sentinel_rate > 0:
        hit = (_realism_rng(cfg, index, 5).random(hours.size) < effects.sentinel_rate) & ~pitch
        values = np.where(
            hit, np.where(tags == 0, GRAVITY_SENTINEL_PLATO, TEMPERATURE_SENTINEL_C), values
        )
    return keep | pitch, values


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
    frame["time_resolution_h"] = np.nan  # every simulated reading carries its time
    for column in set(OPTIONAL_METADATA) - cfg.brewery.recorded:  # the brewery never wrote it
        frame[column] = None if column in ("style", "yeast_strain") else np.nan
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
    # impossible: below any gravity a fermented drink reaches, above any cellar temperature
    values[bad[kinds == 1]] = np.where(tags[bad[kinds == 1]] == 0, -10.0, 999.0)
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
