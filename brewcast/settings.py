"""brewcast's one typed settings object.

Read from the environment (prefix ``BREWCAST_``) when :func:`get_settings` is called;
importing this module does nothing. Defaults are the embedded mode: everything lives
under ``BREWCAST_HOME`` (``./.brewcast``). Production mode changes only URLs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from brewcast.paths import Paths

#: Every group reads ``BREWCAST_<FIELD>``: the same names whichever group a field is in.
ENVIRONMENT = SettingsConfigDict(env_prefix="BREWCAST_", extra="ignore")


class IngestSettings(BaseSettings):
    """Where data comes from: the default source, the drop folder, Brewery Pi."""

    model_config = ENVIRONMENT

    source: Literal["simulator", "drop", "brewerypi", "service"] = Field(
        "simulator", description="Where `brewcast ingest` reads from by default."
    )
    drop_dir: Path | None = Field(None, description="Drop folder (default HOME/drop).")
    brewerypi_url: str | None = Field(
        None,
        description="SQLAlchemy URL of a Brewery Pi database (sqlite:///, mysql+pymysql://, "
        "postgresql+psycopg2://).",
    )
    brewerypi_event_frame_template: str = Field(
        "Fermentation", description="EventFrameTemplate.Name that marks a fermentation batch."
    )
    brewerypi_attributes: dict[str, str] = Field(
        default_factory=dict,
        description="Brewery Pi attribute template (or tag suffix) name -> brewcast column "
        '(JSON), for installations that name them otherwise, e.g. {"Gravity": '
        '"gravity_plato", "Beer": "brand"}.',
    )
    brewerypi_units: dict[str, str] = Field(
        default_factory=dict,
        description="Brewery Pi tag name -> unit (JSON), for gravity and temperature tags "
        'whose UnitOfMeasurement is missing or wrong, e.g. {"FV01_Temperature": "°F"}.',
    )
    local_timezone: str = Field(
        "UTC",
        description="The brewery's IANA time zone (e.g. Europe/Berlin): of the naive local "
        "timestamps that hydrometer exports carry (a Tilt CSV's Timepoint, a batch record's "
        "start date; ingest says in its report which zone it applied), and of every time the "
        "cellar board shows, whatever the tablet's own zone.",
    )
    batch_number_pattern: str | None = Field(
        None,
        description="A regular expression whose first group finds the brewery's batch number "
        r"in a device export's file name (e.g. '(\d{4}-\d{3})'): that file's readings join "
        "the batch of that number from the brewery's own log, instead of becoming a batch "
        "of their own.",
    )

    @field_validator("batch_number_pattern")
    @classmethod
    def _one_group(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                groups = re.compile(pattern).groups
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from exc
            if groups < 1:
                raise ValueError("needs a group, (...), around the batch number")
        return pattern

    naive_timestamps: Literal["refuse", "local"] = Field(
        "refuse",
        description="brewcast's own CSV/Parquet drop files must give timestamps with an "
        "offset (2026-01-01T06:00:00+01:00); a file with naive ones is quarantined ('refuse') "
        "or read in BREWCAST_LOCAL_TIMEZONE and reported ('local').",
    )
    brix_wort_correction: float | None = Field(
        None,
        gt=0,
        description="Refractometer wort-correction factor (°P = °Bx / factor, typically "
        "1.02-1.06); without it a drop file in Brix is quarantined, never guessed.",
    )


class SimulationSettings(BaseSettings):
    """The simulated cellar (the demo's world) and the drift it can inject."""

    model_config = ENVIRONMENT

    simulation_start: str = Field("2026-01-01", description="First pitch of the simulated world.")
    simulation_days: int = Field(240, description="Length of the simulated world in days.")
    simulation_fermenters: int = Field(8, description="Fermenters in the simulated cellar.")
    simulation_profile: str = Field(
        "default",
        description="Brewery the simulator models (a name in ingest.simulator.PROFILES).",
    )
    drift_column: Literal["brand", "yeast_strain", "fermenter"] = Field(
        "yeast_strain", description="Slice column that the simulator's drift slows down."
    )
    drift_value: str | None = Field(None, description="Slice value to slow down (none: no drift).")
    drift_start: str = Field("2026-03-01", description="Pitch date from which the drift applies.")
    drift_late_slope_factor: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Drift as a sluggish finish: the gravity curve's slope after its "
        "midpoint is multiplied by this (1: no slowdown).",
    )
    drift_midpoint_hours: float = Field(
        0.0, description="Drift as a late start: hours added to the curve's midpoint."
    )


