"""Validate lake partitions with Great Expectations; publish the good rows, quarantine the rest.

One checkpoint per table (``brewcast-batches``, ``brewcast-readings``,
``brewcast-features``) in a file-backed GX context under ``HOME/gx``, created on first
use. Each partition file is validated on its own and gives two outputs with the same
name: its good rows in the publish stage (``validated/`` or ``features/``) and its bad
rows in ``quarantine/`` next to a ``.reason.json`` that names every failed expectation
with counts and examples. Rows in = rows published + rows quarantined, always. Re-running
rewrites the same files, so validation is idempotent.

This module makes the decisions (which rows and partitions pass, and why) and runs GX;
where the outputs go, how they are written and which raw files are stale are the lake's
(:mod:`brewcast.lake`), and the results themselves are plain data (:mod:`validation.results`).
"""

from __future__ import annotations

import itertools
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from brewcast import lake
from brewcast.schema import BATCHES, FEATURES, READINGS, SchemaError, Table
from brewcast.settings import Settings
from validation import checks, suites
from validation.reference import load_reference
from validation.results import (
    EXAMPLES_PER_FAILURE,
    RETRYABLE_RULES,
    FailedExpectation,
    PartitionOutcome,
    ValidationRun,
    Verdict,
    examples,
    failures_from,
    reason_report,
)

__all__ = [
    "REASONS_COLUMN",
    "RETRYABLE_RULES",
    "FailedExpectation",
    "PartitionOutcome",
    "ValidationRun",
    "Validator",
    "publish_features",
    "validate_file",
    "validate_lake",
]

log = logging.getLogger(__name__)

REASONS_COLUMN = lake.REASONS_COLUMN

#: Validation results kept in the GX store (and Data Docs) per suite; older ones are pruned
#: so the store and the Data Docs index stay bounded under hourly runs.
KEEP_RESULTS = 100


class Validator:
    """A file-backed GX context with one checkpoint per table, created on first use."""

    def __init__(self, settings: Settings):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.settings = settings
        logging.getLogger("great_expectations").setLevel(logging.WARNING)  # INFO floods logs
        root = settings.paths.gx_project_root
        root.mkdir(parents=True, exist_ok=True)
        self.context = gx.get_context(mode="file", project_root_dir=str(root))
        bars = self.context.variables.progress_bars
        enabled = (
            bars.get("globally", True)
            if isinstance(bars, dict)
            else getattr(bars, "globally", True)
        )
        if enabled:  # tqdm bars per metric would flood the logs of every DAG run
            self.context.variables.progress_bars = ProgressBarsConfig(
                globally=False, metric_calculations=False
            )
            self.context.variables.save()
        try:
            self.source = self.context.data_sources.get("brewcast")
        except KeyError:
            self.source = self.context.data_sources.add_pandas(name="brewcast")

    def _batch_definition(self, table: Table):
        try:
            asset = self.source.get_asset(table.name)
        except LookupError:
            asset = self.source.add_dataframe_asset(name=table.name)
        try:
            return asset.get_batch_definition("partition")
        except KeyError:
            return asset.add_batch_definition_whole_dataframe("partition")

    def run(self, table: Table, frame: pd.DataFrame, expectations: list):
        import great_expectations as gx
        from great_expectations.checkpoint import UpdateDataDocsAction

        name = suites.suite_name(table)
        suite = self.context.suites.add_or_update(
            gx.ExpectationSuite(name=name, expectations=expectations)
        )
        definition = self.context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=name, data=self._batch_definition(table), suite=suite)
        )
        checkpoint = self.context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=name,
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="update_data_docs")],
                result_format={"result_format": "COMPLETE"},
            )
        )
        return checkpoint.run(batch_parameters={"dataframe": frame})

    def data_docs(self) -> str | None:
        sites = self.context.get_docs_sites_urls()
        return sites[0]["site_url"] if sites else None

    def prune_results(self, keep: int = KEEP_RESULTS) -> None:
        """Keep only the latest ``keep`` results per suite in the store and in Data Docs."""
        gx_root = self.settings.paths.gx_uncommitted
        for store in (
            gx_root / "validations",
            gx_root / "data_docs" / "local_site" / "validations",
        ):
            for runs in store.glob("*/__none__"):
                for old in sorted(p for p in runs.iterdir() if p.is_dir())[:-keep]:
                    shutil.rmtree(old)


