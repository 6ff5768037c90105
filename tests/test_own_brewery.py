"""Bring your own brewery: a Brewery Pi database in °F and SG, with brands, fermenters and
strains brewcast has never seen, goes through every stage; units are converted at the edge
and never guessed; a model learns the brewery's own names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from brewcast.settings import Settings
from ingest import brewerypi
from ingest.brewerypi import BreweryPiError, read_brewerypi, write_brewerypi
from ingest.simulator import PROFILES, Simulation
from tests.conftest import SMALL_WORLD

#: How another brewery names what the simulator calls its brands, strains and fermenters.
RENAMED = {
    "brand": lambda v: f"cascade_{v}",
    "yeast_strain": lambda v: f"house_{v}",
    "fermenter": lambda v: v.replace("FV", "FERM-"),
}
IN_FAHRENHEIT_AND_SG = {"temperature": "°F", "gravity": "SG"}


def renamed(world: Simulation) -> tuple[pd.DataFrame, pd.DataFrame]:
    batches = world.batches.copy()
    for column, rename in RENAMED.items():
        batches[column] = batches[column].map(lambda v, f=rename: None if pd.isna(v) else f(v))
    return batches, world.readings


def test_brewerypi_in_fahrenheit_and_sg_reads_back_in_canonical_units(tmp_path, small_world):
    url = f"sqlite:///{tmp_path / 'fahrenheit.db'}"
    batches, readings = renamed(small_world)
    write_brewerypi(url, batches, readings, units=IN_FAHRENHEIT_AND_SG)
    engine = sa.create_engine(url)
    with engine.connect() as conn:  # the database really holds °F and SG
        stored = conn.execute(sa.select(brewerypi.TagValue.c.Value).limit(50000)).scalars().all()
        units = conn.execute(sa.select(brewerypi.UnitOfMeasurement.c.Abbreviation)).scalars()
        assert set(units) == {"°F", "SG"}
    engine.dispose()
    assert any(1.0 < v < 1.13 for v in stored) and any(40 < v < 80 for v in stored)

    got_b, got_r, report = read_brewerypi(url, SMALL_WORLD.start, SMALL_WORLD.end)
    assert report.units == {
        "gravity_plato": {"SG"},
        "temperature_c": {"°F"},
        "original_gravity_plato": {"SG"},
        "pitch_temperature_c": {"°F"},
        "ambient_temperature_c": {"°F"},
    }
    expected = readings[readings["value"].notna()].sort_values(["batch_id", "tag", "timestamp"])
    got_r = got_r.sort_values(["batch_id", "tag", "timestamp"])
    assert len(got_r) == len(expected)
    np.testing.assert_allclose(got_r["value"], expected["value"], rtol=0, atol=1e-6)
    got_b = got_b.set_index("batch_id").loc[batches["batch_id"]]
    assert got_b["brand"].tolist() == batches["brand"].tolist()  # names the project never had
    assert got_b["fermenter"].tolist() == batches["fermenter"].tolist()
    np.testing.assert_allclose(
        got_b["pitch_temperature_c"], batches["pitch_temperature_c"], atol=1e-9
    )
    np.testing.assert_allclose(
        got_b["original_gravity_plato"], batches["original_gravity_plato"], atol=1e-6
    )


def _drop_units(url: str, suffix: str) -> None:
    """Tags named ``*suffix`` lose their unit (as a hand-made installation may have them)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.update(brewerypi.Tag)
            .where(brewerypi.Tag.c.Name.endswith(suffix, autoescape=True))
            .values(UnitOfMeasurementId=None)
        )
    engine.dispose()


