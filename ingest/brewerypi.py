"""Brewery Pi databases: its schema (SQLAlchemy Core), a reader, and a writer for simulations.

Brewery Pi (github.com/brewerypi/brewerypi, ``app/models.py``) models a brewery like a
process historian: Enterprise -> Site -> Area -> Tag, ``TagValue(TagId, Timestamp,
Value)``; categorical tags point to ``Lookup``/``LookupValue``; equipment is an
``Element`` bound to tags through ``ElementAttribute``; batches are ``EventFrame`` rows on
an element. The tables below keep Brewery Pi's table and column names so the reader works
on a real Brewery Pi database (SQLite, MySQL or PostgreSQL URL).

A batch is an EventFrame of the fermentation template on a fermenter; its readings are the
TagValues of the fermenter's gravity (Plato) and temperature tags inside the frame's
window; brand and yeast come from lookup-valued tags. Gravity and temperature values are
converted from the unit their tag declares (``UnitOfMeasurement``, through the tag or its
attribute template: °F, SG, ...) to °P and °C; a tag without a unit the reader knows is an
error naming it, unless the user maps it. Tags are found through the
element's attributes (by ElementAttributeTemplate name) or, for installations without
attributes, by Brewery Pi's starter naming ``{Element.Name}_{Attribute}`` (``FV01_Plato``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from brewcast.schema import BATCHES, READINGS
from brewcast.units import (
    CANONICAL,
    QUANTITY_OF,
    UnitError,
    from_canonical,
    parse_unit,
    to_canonical,
)

log = logging.getLogger(__name__)

metadata = sa.MetaData()
_id = sa.Integer

Enterprise = sa.Table(
    "Enterprise",
    metadata,
    sa.Column("EnterpriseId", _id, primary_key=True),
    sa.Column("Abbreviation", sa.String(10), nullable=False),
    sa.Column("Description", sa.String(255)),
    sa.Column("Name", sa.String(45), nullable=False),
    sa.UniqueConstraint("Abbreviation", name="AK__Abbreviation"),
    sa.UniqueConstraint("Name", name="AK__Name"),
)
Site = sa.Table(
    "Site",
    metadata,
    sa.Column("SiteId", _id, primary_key=True),
    sa.Column("Abbreviation", sa.String(10), nullable=False),
    sa.Column("Description", sa.String(255)),
    sa.Column("EnterpriseId", _id, sa.ForeignKey("Enterprise.EnterpriseId"), nullable=False),
    sa.Column("Name", sa.String(45), nullable=False),
)
Area = sa.Table(
    "Area",
    metadata,
    sa.Column("AreaId", _id, primary_key=True),
    sa.Column("Abbreviation", sa.String(10), nullable=False),
    sa.Column("Description", sa.String(255)),
    sa.Column("Name", sa.String(45), nullable=False),
    sa.Column("SiteId", _id, sa.ForeignKey("Site.SiteId"), nullable=False),
)
UnitOfMeasurement = sa.Table(
    "UnitOfMeasurement",
    metadata,
    sa.Column("UnitOfMeasurementId", _id, primary_key=True),
    sa.Column("Abbreviation", sa.String(15), nullable=False),
    sa.Column("Name", sa.String(45), nullable=False),
)
Lookup = sa.Table(
    "Lookup",
    metadata,
    sa.Column("LookupId", _id, primary_key=True),
    sa.Column("EnterpriseId", _id, sa.ForeignKey("Enterprise.EnterpriseId"), nullable=False),
    sa.Column("Name", sa.String(45), nullable=False),
)
LookupValue = sa.Table(
    "LookupValue",
    metadata,
    sa.Column("LookupValueId", _id, primary_key=True),
    sa.Column("Name", sa.String(45), nullable=False),
    sa.Column("Selectable", sa.Boolean, nullable=False),
    sa.Column("LookupId", _id, sa.ForeignKey("Lookup.LookupId"), nullable=False),
    sa.Column("Value", sa.Integer, nullable=False),
    sa.UniqueConstraint("LookupId", "Value", name="AK__LookupId__Value"),
)
Tag = sa.Table(
    "Tag",
    metadata,
    sa.Column("TagId", _id, primary_key=True),
    sa.Column("AreaId", _id, sa.ForeignKey("Area.AreaId"), nullable=False),
    sa.Column("Description", sa.String(255)),
    sa.Column("LookupId", _id, sa.ForeignKey("Lookup.LookupId")),
    sa.Column("Name", sa.String(45), nullable=False),
    sa.Column("UnitOfMeasurementId", _id, sa.ForeignKey("UnitOfMeasurement.UnitOfMeasurementId")),
    sa.UniqueConstraint("AreaId", "Name", name="AK__AreaId__Name"),
)
TagValue = sa.Table(
    "TagValue",
    metadata,
    sa.Column("TagValueId", _id, primary_key=True),
    sa.Column("TagId", _id, sa.ForeignKey("Tag.TagId"), nullable=False),
    sa.Column("Timestamp", sa.DateTime, nullable=False),
    sa.Column("Value", sa.Float, nullable=False),
    sa.UniqueConstraint("TagId", "Timestamp", name="AK__TagId__Timestamp"),
    sa.Index("IX__Timestamp", "Timestamp"),
)
ElementTemplate = sa.Table(
    "ElementTemplate",
    metadata,
    sa.Column("ElementTemplateId", _id, primary_key=True),
    sa.Column("Description", sa.String(255)),
    sa.Column("Name", sa.String(45), nullable=False),
    sa.Column("SiteId", _id, sa.ForeignKey("Site.SiteId"), nullable=False),
)
Element = sa.Table(
    "Element",
    metadata,
    sa.Column("ElementId", _id, primary_key=True),
    sa.Column("Description", sa.String(255)),
    sa.Column(
        "ElementTemplateId", _id, sa.ForeignKey("ElementTemplate.ElementTemplateId"), nullable=False
    ),
    sa.Column("Name", sa.String(45), nullable=False),
    sa.Column("TagAreaId", _id, sa.ForeignKey("Area.AreaId")),
)
ElementAttributeTemplate = sa.Table(
    "ElementAttributeTemplate",
    metadata,
    sa.Column("ElementAttributeTemplateId", _id, primary_key=True),
    sa.Column("Description", sa.String(255)),
    sa.Column(
        "ElementTemplateId", _id, sa.ForeignKey("ElementTemplate.ElementTemplateId"), nullable=False
    ),
    sa.Column("LookupId", _id, sa.ForeignKey("Lookup.LookupId")),
    sa.Column("Name", sa.String(45), nullable=False),
    sa.Column("UnitOfMeasurementId", _id, sa.ForeignKey("UnitOfMeasurement.UnitOfMeasurementId")),
)
ElementAttribute = sa.Table(
    "ElementAttribute",
    metadata,
    sa.Column("ElementAttributeId", _id, primary_key=True),
    sa.Column(
        "ElementAttributeTemplateId",
        _id,
        sa.ForeignKey("ElementAttributeTemplate.ElementAttributeTemplateId"),
        nullable=False,
    ),
    sa.Column("ElementId", _id, sa.ForeignKey("Element.ElementId"), nullable=False),
    sa.Column("TagId", _id, sa.ForeignKey("Tag.TagId"), nullable=False),
)
EventFrameTemplate = sa.Table(
    "EventFrameTemplate",
    metadata,
    sa.Column("EventFrameTemplateId", _id, primary_key=True),
    sa.Column("Description", sa.String(255)),
    sa.Column("ElementTemplateId", _id, sa.ForeignKey("ElementTemplate.ElementTemplateId")),
    sa.Column("Name", sa.String(45), nullable=False),
    sa.Column("Order", sa.Integer, nullable=False),
    sa.Column(
        "ParentEventFrameTemplateId", _id, sa.ForeignKey("EventFrameTemplate.EventFrameTemplateId")
    ),
)
EventFrame = sa.Table(
    "EventFrame",
    metadata,
    sa.Column("EventFrameId", _id, primary_key=True),
    sa.Column("ElementId", _id, sa.ForeignKey("Element.ElementId")),
    sa.Column("EndTimestamp", sa.DateTime),
    sa.Column(
        "EventFrameTemplateId",
        _id,
        sa.ForeignKey("EventFrameTemplate.EventFrameTemplateId"),
        nullable=False,
    ),
    sa.Column("Name", sa.String(45), nullable=False),
    sa.Column("ParentEventFrameId", _id, sa.ForeignKey("EventFrame.EventFrameId")),
    sa.Column("StartTimestamp", sa.DateTime, nullable=False),
    sa.UniqueConstraint(
        "ElementId",
        "EventFrameTemplateId",
        "StartTimestamp",
        name="AK__ElementId_EventFrameTemplateId_StartTimestamp",
    ),
)

#: ElementAttributeTemplate (or tag-suffix) name -> brewcast column. Readings first.
READING_ATTRIBUTES = {"Plato": "gravity_plato", "Temperature": "temperature_c"}
BATCH_ATTRIBUTES = {
    "Brand": "brand",
    "Yeast": "yeast_strain",
    "Original Gravity": "original_gravity_plato",
    "Pitch Temperature": "pitch_temperature_c",
    "Pitch Rate": "pitch_rate_million_cells_per_ml_plato",
    "Dissolved Oxygen": "dissolved_oxygen_ppm",
    "Ambient Temperature": "ambient_temperature_c",
    "Yeast Generation": "yeast_generation",
}
LOOKUP_COLUMNS = {"brand": "Brands", "yeast_strain": "Yeast Strains"}


class BreweryPiError(RuntimeError):
    """The Brewery Pi database cannot be read as brewcast needs it (the message says why)."""


def category_key(name: str) -> str:
    """A Brewery Pi lookup name as a vocabulary value ("Munich Helles" -> munich_helles)."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def _tag_suffix(attribute: str) -> str:
    return attribute.replace(" ", "")


