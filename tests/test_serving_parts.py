"""Serving parts without a server: provider choice, CPU counting, the prediction log."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pandas as pd
import pytest

from serving import runtime
from serving.api_models import PredictResponse, Snapshot, predict_response_json
from serving.prediction_log import (
    NO_FORECAST,
    PredictionLog,
    metadata,
    new_prediction_ids,
    prediction_row,
)


def test_provider_choice_prefers_the_gpu_when_the_build_has_it():
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert runtime.choose_providers(gpu_build) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert runtime.choose_providers(gpu_build, use_tensorrt=True)[0] == (
        "TensorrtExecutionProvider"
    )
    assert runtime.choose_providers(gpu_build, prefer_gpu=False) == ["CPUExecutionProvider"]
    assert runtime.choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_require_gpu_refuses_a_silent_cpu_fallback(trained):
    """Real onnxruntime-gpu on this GPU-less host: CUDA is asked for, CPU is what runs."""
    _, workdir = trained
    model = (workdir / "model.onnx").read_bytes()
    session = runtime.create_session(model, threads=1)
    assert session.requested[0] == "CUDAExecutionProvider"
    assert session.provider == "CPUExecutionProvider" and not session.on_gpu
    with pytest.raises(runtime.GpuUnavailableError, match="runs on CPUExecutionProvider"):
        runtime.create_session(model, require_gpu=True, threads=1)


def test_usable_cpus_reads_cgroup_quotas(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert runtime.usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert runtime.usable_cpus(tmp_path) >= 1
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert runtime.usable_cpus(v1) == 1


def test_prediction_ids_are_time_ordered_uuid7():
    ids = new_prediction_ids(10_000, now_ms=1_795_000_000_123)
    assert len(set(ids)) == 10_000
    for text in ids[:500]:
        parsed = uuid.UUID(text)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == text
        assert int(parsed.hex[:12], 16) == 1_795_000_000_123  # the milliseconds, big-endian
    later = new_prediction_ids(50, now_ms=1_795_000_000_124)
    assert max(ids) < min(later)  # the primary-key index grows at its right edge
    assert new_prediction_ids(0) == []


def _rows(n: int) -> list[dict]:
    now = pd.Timestamp.now("UTC").to_pydatetime()
    return [
        prediction_row(
            new_prediction_ids(1)[0],
            now,
            "1",
            0.8,
            {"brand": "golden_pilsner"},
            0.5,
            False,
            10.0,
            [],
        )
        for _ in range(n)
    ]


def test_sync_log_group_commits_concurrent_writers(tmp_path):
    log = PredictionLog(f"sqlite:///{tmp_path / 'p.db'}", "sync")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: log.write(_rows(2)), range(200)))
    assert log.stats.rows_written == 400
    assert log.stats.commits < 200  # many requests shared a transaction
    assert len(log.read_predictions()) == 400
    log.close()
    reopened = PredictionLog(f"sqlite:///{tmp_path / 'p.db'}", "sync")  # survives a restart
    assert len(reopened.read_predictions()) == 400
    reopened.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_log_rows_read_back_as_written(database, tmp_path, request):
    """SQLite rows go in through the driver's executemany, PostgreSQL rows through COPY:
    both read back to the same values, text that COPY must escape included."""
    url = (
        f"sqlite:///{tmp_path / 'r.db'}"
        if database == "sqlite"
        else request.getfixturevalue("postgres_database")
    )
    served_at = pd.Timestamp("2026-03-01 12:30:15.250", tz="UTC").to_pydatetime()
    features = {
        "brand": "golden_pilsner",
        "snapshot_time": served_at,
        "gravity_plato": 3.5,
        "batch_id": "B-1\tof\\N\nbatch\r",  # COPY's separators and its NULL marker
    }
    rows = [
        prediction_row(i, served_at, "7", 0.61, features, p, p >= 0.61, 30.0 * p, unknown)
        for i, p, unknown in zip(
            new_prediction_ids(3), (0.2, 0.61, 0.9), ([], ["yeast_strain"], []), strict=True
        )
    ]
    log = PredictionLog(url, "sync")
    log.write(rows)
    back = log.read_predictions().set_index("prediction_id").loc[[r["prediction_id"] for r in rows]]
    log.close()
    assert back["probability"].tolist() == [0.2, 0.61, 0.9]
    assert back["decision"].tolist() == [False, True, True]
    assert back["brand"].tolist() == ["golden_pilsner"] * 3
    assert back["unknown_categories"].tolist() == ["", "yeast_strain", ""]
    for value in back["served_at"]:  # SQLite keeps naive UTC, PostgreSQL an aware time
        stamp = pd.Timestamp(value)
        assert (stamp if stamp.tzinfo else stamp.tz_localize("UTC")) == pd.Timestamp(served_at)
    assert back["batch_id"].tolist() == ["B-1\tof\\N\nbatch\r"] * 3
    assert back["snapshot_time"].notna().all() and back["threshold"].tolist() == [0.61] * 3
    stored = json.loads(back["features"].iloc[0])
    assert stored["gravity_plato"] == 3.5
    assert pd.Timestamp(stored["snapshot_time"]) == pd.Timestamp(served_at)


def test_write_async_waits_for_the_group_commit_and_reports_failure(tmp_path):
    """The event-loop path: many concurrent waiters share commits, each returns only once its
    rows are in the database, and a failed commit raises in every waiter of its group."""
    log = PredictionLog(f"sqlite:///{tmp_path / 'w.db'}", "sync")

    async def many() -> None:
        await asyncio.gather(*(log.write_async(_rows(2)) for _ in range(100)))

    asyncio.run(many())
    assert log.stats.rows_written == 200 and log.stats.commits < 100
    assert len(log.read_predictions()) == 200
    with log.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE predictions")

    async def failing() -> list:
        return await asyncio.gather(
            *(log.write_async(_rows(1)) for _ in range(5)), return_exceptions=True
        )

    outcomes = asyncio.run(failing())
    assert all(isinstance(o, Exception) and "predictions" in str(o) for o in outcomes)
    metadata.create_all(log.engine)
    original, gate = log._commit, threading.Event()
    log._commit = lambda group, count: (gate.wait(10), original(group, count))

    async def abandoned() -> None:  # as when BentoML's timeout cancels the request
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(log.write_async(_rows(1)), 0.05)
        gate.set()
        await log.write_async(_rows(2))

    asyncio.run(abandoned())
    assert len(log.read_predictions()) == 3  # the abandoned row was still committed
    log.close()


def test_workers_starting_together_all_get_the_tables(tmp_path):
    """BentoML starts its workers at once; each creates the log's tables if missing. Without
    the retry, 8 simultaneous creations failed with "table already exists" in 10 of 10
    tries."""
    from serving.prediction_log import create_tables, make_engine

    engines = [make_engine(f"sqlite:///{tmp_path / 'p.db'}") for _ in range(8)]
    barrier, errors = threading.Barrier(len(engines)), []

    def start(engine) -> None:
        barrier.wait()
        try:
            create_tables(engine)
        except Exception as exc:  # collected: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    log = PredictionLog(f"sqlite:///{tmp_path / 'p.db'}", "sync")
    log.write(_rows(1))
    assert len(log.read_predictions()) == 1
    log.close()


def test_sqlite_writers_take_turns_through_the_lock_file(tmp_path):
    """Another process's writer holds the turn: our commit waits for it, then goes through."""
    import fcntl

    log = PredictionLog(f"sqlite:///{tmp_path / 't.db'}", "sync")
    log.write(_rows(1))  # opens the writer's connection and its lock file
    with open(tmp_path / "t.db-writers.lock", "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        waiting = log.submit(_rows(2))
        with pytest.raises(TimeoutError):
            waiting.result(timeout=0.3)  # cannot commit while the other writer has its turn
        fcntl.flock(other, fcntl.LOCK_UN)
    waiting.result(timeout=10)
    assert len(log.read_predictions()) == 3
    log.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_failed_commit_is_reported_then_the_log_reconnects(database, tmp_path, request):
    """A commit that fails raises to the waiting request (which answers 503, nothing
    served); the writer drops its connection and the next commit works again."""
    url = (
        f"sqlite:///{tmp_path / 'f.db'}"
        if database == "sqlite"
        else request.getfixturevalue("postgres_database")
    )
    log = PredictionLog(url, "sync")
    log.write(_rows(2))
    with log.engine.begin() as conn:  # the table disappears under the writer
        conn.exec_driver_sql("DROP TABLE predictions")
    with pytest.raises(Exception, match="predictions"):
        log.write(_rows(3))
    assert log.stats.write_errors == 1 and log.stats.rows_written == 2
    metadata.create_all(log.engine)
    log.write(_rows(4))
    assert log.stats.rows_written == 6 and len(log.read_predictions()) == 4
    log.close()


def test_async_log_counts_every_dropped_row(tmp_path):
    log = PredictionLog(f"sqlite:///{tmp_path / 'a.db'}", "async", queue_limit=5)
    gate = threading.Lock()
    gate.acquire()
    original = log._commit

    def slow_commit(group, count):
        with gate:
            original(group, count)

    log._commit = slow_commit
    for _ in range(10):
        log.write(_rows(2))  # the writer is stuck on the first group: the queue fills
    gate.release()
    log.flush()
    assert log.stats.rows_written + log.stats.rows_dropped == 20
    assert log.stats.rows_dropped > 0
    assert len(log.read_predictions()) == log.stats.rows_written
    log.close()
    with pytest.raises(ValueError, match="sync or async"):
        PredictionLog(f"sqlite:///{tmp_path / 'b.db'}", "eventually")


def test_request_model_follows_the_schema():
    from brewcast.schema import FEATURES

    features = {c.name for c in FEATURES.by_role("feature")}
    assert {n for n in Snapshot.model_fields if n in features} == features


def test_response_json_is_what_pydantic_makes_of_the_response_model():
    """/predict answers bytes from orjson, not the model's serialiser; they must agree, the
    finish forecast's times included (one open-ended interval, one model without any)."""
    served = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    snapshot = datetime(2026, 3, 1, 6, 30, tzinfo=UTC)
    forecast = {
        "interval_80_low": 1.5,
        "interval_80_high": 6.0,
        "interval_95_low": 0.0,
        "interval_95_high": None,  # open-ended: may never finish
        "finish_probabilities": '{"12": 0.75, "24": 0.875, "48": 0.9, "72": 0.9}',
        "forecast_group": "german_lager|0-24",
        "never_probability": 0.1,
    }
    rows = [
        {
            "prediction_id": "0190a3b4-0000-7000-8000-000000000001",
            "served_at": served,
            "snapshot_time": snapshot,
            "probability": 0.8125,
            "decision": True,
            "hours_remaining": 3.5,
            "unknown_categories": "brand,fermenter",
            "out_of_distribution": True,
            "familiarity_distance": 7.25,
            **forecast,
        },
        {
            "prediction_id": "0190a3b4-0000-7000-8000-000000000002",
            "served_at": served,
            "snapshot_time": None,
            "probability": 1e-7,
            "decision": False,
            "hours_remaining": 80.25,
            "unknown_categories": "",
            "out_of_distribution": None,  # a model without familiarity
            "familiarity_distance": None,
            **NO_FORECAST,  # nor a finish forecast
        },
    ]
    notes = ["1 of 2 snapshot(s) lie outside the model's training data"]
    got = predict_response_json("12", 0.4, 24.0, rows, notes)
    first = {
        "interval_80": {"low": 1.5, "high": 6.0},
        "interval_95": {"low": 0.0, "high": None},
        "predicted_finish_time": datetime(2026, 3, 1, 10, 0, tzinfo=UTC),
        "finish_time_80": {
            "earliest": datetime(2026, 3, 1, 8, 0, tzinfo=UTC),
            "latest": datetime(2026, 3, 1, 12, 30, tzinfo=UTC),
        },
        "finish_time_95": {"earliest": snapshot, "latest": None},
        "finish_probabilities": {"12": 0.75, "24": 0.875, "48": 0.9, "72": 0.9},
        "forecast_status": "fermenting",
        "forecast_group": "german_lager|0-24",
        "never_probability": 0.1,
    }
    second = {"predicted_finish_time": datetime(2026, 3, 4, 20, 15, tzinfo=UTC)}
    keep = ("prediction_id", "probability", "decision", "hours_remaining", "out_of_distribution")
    expected = PredictResponse(
        model_version="12",
        threshold=0.4,
        horizon_hours=24.0,
        notes=notes,
        predictions=[
            {
                **{k: row[k] for k in keep},
                "familiarity_distance": row["familiarity_distance"],
                "unknown_categories": ["brand", "fermenter"] if i == 0 else [],
                **(first if i == 0 else second),
            }
            for i, row in enumerate(rows)
        ],
    )
    assert json.loads(got) == json.loads(expected.model_dump_json())
    assert PredictResponse.model_validate_json(got) == expected
    assert json.loads(got)["predictions"][0]["predicted_finish_time"] == "2026-03-01T10:00:00Z"


def test_no_labels_is_a_no_op(tmp_path):
    log = PredictionLog(f"sqlite:///{tmp_path / 'l.db'}", "sync")
    try:
        assert log.add_labels([], source="api") == 0
        assert log.read_labels().empty
    finally:
        log.close()


def test_request_rows_become_the_same_inputs_as_a_frame(trained):
    """The serving hot path skips pandas; it must feed the graph exactly what training and
    evaluation feed it (missing numbers NaN, missing categories empty strings)."""
    import json

    import numpy as np

    from brewcast.contract import raw_inputs, raw_inputs_from_records
    from brewcast.schema import FEATURES

    _, workdir = trained
    frame = pd.read_parquet(workdir / "test.parquet").head(50).reset_index(drop=True)
    frame.loc[0, "dissolved_oxygen_ppm"] = np.nan
    frame.loc[1, "brand"] = None
    frame.loc[2, "yeast_strain"] = "mystery"
    features = [c.name for c in FEATURES.by_role("feature")]
    # through Python's json, whose floats round-trip exactly (pandas' to_json keeps 10
    # decimals, which turns a slope of 4e-14 into 0)
    plain = frame[features].astype(object).where(frame[features].notna(), None)
    records = json.loads(json.dumps(plain.to_dict("records")))
    expected, got = raw_inputs(frame), raw_inputs_from_records(records)
    assert set(expected) == set(got)
    for name, values in expected.items():
        assert got[name].shape == values.shape and got[name].dtype == values.dtype, name
        if values.dtype == object:
            assert got[name].tolist() == values.tolist(), name
        else:
            np.testing.assert_array_equal(got[name], values, err_msg=name)


def _per_column_model(model_bytes: bytes) -> bytes:
    """The graph with the input contract of models exported before 2026-11-30: one
    ``[N, 1]`` input per schema column, concatenated into the two matrices."""
    import onnx
    from onnx import TensorProto, helper

    from brewcast.contract import CATEGORICAL, NUMERIC

    model = onnx.load_from_string(model_bytes)
    del model.graph.input[:]
    for names, matrix, kind in (
        (NUMERIC, "numeric", TensorProto.FLOAT),
        (CATEGORICAL, "categorical", TensorProto.STRING),
    ):
        model.graph.input.extend(helper.make_tensor_value_info(n, kind, ["N", 1]) for n in names)
        model.graph.node.insert(0, helper.make_node("Concat", names, [matrix], axis=1))
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def test_a_model_with_one_input_per_column_is_still_served(trained):
    """A registry may still hold a champion exported with one input per column: the serving
    session and the gate's scoring feed it the columns of the two matrices, and it scores
    what the new graph scores."""
    import numpy as np

    from brewcast.contract import OUTPUTS, raw_inputs
    from models.export import cpu_session, run_onnx
    from serving.runtime import create_session

    _, workdir = trained
    model_bytes = (workdir / "model.onnx").read_bytes()
    frame = pd.read_parquet(workdir / "test.parquet").head(20)
    frame.loc[frame.index[0], "brand"] = None
    current = create_session(model_bytes, prefer_gpu=False, threads=1)
    legacy = create_session(_per_column_model(model_bytes), prefer_gpu=False, threads=1)
    assert (current.per_column, legacy.per_column) == (False, True)
    for want, got in zip(
        current.run(raw_inputs(frame), list(OUTPUTS)),
        legacy.run(raw_inputs(frame), list(OUTPUTS)),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
    # The training gate scores the champion the same way (run_onnx): it may be such a model.
    legacy_scores = run_onnx(cpu_session(_per_column_model(model_bytes)), frame)
    for want, got in zip(run_onnx(cpu_session(model_bytes), frame), legacy_scores, strict=True):
        np.testing.assert_array_equal(got, want)


def test_large_numeric_batches_are_io_bound_on_a_gpu_session(monkeypatch):
    """No GPU here: a CPU session labelled CUDA stands in, which takes the same I/O-binding
    code (binding to "cpu" works on either)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "numeric",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    session = runtime.create_session(model.SerializeToString(), prefer_gpu=False, threads=1)
    session.provider = runtime.CUDA
    bound = []
    real = session._run_bound
    monkeypatch.setattr(session, "_run_bound", lambda *a: bound.append(1) or real(*a))
    x = np.arange(2048, dtype=np.float32).reshape(-1, 1)
    (y,) = session.run({"x": x}, ["y"])
    assert bound and np.array_equal(y, x)
    (y,) = session.run({"x": x[:10]}, ["y"])  # small batches are not bound
    assert len(bound) == 1 and np.array_equal(y, x[:10])
    onnx.checker.check_model(model)


def _records(workdir, n: int) -> list[dict]:
    from brewcast.schema import FEATURES

    frame = pd.read_parquet(workdir / "test.parquet").head(n)
    return json.loads(
        frame[[c.name for c in FEATURES.by_role("feature")]].to_json(orient="records")
    )


def test_requests_of_one_loop_turn_are_scored_in_one_call(trained):
    """Five concurrent requests: one onnxruntime call, and each gets what scoring it alone
    gives (the real exported model)."""
    import numpy as np

    from serving.coalesce import ScoringCoalescer
    from serving.model import served_model

    settings, workdir = trained
    model = served_model((workdir / "model.onnx").read_bytes(), "7", "test", settings)
    records = _records(workdir, 9)
    requests = [records[0:1], records[1:3], records[3:4], records[4:8], records[8:9]]
    coalescer, calls = ScoringCoalescer(), []
    predict = model.predict
    model.predict = lambda records: calls.append(len(records)) or predict(records)

    async def serve_all():
        return await asyncio.gather(*(coalescer.score(model, r, None) for r in requests))

    answers = asyncio.run(serve_all())
    del model.predict  # the alone-scoring below uses the class's own
    assert calls == [9]
    for request, rows in zip(requests, answers, strict=True):
        alone = model.score(request, None)
        assert len(rows) == len(request)
        np.testing.assert_allclose(
            [r["probability"] for r in rows], [r["probability"] for r in alone], atol=1e-6
        )
        np.testing.assert_allclose(
            [r["hours_remaining"] for r in rows], [r["hours_remaining"] for r in alone], atol=1e-4
        )
        assert [r["decision"] for r in rows] == [
            r["probability"] >= 0.0 + model.threshold for r in rows
        ]
    ids = [r["prediction_id"] for rows in answers for r in rows]
    assert len(set(ids)) == 9


class _PickyModel:
    """Stands in for a ServedModel whose call fails on one request's rows, to check that
    coalescing gives that error to that request only."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, records):
        import numpy as np

        self.calls.append(len(records))
        if any(r.get("poison") for r in records):
            raise ValueError("poisoned row")
        return np.full(len(records), 0.5), np.full(len(records), 3.0)

    def log_rows(self, records, served_at, probability, hours):
        return [{"p": p, "h": h} for p, h in zip(probability, hours, strict=True)]


def test_a_failing_request_fails_alone_when_coalesced():
    from serving.coalesce import ScoringCoalescer

    model, coalescer = _PickyModel(), ScoringCoalescer()
    requests = [[{}], [{"poison": True}], [{}, {}]]

    async def serve_all():
        return await asyncio.gather(
            *(coalescer.score(model, r, None) for r in requests), return_exceptions=True
        )

    first, second, third = asyncio.run(serve_all())
    assert model.calls == [4, 1, 1, 2]  # together, then each alone
    assert first == [{"p": 0.5, "h": 3.0}] and len(third) == 2
    assert isinstance(second, ValueError)


def test_a_cancelled_request_is_skipped_and_the_rest_are_answered():
    from serving.coalesce import ScoringCoalescer

    model, coalescer = _PickyModel(), ScoringCoalescer()

    async def serve():
        gone = asyncio.ensure_future(coalescer.score(model, [{}], None))
        kept = asyncio.ensure_future(coalescer.score(model, [{}, {}], None))
        await asyncio.sleep(0)  # both queued
        gone.cancel()
        return await kept, gone

    kept, gone = asyncio.run(serve())
    assert len(kept) == 2 and gone.cancelled()


def test_metrics_are_added_up_then_written_once_per_series():
    """Nothing reaches Prometheus before a flush; then the counts, sums and buckets are
    what one observe() per row (or request) would have written."""
    from prometheus_client import REGISTRY

    from brewcast.schema import OOV
    from serving.metrics import RequestMetrics

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    def snapshot() -> dict:
        return {
            "finished": value(
                "brewcast_predictions_total", decision="finished", model_version="m-test"
            ),
            "not_finished": value(
                "brewcast_predictions_total", decision="not_finished", model_version="m-test"
            ),
            "pils_n": value("brewcast_probability_count", slice="brand", value="golden_pilsner"),
            "pils_sum": value("brewcast_probability_sum", slice="brand", value="golden_pilsner"),
            "oov_n": value("brewcast_probability_count", slice="brand", value=OOV),
            "unknown_brand": value("brewcast_unknown_categories_total", column="brand"),
            "seconds_n": value("brewcast_model_seconds_count"),
            "seconds_sum": value("brewcast_model_seconds_sum"),
            "le_1ms": value("brewcast_model_seconds_bucket", le="0.001"),
            "le_5ms": value("brewcast_model_seconds_bucket", le="0.005"),
            "written": value("brewcast_prediction_log_written_rows_total"),
        }

    def record(brand: str, probability: float, decision: bool) -> tuple[dict, dict]:
        slices = {"fermenter": "FV01", "brand": brand, "yeast_strain": None, "season": None}
        unknown = "brand" if brand == "mystery_ale" else ""
        return slices, {
            "probability": probability,
            "decision": decision,
            "unknown_categories": unknown,
        }

    log_rows_written = [0]
    metrics = RequestMetrics(lambda: (log_rows_written[0], 0))
    before = snapshot()
    first = [record("golden_pilsner", 0.25, False), record("golden_pilsner", 0.5, True)]
    second = [record("mystery_ale", 0.75, True)]
    for rows, seconds in ((first, 0.0008), (second, 0.003)):
        metrics.record("m-test", [r for r, _ in rows], [p for _, p in rows], seconds)
    log_rows_written[0] = 3
    assert snapshot() == before  # added up, not written yet
    metrics.flush()
    after = snapshot()
    delta = {k: after[k] - before[k] for k in after}
    assert delta["finished"] == 2 and delta["not_finished"] == 1
    assert delta["pils_n"] == 2 and delta["pils_sum"] == pytest.approx(0.75)
    assert delta["oov_n"] == 1 and delta["unknown_brand"] == 1
    assert delta["seconds_n"] == 2 and delta["seconds_sum"] == pytest.approx(0.0038)
    assert delta["le_1ms"] == 1 and delta["le_5ms"] == 2  # cumulative buckets
    assert delta["written"] == 3
    metrics.flush()  # nothing new: nothing written twice
    assert snapshot() == after


def test_a_label_is_one_prediction_or_one_batch():
    """The one-of rule lives in the request model, so every caller gets it (a 400 naming
    the label from the service)."""
    from pydantic import ValidationError

    from serving.api_models import Label

    Label(prediction_id="p", finished_within_horizon=True)
    Label(batch_id="b", finished_at="2026-01-01T00:00:00Z")
    for bad, message in (
        ({}, "exactly one of"),
        (
            {"prediction_id": "p", "batch_id": "b", "finished_within_horizon": True},
            "exactly one of",
        ),
        ({"prediction_id": "p"}, "needs finished_within_horizon"),
        ({"batch_id": "b"}, "needs finished_at"),
    ):
        with pytest.raises(ValidationError, match=message):
            Label(**bad)


def test_the_services_own_round_runs_soon_after_start_not_a_period_later():
    """The board shows forecasts seconds after a restart, not a whole period (15 min) later."""
    from serving.service import _every

    ran = threading.Event()
    stop = _every(3600.0, ran.set, first=0.01)
    try:
        assert ran.wait(30), "the first round waited for the period"
    finally:
        stop.set()
    assert _every(0, ran.set) is None  # 0: the service never forecasts by itself
