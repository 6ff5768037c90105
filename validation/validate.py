"""Validate lake partitions with Great Expectations; publish the good rows, quarantine the rest.

One checkpoint per table (``brewcast-batches``, ``brewcast-readings``,
``brewcast-features``) in a file-backed GX context under ``HOME/gx``, created on first
use. Each partition file is validated on its own and gives two outputs with the same
name: its good rows in the publish stage (``validated/`` or ``features/``) and its bad
rows in ``quarantine/`` next to a ``.reason.json`` that names every failed expectation
with counts and examples. Rows in = rows published + rows quarantined, always. Re-running
rewrites the same files, so validation is idempotent.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from brewcast import lake
from brewcast.schema import BATCHES, FEATURES, READINGS, SchemaError, Table
from brewcast.settings import Settings
from validation import checks, suites
from validation.reference import load_reference

log = logging.getLogger(__name__)

REASONS_COLUMN = "quarantine_reasons"
EXAMPLES_PER_FAILURE = 5


@dataclass
class FailedExpectation:
    rule: str
    expectation: str
    scope: str
    column: str | None
    unexpected_count: int | None
    observed: Any = None
    examples: list[dict] = field(default_factory=list)
    error: str | None = None
    examples_index: list[int] = field(default_factory=list, repr=False)


@dataclass
class PartitionOutcome:
    table: str
    source: str
    date: str
    rows_in: int
    rows_published: int
    rows_quarantined: int
    partition_rejected: bool
    failures: list[FailedExpectation]
    published_file: str | None = None
    quarantine_file: str | None = None

    @property
    def success(self) -> bool:
        return not self.failures


@dataclass
class ValidationRun:
    outcomes: list[PartitionOutcome] = field(default_factory=list)
    data_docs: str | None = None

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    def totals(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for o in self.outcomes:
            t = out.setdefault(
                o.table, dict(files=0, rows_in=0, published=0, quarantined=0, rejected_partitions=0)
            )
            t["files"] += 1
            t["rows_in"] += o.rows_in
            t["published"] += o.rows_published
            t["quarantined"] += o.rows_quarantined
            t["rejected_partitions"] += int(o.partition_rejected)
        return out

    def failure_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            for f in o.failures:
                counts[f.rule] = counts.get(f.rule, 0) + (f.unexpected_count or 1)
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def summary(self) -> str:
        lines = []
        for table, t in self.totals().items():
            lines.append(
                f"{table:9s} {t['files']:4d} file(s)  {t['rows_in']:9d} rows in  "
                f"{t['published']:9d} passed  {t['quarantined']:7d} quarantined  "
                f"({t['rejected_partitions']} whole partition(s))"
            )
        failures = self.failure_counts()
        if failures:
            lines.append("failed expectations (rows or partitions):")
            lines += [f"  {rule:34s} {n}" for rule, n in list(failures.items())[:12]]
        if self.data_docs:
            lines.append(f"data docs: {self.data_docs}")
        lines.append("PASSED" if self.success else "QUARANTINED SOME DATA")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {
                "success": self.success,
                "totals": self.totals(),
                "failures": self.failure_counts(),
                "data_docs": self.data_docs,
                "partitions": [asdict(o) for o in self.outcomes],
            },
            indent=2,
            default=str,
        )


def _public(outcome: PartitionOutcome) -> dict:
    data = asdict(outcome)
    for failure in data["failures"]:
        failure.pop("examples_index", None)
    return data


class Validator:
    """A file-backed GX context with one checkpoint per table, created on first use."""

    def __init__(self, settings: Settings):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.settings = settings
        logging.getLogger("great_expectations").setLevel(logging.WARNING)  # INFO floods logs
        settings.home.mkdir(parents=True, exist_ok=True)  # GX keeps its project in HOME/gx
        self.context = gx.get_context(mode="file", project_root_dir=str(settings.home))
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


def _error(result) -> str | None:
    info = result.exception_info or {}
    if "raised_exception" in info:
        return info.get("exception_message") if info.get("raised_exception") else None
    messages = [
        v.get("exception_message")
        for v in info.values()
        if isinstance(v, dict) and v.get("raised_exception")
    ]
    return "; ".join(m for m in messages if m) or None


def _failures(
    result, frame: pd.DataFrame, table: Table
) -> tuple[list[FailedExpectation], dict[int, list[str]]]:
    """Failed expectations, and per failing row number the rules it broke."""
    failures, by_row = [], {}
    for suite_result in result.run_results.values():
        for r in suite_result.results:
            if r.success:
                continue
            config = r.expectation_config
            meta = config.meta or {}
            rule, scope = meta.get("rule", config.type), meta.get("scope", "table")
            details = r.result or {}
            indices = [int(i) for i in details.get("unexpected_index_list") or []]
            if scope == "row" and not indices and details.get("unexpected_count"):
                scope = "table"  # GX could not name the rows: fail the partition, lose nothing
            for i in indices:
                by_row.setdefault(i, []).append(rule)
            column = config.kwargs.get("column")
            failures.append(
                FailedExpectation(
                    rule=rule,
                    expectation=config.type,
                    scope=scope,
                    column=column,
                    unexpected_count=details.get(
                        "unexpected_count", None if not indices else len(indices)
                    ),
                    observed=_plain(details.get("observed_value")),
                    examples=_examples(frame, indices, table, column),
                    error=_error(r),
                    examples_index=indices,
                )
            )
    failures.sort(key=lambda f: f.rule)
    return failures, by_row


def _examples(
    frame: pd.DataFrame,
    rows: list[int],
    table: Table,
    column: str | None,
    limit: int | None = EXAMPLES_PER_FAILURE,
) -> list[dict]:
    """The first ``limit`` failing rows (all given, with None), as JSON records of the key
    columns and the checked column."""
    shown = [c for c in dict.fromkeys((*table.key, column)) if c and c in frame.columns]
    head = frame.loc[rows[:limit], shown]
    return json.loads(head.to_json(orient="records", date_format="iso")) if rows else []


def _plain(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


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
    now: pd.Timestamp | None = None,
) -> list[PartitionOutcome]:
    """Validate many partitions in one checkpoint run, then write each one's two outputs.

    One run per table and call keeps Data Docs readable (one entry per run, not per file)
    and its cost flat. Row-level failures are split off per partition; a table-level
    failure rejects every partition of the run. With a ``reference``, the rows with
    ``snapshot_time > reference_since`` (data the model has not seen) are checked for
    distribution drift in a second run; if that fails, their partitions are rejected whole.
    """
    if not parts:
        return []
    settings = validator.settings
    now = now if now is not None else pd.Timestamp.now("UTC")
    frame = pd.concat([p.frame for p in parts], ignore_index=True)
    owner = np.repeat(np.arange(len(parts)), [len(p.frame) for p in parts])
    checked = checks.add_checks(frame, table, now, batches, previous_gravity)
    result = validator.run(table, checked, suites.build_expectations(table, settings))
    failures, by_row = _failures(result, checked, table)
    rejected_all = any(f.scope == "table" for f in failures)

    drift_failures: list[FailedExpectation] = []
    drift_parts: set[int] = set()
    if reference and table is FEATURES:
        since = (
            reference_since if reference_since is not None else pd.Timestamp.min.tz_localize("UTC")
        )
        new_rows = (frame["snapshot_time"] > since).to_numpy()
        if new_rows.sum() >= settings.distribution_min_rows:
            expectations = suites.build_expectations(
                table,
                settings,
                reference,
                rows=int(new_rows.sum()),
                batches=int(frame.loc[new_rows, "batch_id"].nunique()),
            )
            drift = validator.run(table, checked[new_rows].reset_index(drop=True), expectations)
            drift_failures = [
                f for f in _failures(drift, checked, table)[0] if f.rule.startswith("drift:")
            ]
            if drift_failures:
                drift_parts = set(np.unique(owner[new_rows]).tolist())

    failing_rows = [_rows_by_part(f, owner) for f in failures]
    narrowed = [
        _narrow_by_part(f, rows, checked, table)
        for f, rows in zip(failures, failing_rows, strict=True)
    ]
    starts = np.concatenate([[0], np.cumsum([len(p.frame) for p in parts])])
    writes = []  # each partition's two output files, written on the I/O threads at the end
    # One conversion to Arrow for the run; each partition writes zero-copy slices of it.
    arrow = pa.Table.from_pandas(frame, schema=table.arrow_schema(), preserve_index=False)
    for i, part in enumerate(parts):
        size = int(starts[i + 1] - starts[i])
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
        rows = arrow.slice(int(starts[i]), size)
        writes.append((settings, table, part, rows, publish_stage, bad, reasons, mine, whole))
    return lake.io_map(lambda args: _write_outputs(*args), writes)


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
    examples = iter(
        _examples(
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
            [next(examples) for _ in rows],
            failure.error,
        )
        for p, rows in shown.items()
    }


def _write_outputs(
    settings: Settings,
    table: Table,
    part: Part,
    rows: pa.Table,
    publish_stage: str,
    bad: np.ndarray,
    reasons: pd.Series,
    failures: list[FailedExpectation],
    whole: bool,
) -> PartitionOutcome:
    """Write one partition's good rows to ``publish_stage`` and its bad rows, with their
    reasons, to quarantine (``rows``: the partition as Arrow, sliced from the run's table)."""
    good_count, bad_count = int((~bad).sum()), int(bad.sum())
    name = f"part-{part.label}.parquet"
    date_dir = f"date={part.date}"
    published = lake.table_dir(settings.lake_dir, publish_stage, table) / date_dir / name
    quarantined = lake.table_dir(settings.lake_dir, "quarantine", table) / date_dir / name
    reason_file = quarantined.with_name(f"part-{part.label}.reason.json")
    if good_count:
        lake.write_file(published, rows if not bad_count else rows.filter(pa.array(~bad)))
    else:
        published.unlink(missing_ok=True)
    outcome = PartitionOutcome(
        table=table.name,
        source=part.source,
        date=part.date,
        rows_in=rows.num_rows,
        rows_published=good_count,
        rows_quarantined=bad_count,
        partition_rejected=bool(whole and rows.num_rows),
        failures=failures,
        published_file=str(published) if good_count else None,
        quarantine_file=str(quarantined) if bad_count else None,
    )
    if bad_count:
        bad_rows = rows if not good_count else rows.filter(pa.array(bad))
        lake.write_file(
            quarantined,
            bad_rows.append_column(
                pa.field(REASONS_COLUMN, pa.string()),
                pa.array(reasons[bad].to_numpy(dtype=object), pa.string()),
            ),
        )
        report = _public(outcome)
        report["policy"] = settings.validation_policy
        report["failed_expectations"] = report.pop("failures")
        lake.write_text(reason_file, json.dumps(report, indent=2, default=str))
    else:
        quarantined.unlink(missing_ok=True)
        reason_file.unlink(missing_ok=True)
    if outcome.rows_published + outcome.rows_quarantined != len(part.frame):
        raise AssertionError(f"{part.source}: rows lost in validation ({outcome})")
    return outcome


def _label_of(path: Path) -> str:
    return path.name.removeprefix("part-").removesuffix(".parquet")


def _needs_validation(settings: Settings, raw_file: Path, table: Table, stage: str) -> bool:
    """True unless this raw file's outputs are newer than it and nothing waits in quarantine."""
    date_dir = raw_file.parent.name
    published = lake.table_dir(settings.lake_dir, stage, table) / date_dir / raw_file.name
    quarantined = lake.table_dir(settings.lake_dir, "quarantine", table) / date_dir / raw_file.name
    reason = quarantined.with_name(raw_file.name.removesuffix(".parquet") + ".reason.json")
    if reason.exists() and '"known_batch"' in reason.read_text():
        return True  # readings waiting for their batch: try again
    return not (published.exists() and published.stat().st_mtime_ns >= raw_file.stat().st_mtime_ns)


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

    Only raw files that changed since their last validation (or that have rows waiting in
    quarantine) are validated, unless ``everything``.
    """
    validator = Validator(settings)
    run = ValidationRun()
    raw_batches = lake.read_table(settings.lake_dir, "raw", BATCHES)
    for table in (BATCHES, READINGS):
        files = lake.partition_files(settings.lake_dir, "raw", table)
        todo = [
            f for f in files if everything or _needs_validation(settings, f, table, "validated")
        ]
        parts = []
        conformed = _conform_files(table, todo, lake.io_map(_read_or_error, todo))
        for path, frame in zip(todo, conformed, strict=True):
            if isinstance(frame, Exception):
                lake.quarantine_file(settings.lake_dir, path, str(frame), move=False)
                continue
            parts.append(
                Part(frame, path.parent.name.removeprefix("date="), _label_of(path), str(path))
            )
        log.info("validating %d of %d raw %s file(s)", len(parts), len(files), table.name)
        previous = None
        if table is READINGS and parts:
            previous = _gravity_history(
                settings,
                exclude={Path(p.source).relative_to(settings.lake_dir / "raw") for p in parts},
            )
        run.outcomes += validate_parts(
            validator, table, parts, batches=raw_batches, previous_gravity=previous, now=now
        )
    _finish(settings, validator, run)
    return run


def _gravity_history(settings: Settings, exclude: set[Path]) -> pd.DataFrame:
    """Validated gravity readings outside the files being (re)validated now."""
    base = settings.lake_dir / "validated"
    files = [
        f
        for f in lake.partition_files(settings.lake_dir, "validated", READINGS)
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
        lake.quarantine_file(settings.lake_dir, path, str(exc), move=False)
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
            lake.read_table(settings.lake_dir, "raw", BATCHES),
            frame if table is BATCHES else BATCHES.empty(),
        ]
    )
    dates = frame[table.partition_by].dt.strftime("%Y-%m-%d")
    parts = [Part(part, date, label, str(path)) for date, part in frame.groupby(dates, sort=True)]
    parts = parts or [Part(frame, "none", label, str(path))]  # header only: fails not_empty
    run.outcomes += validate_parts(validator, table, parts, batches=batches, now=now)
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
    dates = snapshots["snapshot_time"].dt.strftime("%Y-%m-%d")
    parts = [
        Part(part, date, label, "dataset builder")
        for date, part in snapshots.groupby(dates, sort=True)
    ]
    run = ValidationRun()
    run.outcomes += validate_parts(
        validator,
        FEATURES,
        parts,
        publish_stage="features",
        reference=reference["features"] if reference else None,
        reference_since=pd.Timestamp(reference["until"]) if reference else None,
        now=now,
    )
    keep = {Path(o.published_file) for o in run.outcomes if o.published_file}
    for old in lake.partition_files(settings.lake_dir, "features", FEATURES):
        if old.name == f"part-{label}.parquet" and old not in keep:
            old.unlink()  # a partition this build no longer has (or now quarantined whole)
    _finish(settings, validator, run)
    return run


#: Validation results kept in the GX store (and Data Docs) per suite; older ones are pruned
#: so the store and the Data Docs index stay bounded under hourly runs.
KEEP_RESULTS = 100


def _finish(settings: Settings, validator: Validator, run: ValidationRun) -> None:
    gx_root = settings.home / "gx" / "uncommitted"
    for store in (gx_root / "validations", gx_root / "data_docs" / "local_site" / "validations"):
        for runs in store.glob("*/__none__"):
            for old in sorted(p for p in runs.iterdir() if p.is_dir())[:-KEEP_RESULTS]:
                shutil.rmtree(old)
    run.data_docs = validator.data_docs()
    _log_run(settings, run)


def _log_run(settings: Settings, run: ValidationRun) -> None:
    """Keep the run's machine-readable summary (MLflow runs attach it) and log one line."""
    path = lake.write_text(settings.home / "validation" / "last_run.json", run.to_json())
    log.info(
        "validation %s: %s; summary in %s",
        "passed" if run.success else "quarantined data",
        run.totals(),
        path,
    )
