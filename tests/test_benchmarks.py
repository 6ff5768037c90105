"""The parts of the benchmark suite that run without a load: the GPU section, the kernel
profile, the wrk output parser, the serving table and the prediction log's ceiling. The
benchmarks themselves run with `make bench`, never here."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks import inference, load
from serving import runtime


def test_gpu_section_says_why_it_was_not_measured_here(trained):
    _, work = trained
    model = (work / "model.onnx").read_bytes()
    result = inference.gpu(model, pd.read_parquet(work / "test.parquet"))
    assert result["measured"] is False
    assert "CUDA" in result["why"]
    assert "GPU: not measured (" in inference.markdown(_with_gpu(result))


def test_gpu_section_measures_a_cuda_session(trained, monkeypatch):
    """No GPU exists here, so a CPU session stands in for the CUDA one (labelled CUDA, so it
    takes serving's I/O-binding path from 1,024 rows): this checks the measuring code, not
    a GPU."""
    _, work = trained
    real = runtime.create_session

    def stand_in(model_bytes, prefer_gpu=True, **kwargs):
        session = real(model_bytes, prefer_gpu=False, **kwargs)
        if prefer_gpu:
            session.provider = runtime.CUDA
        return session

    monkeypatch.setattr(runtime, "create_session", stand_in)
    monkeypatch.setattr(inference, "GPU_BATCHES", (1, 2048))
    result = inference.gpu(
        (work / "model.onnx").read_bytes(), pd.read_parquet(work / "test.parquet")
    )
    assert result["measured"] and result["provider"] == runtime.CUDA
    for batch in ("1", "2048"):
        rows = result["batches"][batch]
        assert rows["parity_max_abs_error"] < 1e-6  # bound inputs give the same answers
        assert rows["cuda"]["rows_per_s"] > 0 and rows["cuda_speedup"] > 0
    assert "| 2048 |" in inference.markdown(_with_gpu(result))


def _with_gpu(gpu: dict) -> dict:
    row = {"p50_ms": 1.0, "p99_ms": 1.0, "rows_per_s": 1.0}
    batches = {str(b): {"ort": row, "parity_max_abs_error": 0.0} for b in inference.BATCHES}
    return {
        "batches": batches,
        "ratio_ort_vs_predict_batch1": 1.0,
        "threads_available": 2,
        "gpu": gpu,
    }


WRK_OUTPUT = """Running 4s test @ http://127.0.0.1:1/predict
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.53ms    3.10ms  40.00ms   90.50%
    Req/Sec     5.15k   300.00     5.60k    100.00%
  Latency Distribution
     50%   12.11ms
     75%   13.00ms
     90%   15.00ms
     99%   17.72ms
  20587 requests in 4.02s, 9.00MB read
  Non-2xx or 3xx responses: 7
Requests/sec:   5121.14
"""


def test_wrk_output_is_parsed(monkeypatch, tmp_path):
    class Done:
        stdout = WRK_OUTPUT

    monkeypatch.setattr(load.subprocess, "run", lambda *a, **k: Done())
    body = tmp_path / "body.json"
    body.write_text("{}")
    result = load.wrk("http://127.0.0.1:1/predict", 64, 4, str(body))
    assert result["requests"] == 20587 - 7 and result["non_2xx"] == 7
    assert result["p50_ms"] == pytest.approx(12.11) and result["p99_ms"] == pytest.approx(17.72)
    assert result["req_per_s"] == pytest.approx((20587 - 7) / 4.02)
    assert load._ms("850us") == pytest.approx(0.85) and load._ms("1.5s") == 1500.0


def test_kernel_profile_accounts_for_the_graph(trained):
    """onnxruntime's profiler, read back: every op of the network's graph shows up (the
    network family's: the candidate may be the boosted one, which has no matrix product),
    the total is the sum of its parts, and the matrix-product bound is at least the whole
    graph's rate."""
    from brewcast.contract import raw_inputs

    _, work = trained
    frame = pd.read_parquet(work / "test.parquet").head(256)
    network = (work / "families" / "network.onnx").read_bytes()
    profile = inference.kernel_profile(network, raw_inputs(frame), 5)
    ops = profile["by_op_us_per_call"]
    assert profile["rows"] == 256
    assert "LabelEncoder" in ops and any("Gemm" in op or "MatMul" in op for op in ops)
    assert profile["kernel_us_per_call"] == pytest.approx(sum(ops.values()))
    whole_graph_rate = 256 / (profile["kernel_us_per_call"] / 1e6)
    assert profile["matrix_products_only_rows_per_s"] > whole_graph_rate


def test_serving_table_puts_brewcast_against_the_floor_and_the_bare_app(trained, tmp_path):
    """The three-server table and its ratios, from made-up loads; the log ceiling is real."""
    from benchmarks import serving

    def load(req_per_s: float) -> dict:
        return {
            "req_per_s": req_per_s,
            "p50_ms": 1.0,
            "p99_ms": 2.0,
            "non_2xx": 0,
            "cpu_ms_per_request": 1000 / req_per_s,
        }

    one = {
        "bentoml": {"batch1_c16": load(1000)},
        "bentoml_floor": {"batch1_c16": load(2500)},
        "bare": {"batch1_c16": load(4000)},
        "bentoml_postgresql": {"batch1_c16": load(800)},
        "postgresql_rows_logged": 12_345,
    }
    for name, over, under in serving.RATIOS:
        one[name] = {
            "batch1_c16": one[over]["batch1_c16"]["req_per_s"]
            / one[under]["batch1_c16"]["req_per_s"]
        }
    _, work = trained
    body = serving._bodies(work, tmp_path)["batch64"]
    ceiling = serving._log_ceilings(work, tmp_path, body, seconds=0.5)
    assert ceiling["rows_per_commit"] == 64 and ceiling["sqlite"] > 0
    postgresql = ceiling["postgresql"]  # measured where a server runs, as on these machines
    assert postgresql > 0 if isinstance(postgresql, float) else "no PostgreSQL" in postgresql
    table = serving.markdown(
        {
            "by_workers": {"2": one},
            "in_process": {
                "batch1": {"p50_ms": 0.1, "rows_per_s": 10_000},
                "batch64": {"p50_ms": 0.2, "rows_per_s": 320_000},
            },
            "prediction_log_ceiling": ceiling,
        }
    )
    assert "| batch1_c16 | 1000 |" in table
    assert "| 25% | 62% | 40% |" in table  # BentoML / bare, floor / bare, BentoML / floor
    assert "64 rows a commit" in table and "sqlite " in table and "postgresql " in table
    assert "PostgreSQL (sync, COPY; 12,345 rows counted" in table
    assert "batch1_c16 800 req/s, p99 2.0 ms, 1.25 CPU ms/req (80% of SQLite's)" in table


def test_open_loop_offers_its_rate_and_counts_what_it_could_not_send():
    """Against a real server on loopback: every 4th request answered 500, each answer
    20 ms late. All offered requests are accounted for (answered, non-2xx or skipped);
    latency runs from the scheduled send, so it includes the server's delay."""
    import asyncio

    from benchmarks import load

    async def measure(limit: int, rate: float) -> dict:
        served = 0

        async def answer(reader, writer) -> None:
            nonlocal served
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                served += 1
                status = b"500 Oops" if served % 4 == 0 else b"200 OK"
                await asyncio.sleep(0.02)
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await load.open_loop(f"http://127.0.0.1:{port}/p", limit, 0.5, b'{"a":1}', rate)

    unhindered = asyncio.run(measure(limit=64, rate=200))
    assert unhindered["skipped"] == 0
    assert unhindered["requests"] + unhindered["non_2xx"] == 100
    assert unhindered["non_2xx"] == 25
    assert 20 <= unhindered["p50_ms"] < 200
    # Two connections, each busy 20 ms a request: at most ~50 of the 100 offered get sent.
    queued = asyncio.run(measure(limit=2, rate=200))
    assert queued["requests"] + queued["non_2xx"] + queued["skipped"] == 100
    assert queued["skipped"] >= 40 and queued["connections"] == 2


def test_finish_goals_by_time_to_finish_against_the_brand_history():
    """Four pre-finish rows by hand: hours errors 2, 4 (0-48 h) and 10 (48-96 h) for the
    candidate, 20, 20 and 30 for the brand history."""
    import numpy as np

    from benchmarks.quality import finish_goals

    rows = pd.DataFrame(
        {
            "batch_id": ["a", "a", "b", "b", "b"],
            "before_finish": [True, True, True, True, False],
            "finished_within_horizon": [1.0, 0.0, 0.0, 1.0, 1.0],
            "hours_remaining": [10.0, 40.0, 60.0, np.inf, 0.0],
            "net_probability": [0.95, 0.2, 0.1, 0.3, 1.0],
            "net_hours": [12.0, 44.0, 70.0, 500.0, 0.0],
            "brand_history_hours": [30.0, 20.0, 90.0, 100.0, 0.0],
            "interval_80_low": [5.0, 30.0, 100.0, 10.0, 0.0],
            "interval_80_high": [15.0, 50.0, 120.0, np.inf, 1.0],
            "brand_history_low_80": [0.0, 0.0, 0.0, 0.0, 0.0],
            "brand_history_high_80": [100.0, 100.0, 100.0, 100.0, 1.0],
        }
    )
    out = finish_goals(rows, "net", 0.5, hand=True)
    table = out["by_time_to_finish"]
    assert table["0-48 h"] == {"rows": 2, "candidate": 3.0, "brand_history": 20.0}
    assert table["48-96 h"] == {"rows": 1, "candidate": 10.0, "brand_history": 30.0}
    goals = out["goals"]
    assert goals["hours MAE within 48 h of the finish"]["met"]  # 3 <= 12
    assert goals["hours MAE overall / brand history"]["value"] == pytest.approx(16 / 70)
    # covered: rows 1, 2 and the stuck one (open-ended); not the third (60 outside 100..120)
    assert goals["80% coverage overall"]["value"] == pytest.approx(0.75)
    assert goals["decision precision at the threshold"]["value"] == 1.0
    assert goals["decision recall at the threshold"]["value"] == 0.5
    # a history window with no bound at all is infinitely wide, not NaN
    rows.loc[0, ["brand_history_low_80", "brand_history_high_80"]] = np.inf
    rows.loc[1, ["brand_history_low_80", "brand_history_high_80"]] = np.inf
    rows.loc[2, ["brand_history_low_80", "brand_history_high_80"]] = np.inf
    open_history = finish_goals(rows, "net", 0.5, hand=True)["goals"]
    assert open_history["median 80% width / brand history"]["value"] == 0.0
