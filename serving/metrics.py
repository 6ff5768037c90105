"""brewcast's Prometheus metrics, added up in each worker and written out twice a second.

Under BentoML's multiprocess Prometheus every increment is a locked write to a memory-mapped
file: a batch-1 request made eleven of brewcast's own, 0.1-0.2 ms of its CPU with the cache
misses. Each worker adds them up in memory instead, and a flush writes every changed series
once: every ``FLUSH_SECONDS`` from a daemon thread, and before the worker answers
``/metrics`` (so the worker that answers a scrape reports all it served; another worker's
last half second may be missing until its next flush).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import prometheus_client

from brewcast.schema import OOV
from serving.prediction_log import SLICE_KEYS

PREDICTIONS = prometheus_client.Counter(
    "brewcast_predictions_total", "Rows scored, by decision.", ["decision", "model_version"]
)
PROBABILITY_BY_SLICE = prometheus_client.Summary(
    "brewcast_probability",
    "Served probabilities by slice key and value: _count rows, _sum their probabilities.",
    ["slice", "value"],
)
UNKNOWN_CATEGORIES = prometheus_client.Counter(
    "brewcast_unknown_categories_total",
    "Categorical values served as out-of-vocabulary.",
    ["column"],
)
MODEL_VERSION = prometheus_client.Gauge(
    "brewcast_model_version", "Registered model version being served.", multiprocess_mode="max"
)
LOG_DROPPED = prometheus_client.Counter(
    "brewcast_prediction_log_dropped_rows_total",
    "Rows the async prediction log could not queue (never silent).",
)
LOG_WRITTEN = prometheus_client.Counter(
    "brewcast_prediction_log_written_rows_total", "Rows committed to the prediction log."
)
MODEL_SECONDS = prometheus_client.Histogram(
    "brewcast_model_seconds",
    "Scoring time per request: onnxruntime (one call for a loop turn's requests) and the log rows.",
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5),
)

FLUSH_SECONDS = 0.5
#: Every started RequestMetrics of this process, flushed before /metrics is answered.
_LIVE: list[RequestMetrics] = []


def flush_all() -> None:
    for metrics in list(_LIVE):
        metrics.flush()


class RequestMetrics:
    """What the requests served, added up until the next :meth:`flush`. Slice values
    outside the served model's vocabulary are counted as out-of-vocabulary: a client cannot grow
    the label set, and so Prometheus's memory, without bound. ``log_stats`` gives the
    prediction log's (rows written, rows dropped) so far, exported at each flush."""

    def __init__(self, log_stats: Callable[[], tuple[int, int]] | None = None) -> None:
        self._log_stats = log_stats
        self._reported = (0, 0)
        self._lock = threading.Lock()  # the sums, between requests and a flush
        self._flush_lock = threading.Lock()  # one flush at a time (thread, /metrics)
        self._children: dict[tuple, object] = {}
        self._counts: dict[object, float] = {}  # counter child -> increment
        self._observed: dict[object, list[float]] = {}  # summary child -> [count, sum]
        self._seconds = [0] * len(MODEL_SECONDS._upper_bounds)
        self._seconds_sum = 0.0
        self._stop = threading.Event()

    def _child(self, metric, *labels: str):
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    def record(
        self,
        model_version: str,
        records: list[dict],
        log_rows: list[dict],
        model_seconds: float,
    ) -> None:
        counts: dict[object, float] = {}
        positives = sum(row["decision"] for row in log_rows)
        for decision, n in (("finished", positives), ("not_finished", len(log_rows) - positives)):
            if n:
                counts[self._child(PREDICTIONS, decision, model_version)] = n
        for row in log_rows:
            if row["unknown_categories"]:
                for column in row["unknown_categories"].split(","):
                    child = self._child(UNKNOWN_CATEGORIES, column)
                    counts[child] = counts.get(child, 0) + 1
        by_slice: dict[tuple[str, str], list[float]] = {}
        unknown = [set(row["unknown_categories"].split(",")) for row in log_rows]
        for key in SLICE_KEYS:
            for record, row, outside in zip(records, log_rows, unknown, strict=True):
                value = OOV if record.get(key) is None or key in outside else record[key]
                acc = by_slice.get((key, value))
                if acc is None:
                    by_slice[(key, value)] = [1, row["probability"]]
                else:
                    acc[0] += 1
                    acc[1] += row["probability"]
        observed = {
            self._child(PROBABILITY_BY_SLICE, *labels): acc for labels, acc in by_slice.items()
        }
        bucket = next(
            (i for i, bound in enumerate(MODEL_SECONDS._upper_bounds) if model_seconds <= bound),
            len(self._seconds) - 1,
        )
        with self._lock:
            for child, n in counts.items():
                self._counts[child] = self._counts.get(child, 0) + n
            for child, (n, total) in observed.items():
                acc = self._observed.get(child)
                if acc is None:
                    self._observed[child] = [n, total]
                else:
                    acc[0] += n
                    acc[1] += total
            self._seconds[bucket] += 1
            self._seconds_sum += model_seconds

    def flush(self) -> None:
        """Write what was added up since the last flush: one write per changed series
        (the summary's and histogram's parts through prometheus_client's value objects,
        which its own ``observe`` increments one observation at a time)."""
        with self._flush_lock:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
            observed, self._observed = self._observed, {}
            seconds, self._seconds = self._seconds, [0] * len(self._seconds)
            seconds_sum, self._seconds_sum = self._seconds_sum, 0.0
        for child, n in counts.items():
            child.inc(n)
        for child, (n, total) in observed.items():
            child._count.inc(n)
            child._sum.inc(total)
        if any(seconds):
            for value, n in zip(MODEL_SECONDS._buckets, seconds, strict=True):
                if n:
                    value.inc(n)
            MODEL_SECONDS._sum.inc(seconds_sum)
        if self._log_stats is not None:
            written, dropped = self._log_stats()
            if written != self._reported[0]:
                LOG_WRITTEN.inc(written - self._reported[0])
            if dropped != self._reported[1]:
                LOG_DROPPED.inc(dropped - self._reported[1])
            self._reported = (written, dropped)

    def start(self) -> threading.Thread:
        """Flush every ``FLUSH_SECONDS`` in a daemon thread, and before /metrics answers."""

        def loop() -> None:
            while not self._stop.wait(FLUSH_SECONDS):
                self.flush()

        _LIVE.append(self)
        thread = threading.Thread(target=loop, name="metrics-flush", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        if self in _LIVE:
            _LIVE.remove(self)
        self.flush()