def _naive_utc(ts: pd.Timestamp) -> datetime:
    return pd.Timestamp(ts).tz_convert("UTC").tz_localize(None).to_pydatetime()


@dataclass
class BreweryPiReport:
    frames: int = 0
    readings: int = 0
    readings_outside_frames: int = 0
    ignored_attributes: set[str] = field(default_factory=set)
    unknown_lookup_values: int = 0
    #: brewcast column -> the units its tags declared (before conversion).
    units: dict[str, set[str]] = field(default_factory=dict)


def read_brewerypi(
    url: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    event_frame_template: str = "Fermentation",
    unit_overrides: dict[str, str] | None = None,
    attributes: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, BreweryPiReport]:
    """Batches pitched in ``[start, end)`` and readings taken in ``[start, end)``.

    Readings are kept when they fall inside a fermentation frame of their fermenter (frames
    that began before ``start`` included); readings outside every frame are counted and left.
    ``unit_overrides`` (tag name -> unit) wins over what the database declares, for tags
    whose unit is missing or wrong there. ``attributes`` (the brewery's attribute template
    or tag-suffix name -> brewcast column, e.g. ``{"Gravity": "gravity_plato"}``) names
    what an installation calls otherwise; it wins over the default names.
    """
    names = attribute_names(attributes or {})
    safe_url = make_url(url).render_as_string(hide_password=True)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            _check_tables(conn, safe_url)
            return _read(
                conn, safe_url, start, end, event_frame_template, unit_overrides or {}, names
            )
    except SQLAlchemyError as exc:
        raise BreweryPiError(
            f"Brewery Pi database {safe_url}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
        ) from exc
    finally:
        engine.dispose()


