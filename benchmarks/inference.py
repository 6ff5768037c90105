"""Inference: the same trained model through Keras `predict`, Keras `model(x)` and
onnxruntime in-process (1 thread and all usable threads, spinning off and on), at batch 1,
64 and 4096: p50/p99 per call, rows/s, and parity with Keras.

Keras is given its inputs already preprocessed (imputed, indexed), so it is timed on less
work than onnxruntime, whose graph starts from the raw schema columns. Targets: ORT >= 1000x
faster than `predict` at batch 1; ORT batch 1 <= 10 us; batch 4096 >= 8M rows/s on CPU.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import small_model

BATCHES = (1, 64, 4096)
GPU_BATCHES = (1, 64, 4096, 65536)


def _time(fn, repeats: int, rows: int) -> dict:
    """p50/p99 of ``fn`` over ``repeats`` calls (after one warm-up), and rows/s at the p50."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    times.sort()
    p50 = statistics.median(times)
    return {
        "p50_ms": p50 * 1000,
        "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))] * 1000,
        "rows_per_s": rows / p50,
    }


def _sample(test: pd.DataFrame, batch: int) -> pd.DataFrame:
    """``batch`` test rows (drawn with replacement when the test split is smaller)."""
    return test.sample(batch, replace=batch > len(test), random_state=0).reset_index(drop=True)


def run() -> dict:
    from brewcast.contract import OUTPUTS, raw_inputs
    from models.network import predict_network
    from models.workdir import TrainingWorkdir
    from serving.runtime import create_session, usable_cpus

    with tempfile.TemporaryDirectory() as tmp:
        print("inference: training a model ...", flush=True)
        # the network family only: this compares its graph with Keras itself
        work = small_model(Path(tmp), seed=4, epochs=5, patience=2, model_families="network")
        files = TrainingWorkdir(work)
        keras_model = files.load_network()
        pre = files.load_preprocessing()
        calibration, _ = files.load_calibration()
        model_bytes = files.model.read_bytes()
        test = pd.read_parquet(files.test)
    threads = usable_cpus()
    sessions = {
        f"ort_{n}thread{'s' if n > 1 else ''}_spin_{'on' if spin else 'off'}": create_session(
            model_bytes, prefer_gpu=False, threads=n, spinning=spin
        )
        for n in sorted({1, threads})
        for spin in (False, True)
    }
    # The floor of this input contract: a graph taking the same two raw inputs that only
    # passes one through (what onnxruntime's Python API costs before any work is done).
    sessions["ort_inputs_only_floor"] = create_session(
        _inputs_only(model_bytes), prefer_gpu=False, threads=1, spinning=False
    )
    result: dict = {"threads_available": threads, "batches": {}}
    for batch in BATCHES:
        frame = _sample(test, batch)
        raw, net_inputs = raw_inputs(frame), pre.network_inputs(frame)
        rows: dict = {}
        reps_keras = 20 if batch < 4096 else 5
        rows["keras_predict"] = _time(
            lambda x=net_inputs: keras_model.predict(x, verbose=0), reps_keras, batch
        )
        rows["keras_call"] = _time(
            lambda x=net_inputs: keras_model(x, training=False), reps_keras * 3, batch
        )
        for name, session in sessions.items():
            outputs = ["floor"] if name == "ort_inputs_only_floor" else list(OUTPUTS)
            rows[name] = _time(
                lambda s=session, x=raw, o=outputs: s.run(x, o),
                2000 if batch == 1 else 200,
                batch,
            )
        logit, _ = predict_network(keras_model, net_inputs)
        first = sessions[next(iter(sessions))]
        probability = first.run(raw, list(OUTPUTS))[0].ravel()
        rows["parity_max_abs_error"] = float(np.max(np.abs(probability - calibration.apply(logit))))
        result["batches"][str(batch)] = rows
    one = result["batches"]["1"]
    result["ratio_ort_vs_predict_batch1"] = (
        one["keras_predict"]["p50_ms"] / one["ort_1thread_spin_off"]["p50_ms"]
    )
    result["kernel_profile_4096"] = kernel_profile(model_bytes, raw_inputs(_sample(test, 4096)))
    result["gpu"] = gpu(model_bytes, test)
    return result


def kernel_profile(model_bytes: bytes, inputs: dict, calls: int = 50) -> dict:
    """Where one call's time goes inside the graph (1 thread), from onnxruntime's own
    profiler: kernel microseconds per call by op type, and the rows/s the matrix products
    alone would allow (a bound no input contract can lift)."""
    import onnxruntime as ort

    from brewcast.contract import OUTPUTS

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        for _ in range(calls):
            session.run(list(OUTPUTS), inputs)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            by_op[op] = by_op.get(op, 0.0) + event["dur"] / calls
    rows = len(next(iter(inputs.values())))
    products = sum(us for op, us in by_op.items() if "Gemm" in op or "MatMul" in op)
    return {
        "rows": rows,
        "kernel_us_per_call": sum(by_op.values()),
        "by_op_us_per_call": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        "matrix_products_only_rows_per_s": rows / (products / 1e6) if products else None,
    }


