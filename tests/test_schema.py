"""The one schema, and every view derived from it, agree."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from brewcast import schema
from brewcast.schema import BATCHES, FEATURES, READINGS, SchemaError
from ingest import brewerypi, simulator


def test_tables_have_unique_columns_and_valid_keys():
    for table in schema.TABLES.values():
        assert len(set(table.names)) == len(table.names)
        assert set(table.key) <= set(table.names)
        assert table[table.partition_by].dtype == "timestamp"


def test_feature_roles_partition_the_model_inputs():
    inputs = {c.name for c in schema.numeric_features()} | {
        c.name for c in schema.categorical_features()
    }
    labels = {c.name for c in FEATURES.by_role("label")}
    keys = {c.name for c in FEATURES.by_role("key")}
    meta = {c.name for c in FEATURES.by_role("meta")}
    assert schema.LABEL in labels and schema.REGRESSION_TARGET in labels
    assert inputs | labels | keys | meta == set(FEATURES.names)
    assert not inputs & labels and not inputs & meta
    # a flag for people, a count that measures the brewery's reading habit more than the
    # fermentation, and the season (a slice key: a time split cannot cover every season):
    # none is a model input
    assert meta == {"original_gravity_derived", "gravity_readings_count", "season"}
    assert set(schema.slice_keys()) == {"brand", "style", "yeast_strain", "fermenter", "season"}
    assert all(FEATURES[k].is_categorical for k in schema.slice_keys())


def test_batch_metadata_columns_reappear_as_features_with_the_same_ranges():
    for column in BATCHES.columns:
        if column.role == "feature":
            feature = FEATURES[column.name]
            assert (
                feature.dtype,
                feature.unit,
                feature.min,
                feature.max,
                feature.vocabulary,
                feature.open,
            ) == (
                column.dtype,
                column.unit,
                column.min,
                column.max,
                column.vocabulary,
                column.open,
            )


def test_a_brewerys_own_names_are_open_categories_not_part_of_the_fingerprint():
    """Brands, fermenters and strains are learned per model: the schema declares none, so a
    brewery with other names validates, and its model's fingerprint is the default world's."""
    names = {"brand", "style", "yeast_strain", "fermenter"}
    assert {c.name for c in FEATURES.columns if c.open} == names
    assert all(FEATURES[n].vocabulary is None for n in names)
    assert FEATURES["season"].vocabulary == schema.SEASONS  # a closed set stays declared
    with pytest.raises(ValueError, match="open category"):
        schema.Column("x", "string", "", vocabulary=("a",), open=True)


def test_simulator_catalogue_is_consistent():
    assert set(simulator.BRANDS) == set(simulator.RECIPES)
    assert set(simulator.COOLING_CAPACITY) == set(simulator.FERMENTERS)
    for recipe in simulator.RECIPES.values():
        assert set(recipe.strains) <= set(simulator.YEAST_STRAINS)
    for strain in simulator.STRAINS.values():  # DOMAIN.md: AA roughly 0.63-0.80
        assert 0.6 <= strain.attenuation[0] < strain.attenuation[1] <= 0.8


def test_brewerypi_mapping_covers_every_batch_and_reading_column():
    # the fermenter is the element itself; a Brewery Pi database records no style
    not_attributes = {"fermenter", "style"}
    mapped = set(brewerypi.BATCH_ATTRIBUTES.values())
    expected = {c.name for c in BATCHES.columns if c.role == "feature"} - not_attributes
    assert mapped == expected
    assert set(brewerypi.READING_ATTRIBUTES.values()) == set(READINGS["tag"].vocabulary)
    assert (
        set(brewerypi.LOOKUP_COLUMNS)
        == {c.name for c in BATCHES.columns if c.is_categorical} - not_attributes
    )


def test_arrow_schema_round_trips_conformed_frames(small_world):
    for table, frame in ((BATCHES, small_world.batches), (READINGS, small_world.readings)):
        arrow = pa.Table.from_pandas(frame, schema=table.arrow_schema(), preserve_index=False)
        assert arrow.schema.equals(table.arrow_schema())
        back = table.conform(arrow.to_pandas(), "roundtrip")
        pd.testing.assert_frame_equal(back, frame.reset_index(drop=True))


def test_conform_names_missing_columns_and_bad_types():
    good = pd.DataFrame(
        {
            "batch_id": ["b1"],
            "tag": ["gravity_plato"],
            "timestamp": ["2026-01-01T00:00:00Z"],
            "value": ["12.5"],
        }
    )
    out = READINGS.conform(good, "ok.csv")
    assert out["value"].dtype == "float64" and str(out["timestamp"].dtype) == "datetime64[us, UTC]"
    with pytest.raises(SchemaError, match=r"x\.csv.*missing column.*'value'"):
        READINGS.conform(good.drop(columns="value"), "x.csv")
    with pytest.raises(SchemaError, match=r"y\.csv.*'value'.*non-numeric.*twelve"):
        READINGS.conform(good.assign(value="twelve"), "y.csv")
    with pytest.raises(SchemaError, match=r"z\.csv.*unexpected column.*'colour'"):
        READINGS.conform(good.assign(colour="red"), "z.csv")
    with pytest.raises(SchemaError, match=r"w\.csv.*'timestamp'"):
        READINGS.conform(good.assign(timestamp="not a time"), "w.csv")
    with pytest.raises(SchemaError, match=r"key column 'batch_id' has 1 missing"):
        READINGS.conform(good.assign(batch_id=None), "v.csv")


def test_conform_keeps_out_of_range_rows_for_validation():
    frame = pd.DataFrame(
        {
            "batch_id": ["b1"],
            "tag": ["gravity_plato"],
            "timestamp": [pd.Timestamp("2026-01-01", tz="UTC")],
            "value": [999.0],
        }
    )
    assert READINGS.conform(frame, "t")["value"].tolist() == [999.0]


def test_season_of_months():
    ts = pd.Series(
        pd.to_datetime(["2026-01-15", "2026-04-01", "2026-07-01", "2026-10-31"], utc=True)
    )
    assert schema.season_of(ts).tolist() == ["winter", "spring", "summer", "autumn"]
