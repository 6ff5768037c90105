"""What a validation found, as plain data: the failed expectations read from a GX result,
each partition's verdict and outcome, a run's totals, and the report kept next to the rows it
holds back. Nothing here writes files or talks to GX; ``validate`` does both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from brewcast import lake
from brewcast.schema import Table

EXAMPLES_PER_FAILURE = 5

#: Rules whose failure can go away while the partition's source stays the same: a reading's
#: batch may arrive later (``known_batch`` in ``suites``). A partition held back by one of them
#: is marked for retry in its report, so the next run validates it again.
RETRYABLE_RULES: frozenset[str] = frozenset({"known_batch"})


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
class Verdict:
    """What validation decided for one partition: the rows it holds back (``bad``), each
    row's reasons (empty for a good row), the failures behind them, and whether the whole
    partition is rejected."""

    bad: np.ndarray
    reasons: pd.Series
    failures: list[FailedExpectation]
    whole: bool

    @property
    def retry(self) -> bool:
        """Whether the next run must validate this partition again (see RETRYABLE_RULES)."""
        return any(f.rule in RETRYABLE_RULES for f in self.failures)


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
    #: {column: {value: rows}}: categories the training reference does not have (a new
    #: brand, fermenter or strain): reported, never a failure.
    new_values: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Checked again only because its held-back rows wait (a retryable rule), its source
    #: unchanged: failing again for those rules alone is no new failure.
    retried: bool = False

    @property
    def success(self) -> bool:
        return not self.failures

    @property
    def new_failure(self) -> bool:
        """Whether this outcome is news: it failed, and not merely still waiting."""
        if not self.failures:
            return False
        return not (self.retried and all(f.rule in RETRYABLE_RULES for f in self.failures))


@dataclass
class ValidationRun:
    outcomes: list[PartitionOutcome] = field(default_factory=list)
    data_docs: str | None = None
    #: Raw partitions not checked again: unchanged since their rows went to quarantine.
    still_quarantined: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        """No new failure: a partition still quarantined, unchanged since, is none."""
        return not any(o.new_failure for o in self.outcomes)

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

    def new_values(self) -> dict[str, dict[str, dict[str, int]]]:
        """{table: {column: {value: rows}}} over the run: what the model has not seen."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for o in self.outcomes:
            for column, counts in o.new_values.items():
                acc = out.setdefault(o.table, {}).setdefault(column, {})
                for value, n in counts.items():
                    acc[value] = acc.get(value, 0) + n
        return out

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
        for table, columns in self.new_values().items():
            for column, counts in columns.items():
                shown = ", ".join(f"{v} ({n})" for v, n in sorted(counts.items())[:8])
                more = f" and {len(counts) - 8} more" if len(counts) > 8 else ""
                lines.append(
                    f"new {column} in {table} (not in the training reference; kept): {shown}{more}"
                )
        waiting = sum(o.retried and o.failures and not o.new_failure for o in self.outcomes)
        if self.still_quarantined or waiting:
            lines.append(
                f"still quarantined (unchanged since, not a new failure): "
                f"{len(self.still_quarantined) + waiting} partition(s)"
            )
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
                "new_values": self.new_values(),
                "data_docs": self.data_docs,
                "still_quarantined": self.still_quarantined,
                "partitions": [_outcome_json(o) for o in self.outcomes],
            },
            indent=2,
            default=str,
        )


def _outcome_json(outcome: PartitionOutcome) -> dict:
    """An outcome for the run summary, without the row numbers behind its examples (one per
    failing row: a large partition's would make the summary as large as the data)."""
    report = asdict(outcome)
    for failure in report["failures"]:
        failure.pop("examples_index", None)
    return report


def reason_report(outcome: PartitionOutcome, verdict: Verdict, policy: str) -> dict:
    """The report kept next to a partition's quarantined rows: its outcome, the policy that
    applied, every failed expectation, and the retry marker the lake's staleness check reads
    (a structured field: a rule's name in the text, say in an example, means nothing)."""
    report = _outcome_json(outcome)
    report["policy"] = policy
    report["failed_expectations"] = report.pop("failures")
    report[lake.RETRY_FIELD] = verdict.retry
    return report


def failures_from(
    result, frame: pd.DataFrame, table: Table
) -> tuple[list[FailedExpectation], dict[int, list[str]]]:
    """A GX checkpoint result's failed expectations, and per failing row number (of
    ``frame``, the frame it checked) the rules it broke."""
    failures, by_row = [], {}
    for suite_result in result.run_results.values():
        for r in suite_result.results:
            if r.success:
                continue
            config = r.expectation_config
            meta = config.meta or {}
            rule, scope = meta.get("rule", config.type), meta.get("scope", "table")
            if scope == "report":  # never a failure (it cannot fail: mostly=0)
                continue
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
                    examples=examples(frame, indices, table, column),
                    error=_error(r),
                    examples_index=indices,
                )
            )
    failures.sort(key=lambda f: f.rule)
    return failures, by_row


def examples(
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
    if not rows:
        return []
    records = json.loads(head.to_json(orient="records", date_format="iso"))
    return [{k: lake.clip(v) for k, v in record.items()} for record in records]


def _error(result) -> str | None:
    info = result.exception_info or {}
    if "raised_exception" in info:
        message = info.get("exception_message") if info.get("raised_exception") else None
        return lake.clip(message, lake.MAX_REASON_CHARS)  # type: ignore[return-value]
    messages = [
        v.get("exception_message")
        for v in info.values()
        if isinstance(v, dict) and v.get("raised_exception")
    ]
    text = "; ".join(m for m in messages if m) or None
    return lake.clip(text, lake.MAX_REASON_CHARS)  # type: ignore[return-value]


def _plain(value: Any) -> Any:
    """``value`` as JSON can hold it, cut to a bounded size (a 50 MB value stays out)."""
    try:
        text = json.dumps(value)
    except TypeError:
        return lake.clip(str(value), lake.MAX_REASON_CHARS)
    if len(text) <= lake.MAX_REASON_CHARS:
        return value
    return lake.clip(text, lake.MAX_REASON_CHARS)