def test_a_tag_without_a_unit_is_an_error_naming_it_unless_mapped(tmp_path, small_world):
    url = f"sqlite:///{tmp_path / 'nounit.db'}"
    write_brewerypi(url, *renamed(small_world), units=IN_FAHRENHEIT_AND_SG)
    _drop_units(url, "_Temperature")
    with pytest.raises(BreweryPiError, match=r"tag 'FERM-\d\d_Temperature'.*no unit given"):
        read_brewerypi(url, SMALL_WORLD.start, SMALL_WORLD.end)
    fermenters = sorted(renamed(small_world)[0]["fermenter"].unique())
    overrides = {f"{f}_Temperature": "degF" for f in fermenters}
    _, readings, report = read_brewerypi(
        url, SMALL_WORLD.start, SMALL_WORLD.end, unit_overrides=overrides
    )
    temperature = readings[readings["tag"] == "temperature_c"]["value"]
    assert temperature.between(-2, 40).mean() > 0.99  # °F converted, not read as °C
    assert report.units["temperature_c"] == {"°F"}


def test_an_unknown_unit_is_an_error_naming_tag_and_unit(tmp_path, small_world):
    url = f"sqlite:///{tmp_path / 'furlong.db'}"
    write_brewerypi(url, *renamed(small_world), units={"gravity": "Plato"})
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.update(brewerypi.UnitOfMeasurement)
            .where(brewerypi.UnitOfMeasurement.c.Abbreviation == "Plato")
            .values(Abbreviation="furlong")
        )
    engine.dispose()
    with pytest.raises(BreweryPiError, match=r"_Plato'.*unknown gravity unit 'furlong'"):
        read_brewerypi(url, SMALL_WORLD.start, SMALL_WORLD.end)


def test_a_brewerys_own_attribute_and_tag_names_are_mapped_in_settings(tmp_path, small_world):
    """Tags named by the brewery ("FERM-01 SG probe") bound to attribute templates of its own
    ("Gravity", "Temp", "Beer"): refused with a message naming the setting, read once mapped."""
    url = f"sqlite:///{tmp_path / 'names.db'}"
    batches, readings = renamed(small_world)
    write_brewerypi(url, batches, readings, units=IN_FAHRENHEIT_AND_SG)
    engine = sa.create_engine(url)
    eat, tag = brewerypi.ElementAttributeTemplate, brewerypi.Tag
    with engine.begin() as conn:
        for old, new in (("Plato", "Gravity"), ("Temperature", "Temp"), ("Brand", "Beer")):
            conn.execute(sa.update(eat).where(eat.c.Name == old).values(Name=new))
        for tid, name in conn.execute(sa.select(tag.c.TagId, tag.c.Name)).all():
            conn.execute(
                sa.update(tag).where(tag.c.TagId == tid).values(Name=name.replace("_", " tag "))
            )
    engine.dispose()
    with pytest.raises(BreweryPiError, match="BREWCAST_BREWERYPI_ATTRIBUTES"):
        read_brewerypi(url, SMALL_WORLD.start, SMALL_WORLD.end)
    mapping = {"Gravity": "gravity_plato", "Temp": "temperature_c", "Beer": "brand"}
    got_b, got_r, _ = read_brewerypi(url, SMALL_WORLD.start, SMALL_WORLD.end, attributes=mapping)
    assert len(got_r) == readings["value"].notna().sum()
    assert set(got_r["tag"]) == {"gravity_plato", "temperature_c"}
    assert set(got_b["brand"]) == set(batches["brand"])
    with pytest.raises(BreweryPiError, match="unknown column"):
        read_brewerypi(url, SMALL_WORLD.start, SMALL_WORLD.end, attributes={"Gravity": "sg"})


def test_fahrenheit_read_as_celsius_is_quarantined_naming_the_likely_unit(
    settings: Settings, tmp_path, small_world
):
    """A tag declared °C that holds °F (the quarantined brewery's database): validation
    says which unit the values look like, and keeps every row."""
    from application import stages

    url = f"sqlite:///{tmp_path / 'mislabelled.db'}"
    batches, readings = renamed(small_world)
    fahrenheit = readings.copy()
    is_temp = fahrenheit["tag"] == "temperature_c"
    fahrenheit.loc[is_temp, "value"] = fahrenheit.loc[is_temp, "value"] * 9 / 5 + 32
    write_brewerypi(url, batches, fahrenheit)  # declared °C and °P
    settings = settings.model_copy(update={"brewerypi_url": url})
    stages.ingest(settings, "brewerypi", SMALL_WORLD.start, SMALL_WORLD.end)
    run = stages.validate(settings)
    failures = run.details["failures"]
    assert failures.get("unit:value[temperature_c]", 0) > 0.9 * is_temp.sum()
    assert "vocabulary:brand" not in failures and "vocabulary:fermenter" not in failures
    totals = run.details["totals"]["readings"]
    assert totals["rows_in"] == totals["published"] + totals["quarantined"]


