"""Great Expectations suites generated from the one schema (plus the training reference).

Each expectation carries ``meta.rule`` (a stable, readable name such as
``range:value[gravity_plato]``) and ``meta.scope``: ``row`` when GX can name the failing
rows (they can be split off), ``table`` when the check is about the partition as a whole
(types, emptiness, distribution drift), so only the whole partition can fail.
"""

from __future__ import annotations

import math
from typing import Any

from brewcast.schema import READING_VALUE_RANGES, Column, Table
from brewcast.settings import Settings
from validation import checks

#: ExpectColumnValuesToBeOfType names for the schema's dtypes, with pandas 3 in GX 1.24.
GX_TYPES = {
    "float64": "float64",
    "int64": "int64",
    "string": "str",
    "timestamp": "Timestamp",
    "bool": "bool",
}


def suite_name(table: Table) -> str:
    return f"brewcast-{table.name}"


def _meta(rule: str, scope: str, why: str) -> dict[str, Any]:
    return {"meta": {"rule": rule, "scope": scope}, "notes": why}


def build_expectations(
    table: Table,
    settings: Settings,
    reference: dict[str, dict[str, float]] | None = None,
    rows: int | None = None,
    batches: int | None = None,
    known: dict[str, list[str]] | None = None,
) -> list:
    """The expectations for ``table``; distribution ones only with a reference and enough rows.

    ``batches`` (distinct batches among the rows) sets the sampling-noise allowance: the
    snapshots of one batch are not independent draws. ``known`` (the training reference's
    categories) adds a report-only expectation per open category, so Data Docs lists the
    values the model has not seen without failing on them.
    """
    import great_expectations.expectations as gxe

    out: list = [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=1, **_meta("not_empty", "table", "An empty partition carries no data.")
        )
    ]
    for col in table.columns:
        out += _column_expectations(col, known)
    out.append(_unique_key(table))
    out += _table_specific(table, settings)
    if reference and rows is not None and rows >= settings.distribution_min_rows:
        out += _distribution(table, settings, reference, batches or rows)
    return out


def _column_expectations(col: Column, known: dict[str, list[str]] | None) -> list:
    """One schema column's own expectations: presence, type, nulls, closed vocabulary, the
    report-only new values of an open category, and the physical range."""
    import great_expectations.expectations as gxe

    out: list = []
    out.append(
        gxe.ExpectColumnToExist(
            column=col.name, **_meta(f"exists:{col.name}", "table", "Schema column.")
        )
    )
    out.append(
        gxe.ExpectColumnValuesToBeOfType(
            column=col.name,
            type_=GX_TYPES[col.dtype],
            **_meta(f"type:{col.name}", "table", f"Schema dtype {col.dtype}."),
        )
    )
    if not col.nullable:
        out.append(
            gxe.ExpectColumnValuesToNotBeNull(
                column=col.name, **_meta(f"not_null:{col.name}", "row", "Required value.")
            )
        )
    if col.vocabulary is not None:
        out.append(
            gxe.ExpectColumnValuesToBeInSet(
                column=col.name,
                value_set=list(col.vocabulary),
                **_meta(f"vocabulary:{col.name}", "row", "Not one of the schema's values."),
            )
        )
    if col.open and known and known.get(col.name):
        out.append(
            gxe.ExpectColumnValuesToBeInSet(
                column=col.name,
                value_set=list(known[col.name]),
                mostly=0.0,  # reported, never failed: a new brand is news, not an error
                **_meta(
                    f"new_values:{col.name}",
                    "report",
                    "Values the training reference does not have (a new brand, "
                    "fermenter or strain): counted in the summary, served as "
                    "out-of-vocabulary until a model learns them.",
                ),
            )
        )
    if col.min is not None or col.max is not None:
        out.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=col.name,
                min_value=col.min,
                max_value=col.max,
                **_meta(
                    f"range:{col.name}",
                    "row",
                    f"Physically plausible range [{col.min}, {col.max}] {col.unit or ''}.",
                ),
            )
        )
    return out


def _unique_key(table: Table):
    import great_expectations.expectations as gxe

    meta = _meta("unique_key", "row", f"One row per {', '.join(table.key)}.")
    if len(table.key) == 1:
        return gxe.ExpectColumnValuesToBeUnique(column=table.key[0], **meta)
    return gxe.ExpectCompoundColumnsToBeUnique(column_list=list(table.key), **meta)


def _table_specific(table: Table, settings: Settings) -> list:
    if table.name == "readings":
        return _per_tag() + _reading_context(settings)
    if table.name == "batches":
        return _batch_context(settings)
    return []