def gpu(model_bytes: bytes, test: pd.DataFrame) -> dict:
    """The same model on onnxruntime's CUDA provider, as serving runs it (``Session.run``;
    its string inputs cannot be I/O-bound), against the CPU with all usable threads, at batch
    1, 64, 4096 and 65536; or why it was not measured. On a GPU host this has not run yet
    (none lent); its measuring code is tested with a CPU session standing in."""
    import onnxruntime as ort

    from brewcast.contract import OUTPUTS, raw_inputs
    from serving.runtime import CUDA, create_session, usable_cpus

    if CUDA not in ort.get_available_providers():
        return {"measured": False, "why": "this onnxruntime build has no CUDA provider"}
    on_gpu = create_session(model_bytes, prefer_gpu=True, threads=1)
    if not on_gpu.on_gpu:
        return {
            "measured": False,
            "why": f"no usable CUDA device: onnxruntime fell back to {on_gpu.provider}",
        }
    on_cpu = create_session(model_bytes, prefer_gpu=False, threads=usable_cpus())
    result: dict = {"measured": True, "provider": on_gpu.provider, "batches": {}}
    for batch in GPU_BATCHES:
        raw = raw_inputs(_sample(test, batch))
        repeats = 500 if batch <= 64 else 50 if batch <= 4096 else 10
        rows = {
            name: _time(lambda s=session, x=raw: s.run(x, list(OUTPUTS)), repeats, batch)
            for name, session in (("cuda", on_gpu), ("cpu", on_cpu))
        }
        gpu_p, cpu_p = (s.run(raw, list(OUTPUTS))[0].ravel() for s in (on_gpu, on_cpu))
        rows["parity_max_abs_error"] = float(np.max(np.abs(gpu_p - cpu_p)))
        rows["cuda_speedup"] = rows["cpu"]["p50_ms"] / rows["cuda"]["p50_ms"]
        result["batches"][str(batch)] = rows
    return result


def _inputs_only(model_bytes: bytes) -> bytes:
    import onnx
    from onnx import helper

    model = onnx.load_from_string(model_bytes)
    first = model.graph.input[0]
    floor = onnx.ValueInfoProto()
    floor.CopyFrom(first)
    floor.name = "floor"
    graph = helper.make_graph(
        [helper.make_node("Identity", [first.name], ["floor"])],
        "inputs_only",
        list(model.graph.input),
        [floor],
    )
    floor_model = helper.make_model(graph, opset_imports=list(model.opset_import))
    floor_model.ir_version = model.ir_version
    return floor_model.SerializeToString()


def markdown(result: dict) -> str:
    names = [k for k in result["batches"]["1"] if k != "parity_max_abs_error"]
    lines = [
        "| path | " + " | ".join(f"batch {b} p50 ms (rows/s)" for b in BATCHES) + " |",
        "|---|" + "---:|" * len(BATCHES),
    ]
    for name in names:
        cells = [
            f"{result['batches'][str(b)][name]['p50_ms']:.3f} "
            f"({result['batches'][str(b)][name]['rows_per_s']:,.0f})"
            for b in BATCHES
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    parity = max(result["batches"][str(b)]["parity_max_abs_error"] for b in BATCHES)
    lines.append(
        f"\nonnxruntime is {result['ratio_ort_vs_predict_batch1']:,.0f}x faster than "
        f"Keras predict at batch 1; max |ORT - Keras| {parity:.1e}; "
        f"{result['threads_available']} usable CPU(s)."
    )
    kernels = result.get("kernel_profile_4096")
    if kernels:
        ops = list(kernels["by_op_us_per_call"].items())[:6]
        top = ", ".join(f"{op} {us:.0f}" for op, us in ops)
        lines.append(
            f"\nInside the graph at batch {kernels['rows']} (1 thread, onnxruntime's profiler): "
            f"{kernels['kernel_us_per_call']:.0f} us of kernels per call ({top} us); the "
            f"matrix products alone allow {kernels['matrix_products_only_rows_per_s']:,.0f} rows/s."
        )
    gpu_result = result.get("gpu", {})
    if not gpu_result.get("measured"):
        lines.append(f"\nGPU: not measured ({gpu_result.get('why', 'not run')}).")
    else:
        lines.append(f"\nGPU ({gpu_result['provider']}) against all CPU threads:")
        lines.append(
            "\n| batch | CUDA p50 ms (rows/s) | CPU p50 ms (rows/s) | speed-up | max diff |"
        )
        lines.append("|---:|---:|---:|---:|---:|")
        for batch, r in gpu_result["batches"].items():
            lines.append(
                f"| {batch} | {r['cuda']['p50_ms']:.3f} ({r['cuda']['rows_per_s']:,.0f}) | "
                f"{r['cpu']['p50_ms']:.3f} ({r['cpu']['rows_per_s']:,.0f}) | "
                f"{r['cuda_speedup']:.1f}x | {r['parity_max_abs_error']:.1e} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    outcome = run()
    print(json.dumps(outcome, indent=2))
    print(markdown(outcome))