@pytest.mark.slow
def test_a_new_brewery_in_fahrenheit_and_sg_goes_through_every_stage(tmp_path):
    """Ingest, validate (nothing held back for its names or units), features, train with
    its own vocabulary, gate, register, serve over HTTP (its own brands known, a stranger
    flagged), and monitor (the stranger counted)."""
    from pathlib import Path

    import httpx

    from application import stages
    from ingest.simulator import SimulationConfig, simulate
    from tests.conftest import TRAINING_OVERRIDES
    from tests.test_serving import KEY, _rows, start_service

    world = simulate(
        SimulationConfig(
            start=pd.Timestamp("2026-01-01", tz="UTC"),
            days=240,
            fermenters=6,
            seed=5,
            profile="high_desert",
        )
    )
    batches, readings = world.batches, world.readings
    url = f"sqlite:///{tmp_path / 'high_desert.db'}"
    write_brewerypi(url, batches, readings, units=PROFILES["high_desert"].units)
    # Hand readings twice a day, slow tails and dry hops are harder than the default cellar:
    # on 240 days of them the network misses the default calibration limits by a little
    # (ECE 0.050, two slices' bias 0.054-0.061 with intervals clear of 0), its 80% windows
    # are open-ended on most pre-finish rows (a stuck batch in the calibration split) and
    # its decision fires on 10% of the rows that finish within 24 h: the default gate
    # refuses it, rightly (the finish-forecast issue's findings). The limits are a
    # brewery's settings; this test is about the pipeline carrying a new brewery through.
    settings = Settings(
        home=tmp_path / "home",
        brewerypi_url=url,
        **{
            **TRAINING_OVERRIDES,
            "gate_max_ece": 0.08,
            "gate_max_abs_bias": 0.08,
            "gate_min_recall": 0.05,
            "gate_max_width_ratio": float("inf"),
        },
    )

    ingested = stages.ingest(settings, "brewerypi", world.config.start, world.config.end)
    assert ingested.details["units"]["temperature_c"] == ["°F"]
    validated = stages.validate(settings)
    held_for = set(validated.details["failures"])
    assert not {r for r in held_for if r.startswith(("vocabulary:", "unit:"))}, held_for
    assert stages.build_features(settings).counts["snapshots"] > 0

    trained = stages.train(settings, tmp_path / "work", progress=False)
    details = trained.details
    assert details["promote"]["promoted"], details["gate"]["reasons"]
    learned = json_of(tmp_path / "work" / "preprocessing.json")["vocabularies"]
    assert set(learned["brand"]) <= set(batches["brand"]) and learned["brand"]
    assert all(f.startswith("FERM-") for f in learned["fermenter"])
    assert learned["yeast_strain"] == []  # the brewery records no strain: all "missing"
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    logged = mlflow.artifacts.load_dict(
        f"runs:/{details['register']['run_id']}/reports/vocabularies.json"
    )
    assert logged == learned  # the vocabulary travels with the registered model
    assert learned["yeast_strain"] == []  # the brewery records no strain: all "missing"
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    logged = mlflow.artifacts.load_dict(
        f"runs:/{details['register']['run_id']}/reports/vocabularies.json"
    )
    assert logged == learned  # the vocabulary travels with the registered model

    server, base = start_service(settings.home)
    try:
        meta = httpx.get(f"{base}/metadata", headers=KEY, timeout=30).json()
        assert meta["model"]["vocabularies"]["brand"] == learned["brand"]
        test = pd.read_parquet(tmp_path / "work" / "test.parquet")
        known = test[test["brand"].isin(learned["brand"])].head(3)
        rows = _rows(known)
        stranger = {**rows[0], "brand": "a_brand_from_elsewhere", "batch_id": "stranger-1"}
        response = httpx.post(
            f"{base}/predict", json={"rows": [*rows, stranger]}, headers=KEY, timeout=60
        )
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert [p["unknown_categories"] for p in predictions] == [[], [], [], ["brand"]]
        assert predictions[-1]["out_of_distribution"] is True
        assert all(p["familiarity_distance"] is not None for p in predictions)
        notes = response.json()["notes"]
        assert any("1 of 4 snapshot(s) lie outside" in n for n in notes), notes
        # A brewery with no history here: brand and fermenter both unknown, said plainly.
        elsewhere = {**rows[0], "brand": "b", "fermenter": "tank-9", "batch_id": "stranger-2"}
        response = httpx.post(
            f"{base}/predict", json={"rows": [elsewhere]}, headers=KEY, timeout=60
        )
        assert "never saw" in response.json()["notes"][0]
        assert "trained on" in response.json()["notes"][0]
    finally:
        server.stop()
    monitored = stages.monitor(settings).details
    assert monitored["new_values"] == {
        "brand": {"a_brand_from_elsewhere": 1, "b": 1},
        "fermenter": {"tank-9": 1},
    }
    assert monitored["out_of_distribution"]["flagged"] == 2
    report = Path(monitored["report"]).read_text()
    assert "New to the model" in report and "a_brand_from_elsewhere" in report