class LabelSettings(BaseSettings):
    """What counts as finished, and how often a batch is snapshotted."""

    model_config = ENVIRONMENT

    horizon_hours: float = Field(24.0, description="Predict finishing within this horizon.")
    snapshot_every_hours: float = Field(6.0, description="Snapshot cadence during a batch.")
    terminal_tolerance_plato: float = Field(
        0.3,
        description="A plateau: no reading in its window falls more than this below its "
        "first reading (°P).",
    )
    plateau_hours: float = Field(
        48.0,
        description="The plateau's window: how long gravity must hold after its first "
        "reading (h; brewers look for two to three days).",
    )
    plateau_confirm_hours: float = Field(
        20.0,
        description="A plateau counts once a reading at least this long after its first "
        "one confirms it (h): a day later, on the next day's round.",
    )


class ValidationSettings(BaseSettings):
    """How Great Expectations validation decides and quarantines."""

    model_config = ENVIRONMENT

    validation_policy: Literal["rows", "partition"] = Field(
        "rows",
        description="On failed row checks: quarantine only the bad rows, or the whole "
        "partition. Table-level failures (drift, emptiness) always take the whole partition.",
    )
    max_gravity_rise_plato: float = Field(
        1.0, description="Gravity never rises; a rise above this between readings is a typo."
    )
    max_gravity_cumulative_rise_plato: float = Field(
        2.0,
        description="A rise above the batch's lowest earlier gravity by more than this is a "
        "failure, however small each step (a slow creep passes the per-step rule).",
    )
    max_gravity_dip_plato: float = Field(
        3.0,
        description="A gravity reading this far below both its neighbours (a field cut "
        "short: 18.0 read as 1) is a failure; a fermentation never dips and recovers.",
    )
    future_tolerance_minutes: float = Field(
        10.0, description="Clock skew allowed before a timestamp counts as in the future."
    )
    drift_tolerance_std: float = Field(
        1.0,
        description="Feature mean/median may move this many reference std (plus sampling "
        "noise) before the new data counts as grossly drifted.",
    )
    drift_policy: Literal["warn", "quarantine"] = Field(
        "warn",
        description="Gross feature drift fails validation loudly; quarantine the "
        "drifted partitions too, or keep their rows for retraining (default).",
    )
    distribution_min_rows: int = Field(
        20, description="Partitions smaller than this get no distribution expectations."
    )