@dataclass
class Part:
    """One partition file's rows, and where its outputs go."""

    frame: pd.DataFrame
    date: str
    label: str
    source: str


def validate_parts(
    validator: Validator,
    table: Table,
    parts: list[Part],
    *,
    publish_stage: str = "validated",
    batches: pd.DataFrame | None = None,
    previous_gravity: pd.DataFrame | None = None,
    reference: dict | None = None,
    reference_since: pd.Timestamp | None = None,
    known: dict[str, list[str]] | None = None,
    now: pd.Timestamp | None = None,
) -> list[PartitionOutcome]:
    """Validate many partitions in one checkpoint run, then write each one's two outputs.

    One run per table and call keeps Data Docs readable (one entry per run, not per file)
    and its cost flat. Row-level failures are split off per partition; a table-level
    failure rejects every partition of the run. With a ``reference``, the rows with
    ``snapshot_time > reference_since`` (data the model has not seen) are checked for
    distribution drift in a second run; if that fails, their partitions are rejected whole.
    ``known`` (the reference's categories) makes each outcome count its new values.
    """
    if not parts:
        return []
    settings = validator.settings
    now = now if now is not None else pd.Timestamp.now("UTC")
    frame = pd.concat([p.frame for p in parts], ignore_index=True)
    sizes = [len(p.frame) for p in parts]
    owner = np.repeat(np.arange(len(parts)), sizes)
    checked = checks.add_checks(
        frame, table, now, batches, previous_gravity, settings.max_gravity_dip_plato
    )
    result = validator.run(table, checked, suites.build_expectations(table, settings, known=known))
    failures, by_row = failures_from(result, checked, table)
    drift: tuple[list[FailedExpectation], set[int]] = ([], set())
    if reference and table is FEATURES:
        drift = _drift(validator, table, frame, checked, owner, reference, reference_since)
    verdicts = _verdicts(settings, table, checked, owner, sizes, failures, by_row, drift)
    starts = np.cumsum([0, *sizes[:-1]])
    # One conversion to Arrow for the run; each partition writes zero-copy slices of it.
    arrow = pa.Table.from_pandas(frame, schema=table.arrow_schema(), preserve_index=False)
    writes = [  # each partition's two output files, written on the I/O threads at the end
        (part, arrow.slice(int(start), size), verdict)
        for part, start, size, verdict in zip(parts, starts, sizes, verdicts, strict=True)
    ]
    outcomes = lake.io_map(lambda w: _publish(settings, table, publish_stage, *w), writes)
    counted = new_values(table, frame, owner, len(parts), known)
    for outcome, counts in zip(outcomes, counted, strict=True):
        outcome.new_values = counts
    return outcomes


def new_values(
    table: Table,
    frame: pd.DataFrame,
    owner: np.ndarray,
    parts: int,
    known: dict[str, list[str]] | None,
) -> list[dict[str, dict[str, int]]]:
    """Per partition, {column: {value: rows}} of the open categories ``known`` lacks."""
    out: list[dict[str, dict[str, int]]] = [{} for _ in range(parts)]
    for col in table.columns:
        if not col.open or not known or col.name not in known:
            continue
        values = frame[col.name]
        new = (values.notna() & ~values.isin(known[col.name])).to_numpy()
        if not new.any():
            continue
        counted = pd.DataFrame({"part": owner[new], "value": values[new].astype(str).to_numpy()})
        for (part, value), n in counted.value_counts().items():
            out[int(part)].setdefault(col.name, {})[value] = int(n)
    return out


def _drift(
    validator: Validator,
    table: Table,
    frame: pd.DataFrame,
    checked: pd.DataFrame,
    owner: np.ndarray,
    reference: dict,
    reference_since: pd.Timestamp | None,
) -> tuple[list[FailedExpectation], set[int]]:
    """The drift failures of the rows newer than the reference, and the partitions they are
    in (none when too few rows are new to judge)."""
    settings = validator.settings
    since = reference_since if reference_since is not None else pd.Timestamp.min.tz_localize("UTC")
    new_rows = (frame["snapshot_time"] > since).to_numpy()
    if new_rows.sum() < settings.distribution_min_rows:
        return [], set()
    expectations = suites.build_expectations(
        table,
        settings,
        reference,
        rows=int(new_rows.sum()),
        batches=int(frame.loc[new_rows, "batch_id"].nunique()),
    )
    result = validator.run(table, checked[new_rows].reset_index(drop=True), expectations)
    failures = [f for f in failures_from(result, checked, table)[0] if f.rule.startswith("drift:")]
    return failures, (set(np.unique(owner[new_rows]).tolist()) if failures else set())