def attribute_names(custom: dict[str, str]) -> dict[str, str]:
    """Attribute name -> brewcast column: the brewery's own names first, then the defaults."""
    known = {*READING_ATTRIBUTES.values(), *BATCH_ATTRIBUTES.values()}
    unknown = sorted(set(custom.values()) - known)
    if unknown:
        raise BreweryPiError(
            f"BREWCAST_BREWERYPI_ATTRIBUTES maps to unknown column(s) {unknown}; "
            f"columns: {sorted(known)}"
        )
    return {**custom, **READING_ATTRIBUTES, **BATCH_ATTRIBUTES}


def _check_tables(conn: sa.Connection, url: str) -> None:
    present = set(sa.inspect(conn).get_table_names())
    missing = sorted(set(metadata.tables) - present)
    if missing:
        raise BreweryPiError(
            f"Brewery Pi database {url} lacks table(s) {missing}; is it a Brewery Pi database?"
        )


def _read(
    conn: sa.Connection,
    url: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    template: str,
    unit_overrides: dict[str, str],
    names: dict[str, str],
) -> tuple[pd.DataFrame, pd.DataFrame, BreweryPiReport]:
    report = BreweryPiReport()
    lo, hi = _naive_utc(start), _naive_utc(end)
    frames = _frames(conn, lo, hi, template)
    if frames.empty:
        eft = EventFrameTemplate
        count = sa.select(sa.func.count()).select_from(eft).where(eft.c.Name == template)
        if conn.execute(count).scalar() == 0:
            raise BreweryPiError(
                f"Brewery Pi database {url}: no EventFrameTemplate named "
                f"{template!r} (set BREWCAST_BREWERYPI_EVENT_FRAME_TEMPLATE)"
            )
        return BATCHES.empty(), READINGS.empty(), report
    report.frames = len(frames)
    tags = _element_tags(
        conn, url, frames[["ElementId", "Element"]].drop_duplicates(), report, names
    )
    lookups = pd.DataFrame(
        conn.execute(sa.select(LookupValue.c.LookupId, LookupValue.c.Value, LookupValue.c.Name))
        .mappings()
        .all(),
        columns=["LookupId", "Value", "Name"],
    )
    lookup_names = {
        (int(r.LookupId), int(r.Value)): category_key(r.Name) for r in lookups.itertuples()
    }

    window_lo = min(lo, frames["StartTimestamp"].min())
    tv = pd.DataFrame(
        conn.execute(
            sa.select(TagValue.c.TagId, TagValue.c.Timestamp, TagValue.c.Value).where(
                TagValue.c.TagId.in_([int(t) for t in tags["TagId"]]),
                TagValue.c.Timestamp >= window_lo,
                TagValue.c.Timestamp < hi,
            )
        )
        .mappings()
        .all(),
        columns=["TagId", "Timestamp", "Value"],
    )
    tv = tv.merge(tags, on="TagId")
    tv["Value"] = _canonical_values(tv, url, unit_overrides, report)

    batch_rows, reading_parts = [], []
    for frame in frames.itertuples(index=False):
        readings, batch = _frame_values(frame, tv, lookup_names, report, lo, hi)
        reading_parts.append(readings)
        if batch is not None:
            batch_rows.append(batch)
    readings = pd.concat(reading_parts, ignore_index=True) if reading_parts else READINGS.empty()
    in_interval = tv[(tv["kind"] == "reading") & (tv["Timestamp"] >= lo)]
    report.readings = len(readings)
    report.readings_outside_frames = len(in_interval) - len(readings)
    batches = pd.DataFrame(batch_rows, columns=BATCHES.names)
    return (
        BATCHES.conform(batches, source=f"{url} EventFrame"),
        READINGS.conform(readings, source=f"{url} TagValue"),
        report,
    )