def _per_tag() -> list:
    """A reading's value checks that depend on what it measures: its range and its unit."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column as Row

    out = [
        gxe.ExpectColumnValuesToBeBetween(
            column="value",
            min_value=low,
            max_value=high,
            row_condition=Row("tag") == tag,
            **_meta(f"range:value[{tag}]", "row", f"Plausible {tag} in [{low}, {high}]."),
        )
        for tag, (low, high) in READING_VALUE_RANGES.items()
    ]
    return out + [
        gxe.ExpectColumnValuesToBeNull(
            column=checks.LIKELY_UNIT,
            row_condition=Row("tag") == tag,
            **_meta(
                f"unit:value[{tag}]",
                "row",
                f"The batch's {tag} values only make sense in another unit (the example's "
                f"{checks.LIKELY_UNIT}): declare the unit at the source; never guessed.",
            ),
        )
        for tag in READING_VALUE_RANGES
    ]


def _reading_context(settings: Settings) -> list:
    """A reading in its context: its batch, the clock, its batch's earlier gravity."""
    import great_expectations.expectations as gxe

    future_h = settings.future_tolerance_minutes / 60.0
    rise, creep, dip = (
        settings.max_gravity_rise_plato,
        settings.max_gravity_cumulative_rise_plato,
        settings.max_gravity_dip_plato,
    )
    return [
        gxe.ExpectColumnValuesToNotBeNull(
            column="value", **_meta("not_null:value", "row", "A reading needs a value.")
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column=checks.HOURS_AFTER_PITCH,
            **_meta(
                "known_batch",
                "row",
                "The reading's batch is in no batches table "
                "(yet): it waits in quarantine until its batch arrives.",
            ),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=checks.HOURS_AFTER_PITCH,
            min_value=-future_h,
            **_meta("inside_batch_window:start", "row", "Taken before the batch was pitched."),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=checks.HOURS_AFTER_END,
            max_value=future_h,
            **_meta("inside_batch_window:end", "row", "Taken after the batch's frame closed."),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=checks.HOURS_IN_FUTURE,
            max_value=future_h,
            **_meta("not_in_future", "row", "Timestamp later than now: clock or typo."),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=checks.GRAVITY_RISE,
            max_value=rise,
            **_meta(
                "gravity_not_rising",
                "row",
                "Gravity only falls during fermentation; a rise is a typo or a mislabelled sample.",
            ),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=checks.GRAVITY_RISE_SINCE_MIN,
            max_value=creep,
            **_meta(
                "gravity_not_creeping_up",
                "row",
                f"Gravity rose above the batch's lowest earlier reading by more than {creep} "
                "°P, in steps each small enough to pass gravity_not_rising.",
            ),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=checks.GRAVITY_DIP,
            max_value=dip,
            **_meta(
                "gravity_not_truncated",
                "row",
                f"More than {dip} °P below both batch neighbours: a value cut short (18.0 "
                "read as 1), not a fermentation.",
            ),
        ),
    ]


def _batch_context(settings: Settings) -> list:
    import great_expectations.expectations as gxe

    future_h = settings.future_tolerance_minutes / 60.0
    return [
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="end_time",
            column_B="start_time",
            or_equal=False,
            ignore_row_if="either_value_is_missing",
            **_meta("end_after_start", "row", "A frame ends after it starts."),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=checks.HOURS_IN_FUTURE,
            max_value=future_h,
            **_meta("not_in_future", "row", "Pitched later than now: clock or typo."),
        ),
    ]


def _distribution(
    table: Table, settings: Settings, reference: dict[str, dict[str, float]], samples: int
) -> list:
    """Mean and median within ``drift_tolerance_std`` reference std, plus three standard
    errors of ``samples`` independent draws (sampling noise must not page anyone)."""
    import great_expectations.expectations as gxe

    out = []
    for name, ref in sorted(reference.items()):
        if name not in table.names or not ref["std"] > 0:
            continue
        tol = settings.drift_tolerance_std * ref["std"] + 3.0 * ref["std"] / math.sqrt(samples)
        why = (
            f"Training reference {ref['mean']:.3g} ± {tol:.3g}: a larger shift is gross "
            f"drift (or a unit change) and must not reach training silently."
        )
        out.append(
            gxe.ExpectColumnMeanToBeBetween(
                column=name,
                min_value=ref["mean"] - tol,
                max_value=ref["mean"] + tol,
                **_meta(f"drift:mean:{name}", "table", why),
            )
        )
        out.append(
            gxe.ExpectColumnMedianToBeBetween(
                column=name,
                min_value=ref["median"] - tol,
                max_value=ref["median"] + tol,
                **_meta(f"drift:median:{name}", "table", why),
            )
        )
    return out