def json_of(path) -> dict:
    import json

    return json.loads(path.read_text())


def test_the_real_tilt_saison_is_flagged_where_the_simulator_never_went(trained, tmp_path):
    """A model trained on the simulated cellar (hand readings, a few a day) scores a real
    saison logged by a Tilt every few minutes, with its first two days missing: the
    service's familiarity flags the snapshots whose reading cadence no training batch had,
    and the model ranks the saison's snapshots right without learning the cadence."""
    from sklearn.metrics import roc_auc_score

    from brewcast.contract import META_FAMILIARITY, META_THRESHOLD, Familiarity, read_metadata
    from devtools.realdata import SAISON, real_snapshots
    from models.pipeline import score_model

    snaps = real_snapshots(Settings(home=tmp_path / "home"), SAISON)
    _, work = trained
    model = (work / "model.onnx").read_bytes()
    familiarity = Familiarity.from_json(read_metadata(model)[META_FAMILIARITY])
    inputs = Familiarity.inputs(snaps)
    flagged = familiarity.distance(inputs) > familiarity.threshold
    logging = snaps["gravity_readings_count"] > 0
    # every snapshot with Tilt readings is out of the simulator's cadence; before the
    # logging began (no gravity yet) a snapshot looks like any other early one
    assert flagged[logging.to_numpy()].mean() > 0.9 and not flagged[~logging.to_numpy()].any()
    furthest = pd.Series(familiarity.furthest(inputs))[flagged]
    assert furthest.value_counts().index[0] == "gravity_readings_per_day"
    probability, hours = score_model(model, snaps)
    y = snaps["finished_within_horizon"].to_numpy(dtype=bool)
    assert 0 < y.sum() < len(y)
    assert roc_auc_score(y, probability) > 0.9  # later snapshots score higher
    threshold = float(read_metadata(model)[META_THRESHOLD])
    early = (probability >= threshold) & ~y
    mae = np.abs(hours - snaps["hours_remaining"]).mean()
    # What the note reports: the slow real tail makes it call "finished" early, and the
    # flag is up on every one of those calls.
    print(
        f"tilt saison: {len(snaps)} snapshots, {flagged.mean():.0%} flagged, AUC "
        f"{roc_auc_score(y, probability):.2f}, hours MAE {mae:.0f} h, {early.sum()} early "
        f"'finished' calls at {snaps['hours_since_pitch'][early].tolist()} h"
    )
    assert flagged[early].all()