def _frames(conn: sa.Connection, lo: datetime, hi: datetime, template: str) -> pd.DataFrame:
    """The EventFrames of ``template`` open at some time in ``[lo, hi)``, with their element."""
    ef, eft, el = EventFrame, EventFrameTemplate, Element
    return pd.DataFrame(
        conn.execute(
            sa.select(
                ef.c.EventFrameId,
                ef.c.Name,
                ef.c.StartTimestamp,
                ef.c.EndTimestamp,
                el.c.ElementId,
                el.c.Name.label("Element"),
            )
            .join(eft, ef.c.EventFrameTemplateId == eft.c.EventFrameTemplateId)
            .join(el, ef.c.ElementId == el.c.ElementId)
            .where(
                eft.c.Name == template,
                ef.c.StartTimestamp < hi,
                sa.or_(ef.c.EndTimestamp.is_(None), ef.c.EndTimestamp >= lo),
            )
            .order_by(ef.c.StartTimestamp)
        )
        .mappings()
        .all()
    )


def _frame_values(
    frame,
    tv: pd.DataFrame,
    lookup_names: dict[tuple[int, int], str],
    report: BreweryPiReport,
    lo: datetime,
    hi: datetime,
) -> tuple[pd.DataFrame, dict | None]:
    """One frame's readings taken in ``[lo, hi)``, and its batch row when it was pitched then."""
    f_end = frame.EndTimestamp if pd.notna(frame.EndTimestamp) else pd.Timestamp.max
    mine = tv[
        (tv["ElementId"] == frame.ElementId)
        & (tv["Timestamp"] >= frame.StartTimestamp)
        & (tv["Timestamp"] <= f_end)
    ]
    readings = mine[(mine["kind"] == "reading") & (mine["Timestamp"] >= lo)]
    out = pd.DataFrame(
        {
            "batch_id": frame.Name,
            "tag": readings["column"],
            "timestamp": readings["Timestamp"],
            "value": readings["Value"].astype("float64"),
        }
    )
    batch = None
    if lo <= frame.StartTimestamp < hi:
        batch = _batch_row(frame, mine[mine["kind"] == "batch"], lookup_names, report, hi)
    return out, batch