class TrainingSettings(BaseSettings):
    """The network, its optimisation, calibration, threshold and data splits."""

    model_config = ENVIRONMENT

    hidden_layers: str = Field("64,32", description="Hidden layer widths, comma-separated.")
    activation: str = Field("relu", description="Hidden layer activation.")
    l1: float = Field(0.0, description="L1 weight penalty (drives useless weights to zero).")
    l2: float = Field(1e-4, description="L2 weight penalty.")
    dropout: float = Field(0.1, description="Dropout rate after each hidden layer.")
    learning_rate: float = Field(2e-3, description="Adam learning rate.")
    batch_size: int = Field(256, description="Training batch size.")
    epochs: int = Field(60, description="Maximum epochs (early stopping usually ends sooner).")
    patience: int = Field(8, description="Early-stopping patience in epochs.")
    calibration_method: Literal["platt", "temperature", "none"] = Field(
        "platt", description="Recalibration fitted on the validation split."
    )
    threshold_policy: Literal["cost", "precision_target"] = Field(
        "cost", description="How the decision threshold is chosen on the validation split."
    )
    cost_false_finished: float = Field(
        10.0, description="Cost of calling a batch finished when it is not (spoiled beer)."
    )
    cost_late: float = Field(1.0, description="Cost of a late call (tank time wasted).")
    cost_needless_reading: float = Field(
        1.0,
        gt=0,
        description="Cost of a gravity reading asked for too early (a walk to the tank), in "
        "the units of cost_late: it sets the prompt threshold, from which a batch logged by "
        "hand is asked for a reading (and made ready by one that agrees with the last).",
    )
    precision_target: float = Field(0.95, description="Precision floor of that policy.")
    min_split_batches: int = Field(
        5, description="Fewest batches each of train/validation/test may have."
    )
    familiarity_quantile: float = Field(
        0.995,
        gt=0.5,
        lt=1.0,
        description="Out-of-distribution threshold: this quantile of the validation split's "
        "distance to the training data (a snapshot beyond it is flagged).",
    )
    model_families: str = Field(
        "network,boosted",
        pattern=r"^\s*(network|boosted)\s*(,\s*(network|boosted)\s*)*$",
        description="Model families trained on the same split (comma-separated: network, "
        "boosted); the one with the lowest calibrated validation log loss on pre-finish rows "
        "is the run's candidate, the others are logged as compared alternatives.",
    )
    boosted_rounds: int = Field(800, ge=1, description="Most boosting rounds (early stopping).")
    boosted_learning_rate: float = Field(0.05, gt=0, description="Boosting learning rate.")
    boosted_leaves: int = Field(31, ge=2, description="Leaves per boosted tree.")
    boosted_min_child_rows: int = Field(40, ge=1, description="Fewest rows in a boosted leaf.")
    bootstrap_replicates: int = Field(
        200,
        ge=20,
        description="Batch-bootstrap resamples behind every metric's interval (a batch is "
        "the unit: its snapshots are correlated).",
    )
    unknown_category_share: float = Field(
        0.05,
        ge=0.0,
        lt=0.5,
        description="Share of training batches whose brand, fermenter or strain each family "
        "is trained on as unknown (a seeded draw per column), so the out-of-vocabulary "
        "embedding is learned rather than left at its initial values.",
    )
    interval_group_column: Literal["yeast_strain", "brand", "fermenter"] = Field(
        "yeast_strain",
        description="The slice column whose values get their own finish-time intervals "
        "(per predicted-hours bucket) where the calibration split has the batches for it.",
    )
    interval_min_group_batches: int = Field(
        10,
        ge=2,
        description="Calibration batches a group of the finish forecast needs to have its own "
        "intervals (fewer: the group above it answers, every strain's, then every snapshot's).",
    )
    reproducible_training: bool = Field(
        True,
        description="Train in pinned numerics (oneDNN's baseline kernels, one thread, "
        "deterministic ops, no GPU) so that any x86-64 machine trains the same model bit for "
        "bit from the same features, settings and seed (models.reproducible); false trains "
        "with the machine's own kernels and threads.",
    )
    vocabulary_min_batches: int = Field(
        2,
        ge=1,
        description="A brand, fermenter or strain gets its own embedding when the training "
        "split has it in at least this many batches; rarer ones share the out-of-vocabulary "
        "bucket.",
    )