def _verdicts(
    settings: Settings,
    table: Table,
    checked: pd.DataFrame,
    owner: np.ndarray,
    sizes: list[int],
    failures: list[FailedExpectation],
    by_row: dict[int, list[str]],
    drift: tuple[list[FailedExpectation], set[int]],
) -> list[Verdict]:
    """Each partition's verdict from the run's failures: its own failures (narrowed to its
    rows), whether it is rejected whole (a table-level failure, the ``partition`` policy, or
    drift under the ``quarantine`` drift policy), and each held-back row's rules."""
    drift_failures, drift_parts = drift
    rejected_all = any(f.scope == "table" for f in failures)
    failing_rows = [_rows_by_part(f, owner) for f in failures]
    narrowed = [
        _narrow_by_part(f, rows, checked, table)
        for f, rows in zip(failures, failing_rows, strict=True)
    ]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    verdicts = []
    for i, size in enumerate(sizes):
        mine = [
            f if f.scope == "table" else by_part[i]
            for f, by_part in zip(failures, narrowed, strict=True)
            if f.scope == "table" or i in by_part
        ]
        whole = (
            rejected_all
            or (i in drift_parts and settings.drift_policy == "quarantine")
            or (settings.validation_policy == "partition" and bool(mine))
        )
        if i in drift_parts:  # reported (the run fails loudly) even when rows are kept
            mine = mine + drift_failures
        if whole:
            reasons = ["; ".join(f.rule for f in mine)] * size
        else:  # each failing row's own rules; only failing rows are visited
            reasons = [""] * size
            for row in {r for by_part in failing_rows for r in by_part.get(i, ())}:
                reasons[row - starts[i]] = "; ".join(by_row[row])
        reasons = pd.Series(reasons, dtype="string")
        bad = np.ones(size, bool) if whole else reasons.str.len().to_numpy() > 0
        verdicts.append(Verdict(bad, reasons, mine, whole))
    return verdicts


def _rows_by_part(failure: FailedExpectation, owner: np.ndarray) -> dict[int, list[int]]:
    """A row-level failure's failing row numbers, grouped by the partition that owns them
    (one pass over them: a run over thousands of partitions stays linear)."""
    if failure.scope == "table" or not failure.examples_index:
        return {}
    rows = np.asarray(failure.examples_index)
    owners = owner[rows]
    order = np.argsort(owners, kind="stable")
    part_ids, starts = np.unique(owners[order], return_index=True)
    groups = np.split(rows[order], starts[1:])
    return {int(p): g.tolist() for p, g in zip(part_ids, groups, strict=True)}


def _narrow_by_part(
    failure: FailedExpectation,
    rows_by_part: dict[int, list[int]],
    checked: pd.DataFrame,
    table: Table,
) -> dict[int, FailedExpectation]:
    """A run-wide row-level failure narrowed to each partition it touches (that partition's
    count and examples). The examples of every partition come from one lookup into the
    run's frame: one per partition costs a take over thousands of Arrow chunks each time."""
    if not rows_by_part:
        return {}
    shown = {p: rows[:EXAMPLES_PER_FAILURE] for p, rows in rows_by_part.items()}
    found = iter(
        examples(
            checked, [r for rows in shown.values() for r in rows], table, failure.column, limit=None
        )
    )
    return {
        p: FailedExpectation(
            failure.rule,
            failure.expectation,
            failure.scope,
            failure.column,
            len(rows_by_part[p]),
            failure.observed,
            [next(found) for _ in rows],
            failure.error,
        )
        for p, rows in shown.items()
    }


def _publish(
    settings: Settings,
    table: Table,
    publish_stage: str,
    part: Part,
    rows: pa.Table,
    verdict: Verdict,
) -> PartitionOutcome:
    """Put one partition's verdict into the lake (``rows``: the partition as Arrow, sliced
    from the run's table): its good rows published, its bad rows and their report held back."""
    outputs = lake.Outputs.of(settings.paths.lake, publish_stage, table, part.date, part.label)
    good_count, bad_count = int((~verdict.bad).sum()), int(verdict.bad.sum())
    outcome = PartitionOutcome(
        table=table.name,
        source=part.source,
        date=part.date,
        rows_in=rows.num_rows,
        rows_published=good_count,
        rows_quarantined=bad_count,
        partition_rejected=bool(verdict.whole and rows.num_rows),
        failures=verdict.failures,
        published_file=str(outputs.published) if good_count else None,
        quarantine_file=str(outputs.quarantined) if bad_count else None,
    )
    report = reason_report(outcome, verdict, settings.validation_policy)
    lake.write_outputs(outputs, rows, verdict.bad, verdict.reasons, report)
    if outcome.rows_published + outcome.rows_quarantined != len(part.frame):
        raise AssertionError(f"{part.source}: rows lost in validation ({outcome})")
    return outcome