def _tags(conn: sa.Connection, bound: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, str | None]]:
    """Every tag (id, name, lookup, own unit), and each tag's unit: its own, else that of
    the attribute template it is ``bound`` through."""
    template_unit = {
        int(t): u
        for t, u in zip(bound["TagId"], bound["TemplateUnitId"], strict=True)
        if pd.notna(u)
    }
    named = pd.DataFrame(
        conn.execute(
            sa.select(
                Tag.c.TagId,
                Tag.c.Name,
                Tag.c.LookupId,
                UnitOfMeasurement.c.Abbreviation.label("Unit"),
            ).outerjoin(
                UnitOfMeasurement,
                Tag.c.UnitOfMeasurementId == UnitOfMeasurement.c.UnitOfMeasurementId,
            )
        )
        .mappings()
        .all(),
        columns=["TagId", "Name", "LookupId", "Unit"],
    )
    unit_names = dict(
        conn.execute(
            sa.select(UnitOfMeasurement.c.UnitOfMeasurementId, UnitOfMeasurement.c.Abbreviation)
        ).all()
    )
    # The tag's own unit, else its attribute template's.
    tag_unit = {
        int(t): u if isinstance(u, str) and u.strip() else unit_names.get(template_unit.get(int(t)))
        for t, u in zip(named["TagId"], named["Unit"], strict=True)
    }
    return named, tag_unit