class RegistrySettings(BaseSettings):
    """MLflow and the promotion gate."""

    model_config = ENVIRONMENT

    mlflow_tracking_uri: str | None = Field(
        None, description="Tracking server or store (default: sqlite:///HOME/mlflow.db)."
    )
    experiment: str = Field("brewcast-training", description="MLflow experiment of training.")
    model_name: str = Field("fermentation-completion", description="Registered model name.")
    gate_max_ece: float = Field(0.05, description="Largest overall ECE a champion may have.")
    gate_max_slice_ece: float = Field(0.10, description="Largest ECE in a supported slice.")
    gate_max_abs_bias: float = Field(
        0.05,
        description="Bias tolerance: the gate fails when the bias interval (overall, or of a "
        "tested slice) lies wholly beyond it.",
    )
    gate_min_slice_batches: int = Field(
        15, ge=2, description="Batches a slice needs to be tested (smaller: 'not tested')."
    )
    gate_tolerance: float = Field(
        0.01, description="How much worse than the champion (log loss, AUC) a challenger may be."
    )
    gate_max_coverage_shortfall: float = Field(
        0.05,
        description="The gate fails when the interval of the finish forecast's overall "
        "coverage lies wholly below the nominal level minus this (80% and 95% intervals).",
    )
    gate_max_slice_coverage_shortfall: float = Field(
        0.07,
        description="The same for a tested slice (a strain, brand, fermenter or forecast "
        "bucket with the batches to be tested).",
    )
    gate_max_width_ratio: float = Field(
        1.0,
        description="The candidate's median 80% window at most this many times the brand "
        "history's (where the history's window covers within the limit).",
    )
    gate_min_recall: float = Field(
        0.30,
        description="The decision must fire: its recall of batches finishing within the "
        "horizon, at the chosen threshold on pre-finish test rows, at least this.",
    )
    gate_max_horizon_disagreement: float = Field(
        0.10,
        description="Largest mean |P(finished by the horizon) - the classifier's probability| "
        "between the finish forecast and the decision's probability.",
    )


class ServingSettings(BaseSettings):
    """The BentoML service, onnxruntime and the prediction log."""

    model_config = ENVIRONMENT

    require_gpu: bool = Field(False, description="Refuse to serve on the CPU (no silent fallback).")
    prefer_gpu: bool = Field(True, description="Ask onnxruntime for CUDA first when it has it.")
    use_tensorrt: bool = Field(False, description="Ask for TensorRT before CUDA.")
    serving_threads: int = Field(0, description="onnxruntime intra-op threads (0: usable CPUs).")
    serving_spinning: bool = Field(False, description="Let onnxruntime threads spin.")
    serving_workers: int = Field(
        1, ge=1, description="BentoML worker processes (each loads the model and logs rows)."
    )
    serving_api_threads: int = Field(4, ge=1, description="Threads per worker for sync APIs.")
    serving_max_rows: int = Field(1000, description="Most rows one /predict may carry (413).")
    serving_max_body_bytes: int = Field(
        8 * 2**20, ge=1, description="Largest request body (413 before it is read whole)."
    )
    serving_access_log: bool = Field(False, description="BentoML's per-request access log.")
    board_open: bool = Field(
        False,
        description="Let the cellar board's read-only pages open without the API key (its "
        "data, and acknowledging or overriding a ready event, still need it).",
    )
    ready_webhook_url: str | None = Field(
        None, description="Where each batch's 'ready' event is POSTed (JSON; retried)."
    )
    ready_airflow_url: str | None = Field(
        None,
        description="Airflow's base URL: each 'ready' event becomes an asset event of "
        "brewcast://cellar/batch-ready there, which a brewery's own DAG can schedule on.",
    )
    ready_airflow_user: str = Field("admin", description="Airflow user for the asset events.")
    ready_airflow_password: str = Field("admin", description="Its password.")
    serving_forecast_every_minutes: float = Field(
        15.0,
        ge=0,
        description="How often the service forecasts every running batch from its readings "
        "by itself (what the board shows and what raises 'ready' events; 0: only on request).",
    )
    serving_cached_batches: int = Field(
        1000,
        ge=1,
        description="Batches whose readings a worker keeps in memory for forecasts (16 bytes "
        "a reading; the least recently forecast go first).",
    )
    serving_inline_rows: int = Field(
        256,
        ge=0,
        description="/predict scores up to this many rows on the event loop, more on a thread.",
    )
    serving_api_key: str | None = Field(
        None,
        description="An admin key (header X-API-Key); with it, or any key issued with "
        "`brewcast keys`, every data route needs a key of the right scope.",
    )
    serving_error_tarpit_after: int = Field(
        50,
        ge=0,
        description="After this many refused requests (4xx) from one address in 10 s, each "
        "further refusal is answered 20 ms later than the last (at most 1 s): a client "
        "flooding the service with bad requests slows itself, not the devices (0: never).",
    )
    serving_open_metadata: bool = Field(
        False, description="Answer GET /metadata without X-API-Key even when a key is set."
    )
    serving_max_json_depth: int = Field(
        8, ge=3, description="Deepest JSON nesting a request body may have (400 beyond)."
    )
    serving_poll_seconds: float = Field(
        30.0, description="How often the service checks MLflow for a new champion (0: never)."
    )
    serving_url: str | None = Field(
        None, description="The deployed service, told to reload after a promotion."
    )
    prediction_log_url: str | None = Field(
        None, description="Prediction log database (default: sqlite:///HOME/predictions.db)."
    )
    prediction_log_mode: Literal["sync", "async"] = Field(
        "sync", description="sync: respond after commit (group commit); async: bounded queue."
    )
    prediction_log_queue: int = Field(10_000, description="Async mode's queue bound in rows.")