def _read_or_error(path: Path) -> pa.Table | Exception:
    """A raw file's Arrow table, or why it cannot be read (it is quarantined, not raised)."""
    try:
        return lake.read_file(path)
    except (pa.ArrowException, OSError) as exc:
        return exc


def _conform_files(
    table: Table, paths: list[Path], reads: list[pa.Table | Exception]
) -> list[pd.DataFrame | Exception]:
    """Each raw file as a conformed frame, or why it cannot be (to quarantine it whole).

    Files of one schema are converted and conformed together, then sliced: one pandas
    conversion and one conform per call instead of one each per file (3,800 files at 1M
    readings, most of validate's time). Mixed schemas, or a conform error, fall back to
    file by file, so a bad file takes only itself to quarantine."""
    tables = [r for r in reads if not isinstance(r, Exception)]
    if len(tables) > 1 and all(t.schema == tables[0].schema for t in tables):
        try:
            whole = table.conform(pa.concat_tables(tables).to_pandas(), source="raw files")
        except (SchemaError, pa.ArrowException):
            pass  # find the culprit file by file below
        else:
            starts = np.cumsum([0, *(t.num_rows for t in tables)])
            slices = iter(
                whole.iloc[a:b].reset_index(drop=True) for a, b in itertools.pairwise(starts)
            )
            return [r if isinstance(r, Exception) else next(slices) for r in reads]
    out: list[pd.DataFrame | Exception] = []
    for path, read in zip(paths, reads, strict=True):
        try:
            if isinstance(read, Exception):
                raise read
            out.append(table.conform(read.to_pandas(), source=str(path)))
        except (SchemaError, pa.ArrowException, OSError) as exc:
            out.append(exc)
    return out


def validate_lake(
    settings: Settings, everything: bool = False, now: pd.Timestamp | None = None
) -> ValidationRun:
    """Validate raw batches, then raw readings (against the batches), into ``validated/``.

    Only raw files the lake finds stale (changed since their last validation, or holding rows
    back for a retryable reason) are validated, unless ``everything``.
    """
    validator = Validator(settings)
    run = ValidationRun()
    known = _known_categories(load_reference(settings))
    raw_batches = lake.read_table(settings.paths.lake, "raw", BATCHES)
    for table in (BATCHES, READINGS):
        files = lake.partition_files(settings.paths.lake, "raw", table)
        todo, retried = _select(settings, table, files, everything, run)
        parts = []
        conformed = _conform_files(table, todo, lake.io_map(_read_or_error, todo))
        for path, frame in zip(todo, conformed, strict=True):
            if isinstance(frame, Exception):
                lake.quarantine_file(settings.paths.lake, path, str(frame), move=False)
                continue
            parts.append(Part(frame, *lake.partition_of(path), str(path)))
        log.info("validating %d of %d raw %s file(s)", len(parts), len(files), table.name)
        previous = None
        if table is READINGS and parts:
            previous = _gravity_history(
                settings,
                exclude={Path(p.source).relative_to(settings.paths.lake / "raw") for p in parts},
            )
        outcomes = validate_parts(
            validator,
            table,
            parts,
            batches=raw_batches,
            previous_gravity=previous,
            known=known,
            now=now,
        )
        for outcome in outcomes:
            outcome.retried = outcome.source in retried
        run.outcomes += outcomes
    _finish(settings, validator, run)
    return run


def _select(
    settings: Settings, table: Table, files: list[Path], everything: bool, run: ValidationRun
) -> tuple[list[Path], set[str]]:
    """The raw files to validate now, and those of them checked again only because their
    rows wait (unchanged since). Unchanged files that hold rows back are listed in
    ``run.still_quarantined``: reported, never re-checked, no new failure."""
    root = settings.paths.lake
    if everything:
        return list(files), set()
    todo, retried = [], set()
    for f in files:
        if lake.needs_validation(root, f, table, "validated"):
            todo.append(f)
            outputs = lake.Outputs.of(root, "validated", table, *lake.partition_of(f))
            if lake.validated_at(root, f, outputs) is not None:
                retried.add(str(f))
        elif lake.still_quarantined(root, f, table, "validated"):
            run.still_quarantined.append(str(f))
    return todo, retried