def _element_tags(
    conn: sa.Connection,
    url: str,
    elements: pd.DataFrame,
    report: BreweryPiReport,
    names: dict[str, str],
) -> pd.DataFrame:
    """Per element: TagId, the brewcast column it feeds, and whether it is a reading (the
    first of ``names`` found per column)."""
    ea, eat = ElementAttribute, ElementAttributeTemplate
    ids = [int(e) for e in elements["ElementId"]]
    bound = pd.DataFrame(
        conn.execute(
            sa.select(
                ea.c.ElementId,
                eat.c.Name.label("Attribute"),
                Tag.c.TagId,
                Tag.c.LookupId,
                eat.c.UnitOfMeasurementId.label("TemplateUnitId"),
            )
            .join(eat, ea.c.ElementAttributeTemplateId == eat.c.ElementAttributeTemplateId)
            .join(Tag, ea.c.TagId == Tag.c.TagId)
            .where(ea.c.ElementId.in_(ids))
        )
        .mappings()
        .all(),
        columns=["ElementId", "Attribute", "TagId", "LookupId", "TemplateUnitId"],
    )
    named, tag_unit = _tags(conn, bound)
    # Installations without element attributes: Brewery Pi's starter names, FV01_Plato.
    by_name = {name: (tid, lid) for tid, name, lid, _ in named.itertuples(index=False)}
    tag_name = dict(zip(named["TagId"], named["Name"], strict=True))
    rows = []
    for element_id, element in elements.itertuples(index=False):
        mine = bound[bound["ElementId"] == element_id]
        found = {
            a: (t, lk)
            for a, t, lk in mine[["Attribute", "TagId", "LookupId"]].itertuples(index=False)
        }
        report.ignored_attributes |= set(found) - set(names)
        fed: set[str] = set()
        for attribute, column in names.items():
            tag = found.get(attribute) or by_name.get(f"{element}_{_tag_suffix(attribute)}")
            if tag is None or column in fed:
                continue
            fed.add(column)
            kind = "reading" if column in READING_ATTRIBUTES.values() else "batch"
            tid = int(tag[0])
            lookup = None if pd.isna(tag[1]) else int(tag[1])
            rows.append((element_id, tid, column, kind, lookup, tag_name[tid], tag_unit.get(tid)))
        if not any(r[0] == element_id and r[2] == "gravity_plato" for r in rows):
            raise BreweryPiError(
                f"Brewery Pi database {url}: fermenter element {element!r} has no gravity tag "
                f"(an ElementAttribute named 'Plato' or a tag named '{element}_Plato'; name "
                f'yours with BREWCAST_BREWERYPI_ATTRIBUTES=\'{{"Gravity": "gravity_plato"}}\')'
            )
    return pd.DataFrame(
        rows, columns=["ElementId", "TagId", "column", "kind", "LookupId", "TagName", "Unit"]
    )


def _canonical_values(
    values: pd.DataFrame, url: str, overrides: dict[str, str], report: BreweryPiReport
) -> pd.Series:
    """Each TagValue in brewcast's unit: gravity and temperature tags converted from the unit
    they declare (or the user's override); other values as they are."""
    out = values["Value"].astype("float64").copy()
    for (tag, column), rows in values.groupby(["TagName", "column"], sort=False):
        quantity = QUANTITY_OF.get(column)
        if quantity is None:
            continue
        unit = overrides.get(tag) or rows["Unit"].iloc[0]
        if unit is None or (isinstance(unit, float) and np.isnan(unit)):
            unit = None
        try:
            out[rows.index] = to_canonical(
                rows["Value"].to_numpy(), unit, quantity, f"Brewery Pi {url} tag {tag!r}"
            )
        except UnitError as exc:
            raise BreweryPiError(
                f'{exc} (map it with BREWCAST_BREWERYPI_UNITS=\'{{"{tag}": "°F"}}\')'
            ) from exc
        report.units.setdefault(column, set()).add(parse_unit(unit, quantity, tag))
    return out


def _batch_row(
    frame,
    values: pd.DataFrame,
    lookup_names: dict[tuple[int, int], str],
    report: BreweryPiReport,
    hi: datetime,
) -> dict:
    row: dict[str, object] = {c: None for c in BATCHES.names}
    row.update(
        batch_id=frame.Name,
        fermenter=frame.Element,
        start_time=frame.StartTimestamp,
        end_time=frame.EndTimestamp
        if pd.notna(frame.EndTimestamp) and frame.EndTimestamp < hi
        else None,
    )
    # The first value of each attribute inside the frame is the one entered at pitch.
    for column, group in values.sort_values("Timestamp").groupby("column", sort=False):
        first = group.iloc[0]
        if column in LOOKUP_COLUMNS:
            key = (
                (int(first["LookupId"]), int(first["Value"]))
                if pd.notna(first["LookupId"])
                else None
            )
            name = lookup_names.get(key) if key else None
            if name is None:
                report.unknown_lookup_values += 1
            row[column] = name
        else:
            row[column] = float(first["Value"])
    return row