class MonitoringSettings(BaseSettings):
    """Monitoring windows, support and alarm limits."""

    model_config = ENVIRONMENT

    monitor_experiment: str = Field("brewcast-monitoring", description="MLflow experiment.")
    monitor_window_days: float = Field(7.0, description="Length of a monitoring window.")
    monitor_min_support: int = Field(
        60, description="Labelled predictions a slice needs before it may alarm."
    )
    monitor_min_batches: int = Field(
        8,
        description="Distinct batches a slice needs before it may alarm (snapshots of one "
        "batch are not independent).",
    )
    monitor_max_abs_bias: float = Field(0.08, description="Largest |bias| before an alarm.")
    monitor_max_hours_bias: float = Field(
        8.0, description="Largest |mean(predicted - actual hours remaining)| before an alarm."
    )
    monitor_alpha: float = Field(
        0.01, description="Family-wise error rate of the bias alarms (Holm over all tests)."
    )
    monitor_max_ece: float = Field(0.15, description="Largest ECE before an alarm.")
    monitor_max_coverage_shortfall: float = Field(
        0.10,
        description="How far below its nominal level (80%, 95%) a slice's live interval "
        "coverage may fall before an alarm (tested like the biases, Holm-corrected).",
    )
    monitor_false_alarms_per_slice_year: float = Field(
        1.0,
        gt=0,
        description="False alarms the sequential test (a CUSUM per slice since deployment) "
        "may raise per slice-year on a clean cellar; its threshold follows from it and the "
        "slice's batch rate.",
    )
    monitor_drift_days: float = Field(
        28.0, gt=0, description="Days of served batches the drift tests compare with training."
    )
    monitor_min_drift_effect: float = Field(
        0.5,
        gt=0,
        description="Shift of a feature's served mean, in training standard deviations, a "
        "significant drift needs before it alarms.",
    )
    monitor_webhook_url: str | None = Field(None, description="Alerts are POSTed here too.")


class Settings(
    IngestSettings,
    SimulationSettings,
    LabelSettings,
    ValidationSettings,
    TrainingSettings,
    RegistrySettings,
    ServingSettings,
    MonitoringSettings,
):
    """Every knob of brewcast, with its default for the embedded mode: the groups above (one
    per concern, each usable as a type on its own) and the home they all live under. The
    environment variables are the fields' names with the ``BREWCAST_`` prefix."""

    model_config = ENVIRONMENT

    home: Path = Field(Path(".brewcast"), description="Root of the lake, stores and logs.")
    seed: int = Field(42, description="Seed of the simulator and of training.")

    @property
    def paths(self) -> Paths:
        """Every location under ``home``."""
        return Paths(self.home, self.drop_dir)

    @property
    def prediction_log(self) -> str:
        return self.prediction_log_url or f"sqlite:///{self.paths.predictions_db.resolve()}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.paths.mlflow_db.resolve()}"


def get_settings(**overrides: object) -> Settings:
    """Read the settings now (environment + overrides); cheap, so call it where needed."""
    return Settings(**overrides)