def _known_categories(reference: dict | None) -> dict[str, list[str]] | None:
    """The training reference's categories (:func:`load_reference`), or None without one."""
    return reference.get("categories") if reference else None


def _gravity_history(settings: Settings, exclude: set[Path]) -> pd.DataFrame:
    """Validated gravity readings outside the files being (re)validated now."""
    base = settings.paths.lake / "validated"
    files = [
        f
        for f in lake.partition_files(settings.paths.lake, "validated", READINGS)
        if f.relative_to(base) not in exclude
    ]
    if not files:
        return READINGS.empty()
    frame = pd.concat(
        [pq.read_table(f, filters=[("tag", "=", "gravity_plato")]).to_pandas() for f in files],
        ignore_index=True,
    )
    return READINGS.conform(frame, source=str(base))


def validate_file(settings: Settings, path: Path, now: pd.Timestamp | None = None) -> ValidationRun:
    """Validate a CSV/Parquet file from anywhere (one table); publish into ``validated/``.

    A file that cannot even be read as its table is copied whole into
    ``quarantine/files/`` with the reason.
    """
    import hashlib

    from ingest.sources import read_drop_file

    run = ValidationRun()
    try:
        table, frame = read_drop_file(path)
    except SchemaError as exc:
        lake.quarantine_file(settings.paths.lake, path, str(exc), move=False)
        run.outcomes.append(
            PartitionOutcome(
                table="file",
                source=str(path),
                date="",
                rows_in=0,
                rows_published=0,
                rows_quarantined=0,
                partition_rejected=True,
                failures=[
                    FailedExpectation("readable", "read_file", "table", None, None, error=str(exc))
                ],
            )
        )
        _log_run(settings, run)
        return run
    validator = Validator(settings)
    label = lake.part_label("file", path.stem, hashlib.sha256(path.read_bytes()).hexdigest()[:12])
    batches = pd.concat(
        [
            lake.read_table(settings.paths.lake, "raw", BATCHES),
            frame if table is BATCHES else BATCHES.empty(),
        ]
    )
    pieces = lake.split_by_date(frame, table).items()
    parts = [Part(piece, date, label, str(path)) for date, piece in pieces]
    parts = parts or [Part(frame, "none", label, str(path))]  # header only: fails not_empty
    run.outcomes += validate_parts(
        validator,
        table,
        parts,
        batches=batches,
        known=_known_categories(load_reference(settings)),
        now=now,
    )
    _finish(settings, validator, run)
    return run


def publish_features(
    settings: Settings, snapshots: pd.DataFrame, now: pd.Timestamp | None = None
) -> ValidationRun:
    """Validate freshly built snapshots against the schema and the training reference;
    good rows become ``features/`` (one file per date), the rest waits in quarantine."""
    validator = Validator(settings)
    reference = load_reference(settings)
    label = "snapshots"
    pieces = lake.split_by_date(snapshots, FEATURES).items()
    parts = [Part(piece, date, label, "dataset builder") for date, piece in pieces]
    run = ValidationRun()
    run.outcomes += validate_parts(
        validator,
        FEATURES,
        parts,
        publish_stage="features",
        reference=reference["features"] if reference else None,
        reference_since=pd.Timestamp(reference["until"]) if reference else None,
        known=_known_categories(reference),
        now=now,
    )
    # Rebuilt whole: a partition this build no longer has (or now holds back whole) goes.
    keep = [Path(o.published_file) for o in run.outcomes if o.published_file]
    lake.remove_vanished(settings.paths.lake, "features", FEATURES, label, keep)
    _finish(settings, validator, run)
    return run


def _finish(settings: Settings, validator: Validator, run: ValidationRun) -> None:
    validator.prune_results()
    run.data_docs = validator.data_docs()
    _log_run(settings, run)


def _log_run(settings: Settings, run: ValidationRun) -> None:
    """Keep the run's machine-readable summary (MLflow runs attach it) and log one line."""
    path = lake.write_text(settings.paths.validation_summary, run.to_json())
    log.info(
        "validation %s: %s; summary in %s",
        "passed" if run.success else "quarantined data",
        run.totals(),
        path,
    )