def write_brewerypi(
    url: str,
    batches: pd.DataFrame,
    readings: pd.DataFrame,
    units: dict[str, str] | None = None,
) -> None:
    """Write raw tables into a new Brewery Pi database, as a brewery's cellar would have them.

    Used by the simulator (``brewcast simulate --to brewerypi``) and by the tests. Values
    Brewery Pi cannot store (missing readings) are left out, as a hand-entered log would.
    ``units`` (quantity -> unit, e.g. ``{"temperature": "°F", "gravity": "SG"}``) is how the
    brewery records: values are converted to it and its tags declare it. Lookup values are
    the batches' own brands and strains.
    """
    engine = sa.create_engine(url)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            _write(conn, batches, readings, {**CANONICAL, **(units or {})})
    finally:
        engine.dispose()


def _write(
    conn: sa.Connection, batches: pd.DataFrame, readings: pd.DataFrame, units: dict[str, str]
) -> None:
    conn.execute(
        Enterprise.insert(), [dict(EnterpriseId=1, Abbreviation="BC", Name="Brewcast Brewing")]
    )
    conn.execute(
        Site.insert(), [dict(SiteId=1, Abbreviation="HQ", EnterpriseId=1, Name="Main Brewery")]
    )
    conn.execute(Area.insert(), [dict(AreaId=1, Abbreviation="CEL", Name="Cellar", SiteId=1)])
    unit_ids = {quantity: i for i, quantity in enumerate(sorted(units), start=1)}
    conn.execute(
        UnitOfMeasurement.insert(),
        [
            dict(UnitOfMeasurementId=i, Abbreviation=units[q], Name=f"{q} ({units[q]})")
            for q, i in unit_ids.items()
        ],
    )
    lookups = _write_lookups(conn, batches)
    attributes = {**READING_ATTRIBUTES, **BATCH_ATTRIBUTES}
    conn.execute(ElementTemplate.insert(), [dict(ElementTemplateId=1, Name="Fermenter", SiteId=1)])
    conn.execute(
        ElementAttributeTemplate.insert(),
        [
            dict(
                ElementAttributeTemplateId=i,
                ElementTemplateId=1,
                Name=name,
                LookupId=lookups[column][0] if column in lookups else None,
            )
            for i, (name, column) in enumerate(attributes.items(), start=1)
        ],
    )
    conn.execute(
        EventFrameTemplate.insert(),
        [dict(EventFrameTemplateId=1, ElementTemplateId=1, Name="Fermentation", Order=1)],
    )
    fermenters = sorted(batches["fermenter"].unique())
    tag_id = _write_tags(conn, fermenters, attributes, lookups, unit_ids)
    frame_rows, value_rows = [], []
    for i, b in enumerate(batches.itertuples(index=False), start=1):
        start = _naive_utc(b.start_time)
        frame_rows.append(
            dict(
                EventFrameId=i,
                ElementId=fermenters.index(b.fermenter) + 1,
                EventFrameTemplateId=1,
                Name=b.batch_id,
                StartTimestamp=start,
                EndTimestamp=None if pd.isna(b.end_time) else _naive_utc(b.end_time),
            )
        )
        for column in BATCH_ATTRIBUTES.values():
            value = getattr(b, column)
            if column in lookups:
                value = lookups[column][1].get(value)
            elif column in QUANTITY_OF and value is not None and not pd.isna(value):
                value = float(
                    from_canonical(value, units[QUANTITY_OF[column]], QUANTITY_OF[column])
                )
            if value is not None and not pd.isna(value):
                value_rows.append(
                    dict(TagId=tag_id[(b.fermenter, column)], Timestamp=start, Value=float(value))
                )
    conn.execute(EventFrame.insert(), frame_rows)
    value_rows.extend(_reading_values(batches, readings, tag_id, units))
    conn.execute(TagValue.insert(), value_rows)


