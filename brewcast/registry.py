"""MLflow: the training experiment, the registered model and its aliases.

Works against a tracking server (``http://...``) or a local store (``sqlite:///...``).
Every training run logs the same metric keys (``models.evaluate.flatten_metrics``) so
runs compare side by side; the ONNX graph is logged with the ``mlflow.onnx`` flavour and
registered as a new version of ``fermentation-completion`` carrying alias ``challenger``;
``champion`` moves only through the promotion gate.
"""

from __future__ import annotations

import os
from pathlib import Path

CHALLENGER = "challenger"
CHAMPION = "champion"
#: The tag registration writes on every version, and the value serving requires of one.
GATE_TAG, GATE_PASSED, GATE_REJECTED = "gate", "passed", "rejected"


def configure(tracking_uri: str) -> None:
    """Point MLflow at ``tracking_uri`` (registry included), quietly."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import mlflow

    if tracking_uri.startswith("sqlite:///"):  # a local store: its folder may be new
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def ensure_experiment(name: str, artifact_root: Path | None) -> str:
    """The experiment's id, creating it on first use. A local store gets its artifacts under
    ``artifact_root`` (not ./mlruns of whatever directory the process runs in)."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    tracking = mlflow.get_tracking_uri()
    location = None
    if artifact_root is not None and not tracking.startswith(("http://", "https://")):
        location = (Path(artifact_root).resolve() / name).as_uri()
    try:
        return mlflow.create_experiment(
            name,
            artifact_location=location,
            # the UI then opens on runs and metrics, not on GenAI traces
            tags={"mlflow.experimentKind": "custom_model_development"},
        )
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent run
        return mlflow.get_experiment_by_name(name).experiment_id


def version_by_alias(model_name: str, alias: str):
    """The model version holding ``alias``, or None."""
    import mlflow
    from mlflow import MlflowClient

    try:
        return MlflowClient().get_model_version_by_alias(model_name, alias)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def download_onnx(model_uri: str, into: Path) -> bytes:
    """The raw ``.onnx`` bytes of a logged or registered model (``models:/name@alias``)."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(into)))
    files = sorted(local.rglob("*.onnx")) if local.is_dir() else [local]
    if not files:
        raise FileNotFoundError(f"no .onnx file in {model_uri}")
    if len(files) > 1:  # which one would be served? Refused, never guessed.
        names = ", ".join(str(f.relative_to(local)) for f in files)
        raise ValueError(f"{model_uri} holds {len(files)} .onnx files ({names}): ambiguous")
    import onnx

    # onnx.load pulls in weights saved as external data next to the file, if any
    return onnx.load(str(files[0])).SerializeToString()


def set_alias(model_name: str, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(model_name, alias, version)