def _write_lookups(
    conn: sa.Connection, batches: pd.DataFrame
) -> dict[str, tuple[int, dict[str, int]]]:
    """One Lookup per lookup column, holding the batches' own values: column -> (LookupId,
    {value: LookupValue.Value})."""
    out = {}
    for lookup_id, (column, lookup_name) in enumerate(LOOKUP_COLUMNS.items(), start=1):
        conn.execute(Lookup.insert(), [dict(LookupId=lookup_id, EnterpriseId=1, Name=lookup_name)])
        values = sorted(batches[column].dropna().astype(str).unique())
        codes = {name: code for code, name in enumerate(values, start=1)}
        if codes:
            conn.execute(
                LookupValue.insert(),
                [
                    dict(
                        Name=name.replace("_", " ").title(),
                        Selectable=True,
                        LookupId=lookup_id,
                        Value=code,
                    )
                    for name, code in codes.items()
                ],
            )
        out[column] = (lookup_id, codes)
    return out


def _write_tags(
    conn: sa.Connection,
    fermenters: list[str],
    attributes: dict[str, str],
    lookups: dict[str, tuple[int, dict[str, int]]],
    unit_ids: dict[str, int],
) -> dict[tuple[str, str], int]:
    """Each fermenter's element and its tags (unit declared on gravity and temperature
    tags); (fermenter, column) -> TagId."""
    tag_id: dict[tuple[str, str], int] = {}
    for element_id, fermenter in enumerate(fermenters, start=1):
        conn.execute(
            Element.insert(),
            [dict(ElementId=element_id, ElementTemplateId=1, Name=fermenter, TagAreaId=1)],
        )
        for template_id, (name, column) in enumerate(attributes.items(), start=1):
            tid = len(tag_id) + 1
            tag_id[(fermenter, column)] = tid
            quantity = QUANTITY_OF.get(column)
            conn.execute(
                Tag.insert(),
                [
                    dict(
                        TagId=tid,
                        AreaId=1,
                        Name=f"{fermenter}_{_tag_suffix(name)}",
                        LookupId=lookups[column][0] if column in lookups else None,
                        UnitOfMeasurementId=unit_ids[quantity] if quantity else None,
                    )
                ],
            )
            conn.execute(
                ElementAttribute.insert(),
                [dict(ElementAttributeTemplateId=template_id, ElementId=element_id, TagId=tid)],
            )
    return tag_id


def _reading_values(
    batches: pd.DataFrame,
    readings: pd.DataFrame,
    tag_id: dict[tuple[str, str], int],
    units: dict[str, str],
) -> list[dict]:
    """The TagValue rows of the readings, in the brewery's units."""
    fermenter_of = dict(zip(batches["batch_id"], batches["fermenter"], strict=True))
    kept = readings[readings["value"].notna() & readings["batch_id"].isin(fermenter_of)]
    tag_ids = np.array(
        [tag_id[(fermenter_of[b], t)] for b, t in zip(kept["batch_id"], kept["tag"], strict=True)],
        dtype=np.int64,
    )
    values = kept["value"].to_numpy(dtype="float64").copy()
    for tag, quantity in QUANTITY_OF.items():
        mine = (kept["tag"] == tag).to_numpy()
        if mine.any():
            values[mine] = from_canonical(values[mine], units[quantity], quantity)
    stamps = kept["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).dt.to_pydatetime()
    return [
        dict(TagId=int(t), Timestamp=ts, Value=float(v))
        for t, ts, v in zip(tag_ids, stamps, values, strict=True)
    ]
