"""The ``brewcast`` command line: one subcommand per pipeline step.

Heavy libraries are imported inside the commands, so ``brewcast --help`` stays instant.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from brewcast.settings import get_settings

app = typer.Typer(
    help="brewcast: predict when a fermentation will finish, and run its MLOps.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _simulated_span(
    settings, start: str | None, end: str | None, days: float | None
) -> dict[str, object]:
    """``start`` and ``days`` of the simulated world from the command line's span: both
    ends given fix the days; an end alone, or neither (today), puts the start days before
    it; a start from BREWCAST_SIMULATION_START counts as given."""
    import pandas as pd

    def day(text: str, option: str) -> pd.Timestamp:
        try:
            return pd.Timestamp(text, tz="UTC")
        except ValueError as exc:
            raise ValueError(f"{option} must be a date such as 2026-01-01, not {text!r}") from exc

    if start is None and end is None and "simulation_start" in settings.model_fields_set:
        return {}
    length = float(days if days is not None else settings.simulation_days)
    if start is not None and end is not None:
        first, last = day(start, "--start"), day(end, "--end")
        if days is not None and last - first != pd.Timedelta(days=length):
            raise ValueError("give two of --start, --end and --days, not three that disagree")
        if last <= first:
            raise ValueError(f"--end {end} is not after --start {start}")
        return {"start": first, "days": (last - first) / pd.Timedelta(days=1)}
    if start is not None:
        return {"start": day(start, "--start")}
    last = day(end, "--end") if end is not None else pd.Timestamp.now("UTC").normalize()
    return {"start": last - pd.Timedelta(days=length)}


@app.command()
def simulate(
    to: Annotated[
        str, typer.Option(help="lake | drop | erp (a hand log's ERP export) | brewerypi")
    ] = "lake",
    out: Annotated[
        str | None,
        typer.Option(
            help="Drop folder, or Brewery Pi SQLAlchemy URL or SQLite file (default: settings)."
        ),
    ] = None,
    days: Annotated[float | None, typer.Option(help="Days to simulate.")] = None,
    fermenters: Annotated[int | None, typer.Option(help="Fermenters in the cellar.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    file_format: Annotated[str, typer.Option("--format", help="csv | parquet (drop)")] = "csv",
    brewery: Annotated[
        str | None,
        typer.Option(help="Brewery profile to simulate (default: BREWCAST_SIMULATION_PROFILE)."),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            help="First pitch, YYYY-MM-DD (default: BREWCAST_SIMULATION_START where set, else "
            "the world ends today)."
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(help="Day the world ends, YYYY-MM-DD (the start is then end - days)."),
    ] = None,
) -> None:
    """Simulate a cellar and write it to the lake, a drop folder, an ERP's fermentation export
    (a hand log: dates only, through the generic column mapping) or a Brewery Pi database
    (the drop folder and the database in the brewery's own units). Unless
    told a start, the world ends today: nothing it writes lies in the future."""
    import pandas as pd

    from application import stages
    from ingest.brewerypi import write_brewerypi
    from ingest.simulator import simulate as run_simulation
    from ingest.sources import simulation_config, write_drop_files, write_erp_export

    settings = get_settings()
    overrides = {
        k: v
        for k, v in dict(days=days, fermenters=fermenters, seed=seed, profile=brewery).items()
        if v is not None
    }
    try:
        overrides |= _simulated_span(settings, start, end, days)
        config = simulation_config(settings, **overrides)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    ahead = config.end - pd.Timestamp.now("UTC")
    if ahead > pd.Timedelta(0):
        typer.secho(
            f"warning: the world's last {ahead / pd.Timedelta(days=1):.1f} days lie in the "
            "future; validation quarantines their readings as not_in_future",
            fg=typer.colors.YELLOW,
            err=True,
        )
    if to == "lake":
        manifest = stages.ingest(settings, "simulator", config.start, config.end, config)
        typer.echo(manifest.details["summary"])
        return
    world = run_simulation(config, progress=True)
    if to == "drop":
        folder = Path(out) if out else settings.paths.drop
        paths = write_drop_files(
            world.batches, world.readings, folder, file_format, dict(config.brewery.units)
        )
        typer.echo(f"wrote {len(paths)} drop file(s) to {folder}")
    elif to == "erp":
        folder = Path(out) if out else settings.paths.drop
        transfers = world.truth.set_index("batch_id")["transfer_time"].dropna().to_dict()
        path = write_erp_export(
            world.batches, world.readings, folder, settings.local_timezone, transfers
        )
        typer.echo(f"wrote the ERP fermentation export {path} and its mapping")
    elif to == "brewerypi":
        url = out or settings.brewerypi_url or f"sqlite:///{settings.paths.brewerypi_db}"
        if "://" not in url:
            url = f"sqlite:///{Path(url).resolve()}"
        write_brewerypi(url, world.batches, world.readings, dict(config.brewery.units))
        typer.echo(
            f"wrote {len(world.batches)} event frames and {len(world.readings)} readings to {url}"
        )
    else:
        raise _fail(f"--to must be lake, drop, erp or brewerypi, not {to!r}")
    typer.echo(
        f"{len(world.batches)} batches ({int(world.truth['stuck'].sum())} stuck), "
        f"{len(world.readings)} readings, {pd.Timestamp(config.start):%Y-%m-%d} "
        f"+ {config.days:g} days"
    )


@app.command()
def ingest(
    source: Annotated[
        str | None,
        typer.Option(
            help="simulator | drop | brewerypi | service (the readings devices pushed to the "
            "service) (default: BREWCAST_SOURCE)"
        ),
    ] = None,
    start: Annotated[str | None, typer.Option(help="Interval start (ISO time, UTC).")] = None,
    end: Annotated[str | None, typer.Option(help="Interval end, exclusive.")] = None,
) -> None:
    """Pull an interval (or the pending drop files) into the lake's raw stage.

    Exit code 0: everything read was ingested; 1: a drop file was quarantined, or an entry
    of the drop folder was ignored (a directory, a hidden file: named in the output);
    2: the source cannot be read."""
    from application import stages
    from brewcast.schema import SchemaError
    from ingest.brewerypi import BreweryPiError
    from ingest.sources import IngestError

    try:
        manifest = stages.ingest(get_settings(), source, start, end)
    except (IngestError, BreweryPiError, SchemaError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(manifest.details["summary"])
    if manifest.counts["files_rejected"] or manifest.counts.get("files_ignored"):
        raise typer.Exit(1)


@app.command()
def validate(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="A CSV/Parquet file to validate; default: every new raw lake partition."
        ),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Re-validate every raw partition, not only new ones.")
    ] = False,
    policy: Annotated[
        str | None, typer.Option(help="rows | partition (default: BREWCAST_VALIDATION_POLICY)")
    ] = None,
) -> None:
    """Validate with Great Expectations: good rows to validated/, bad ones to quarantine/.

    Exit code 0: nothing new failed (partitions still quarantined from earlier runs, unchanged
    since, are reported, not re-checked); 1: new data was quarantined; 2: bad arguments.
    """
    from application import stages

    settings = get_settings(**({"validation_policy": policy} if policy else {}))
    if path is not None and not path.is_file():
        raise _fail(f"{path} is not a file")
    manifest = stages.validate(settings, everything=everything, path=path)
    if not manifest.read:
        typer.echo("nothing new to validate (use --all to re-validate everything)")
        still = manifest.details.get("still_quarantined") or []
        if still:
            typer.echo(f"still quarantined (unchanged since, not a new failure): {len(still)}")
        return
    typer.echo(manifest.details["summary"])
    if not manifest.details["success"]:
        raise typer.Exit(1)


@app.command()
def features(
    stage: Annotated[str, typer.Option(help="Lake stage to build from: validated | raw")] = (
        "validated"
    ),
) -> None:
    """Build labelled snapshots (features at time t + labels), validate them, publish them."""
    from application import stages

    settings = get_settings()
    try:
        manifest = stages.build_features(settings, stage)
    except stages.FeaturesError as exc:
        raise _fail(str(exc), code=1) from exc
    details = manifest.details
    typer.echo(f"{manifest.counts['batches']} batches: {details['outcomes']}")
    if not manifest.counts["snapshots"]:
        typer.echo("no labelled snapshots yet (no batch has finished)")
        return
    typer.echo(details["validation_summary"])
    typer.echo(
        f"{manifest.counts['snapshots']} snapshots; {details['positive_rate']:.1%} finish "
        f"within {settings.horizon_hours:g} h; splits {details['splits']}"
    )


@app.command()
def train(
    workdir: Annotated[
        Path | None, typer.Option(help="Where the stages write (default: HOME/training/<time>).")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No per-epoch lines.")] = False,
    verify_against: Annotated[
        str | None,
        typer.Option(
            help="An MLflow run id: re-train that run from the same features with its recorded "
            "settings, and say whether every graph is bit-identical (nothing is registered; "
            "exit 1 when it does not reproduce)."
        ),
    ] = None,
) -> None:
    """Train, calibrate, choose the threshold, export ONNX, evaluate, gate, register,
    promote."""
    from application import stages
    from models.pipeline import TrainingError

    settings = get_settings()
    if verify_against:
        try:
            manifest = stages.verify_training(verify_against, settings, workdir)
        except (TrainingError, stages.VerificationError) as exc:
            raise _fail(str(exc), code=2) from exc
        details = manifest.details
        recorded = details["recorded"]["family_sha256"]
        for family, digest in details["retrained"]["family_sha256"].items():
            typer.echo(f"  {family}: {digest[:16]} (recorded {recorded.get(family, 'none')[:16]})")
        if details["reproduces"]:
            typer.echo(f"run {verify_against} reproduces: every graph is bit-identical")
            return
        typer.echo(f"run {verify_against} does NOT reproduce:")
        for difference in manifest.warnings:
            typer.echo(f"  {difference}")
        raise typer.Exit(1)
    try:
        steps = stages.train(settings, workdir, progress=not quiet).details
    except TrainingError as exc:
        raise _fail(str(exc), code=1) from exc
    registered, verdict = steps["register"], steps["gate"]
    version = registered["version"]
    losses = {
        f: v["validation_after"]["log_loss"] for f, v in steps["calibrate"]["families"].items()
    }
    typer.echo(
        f"candidate: {steps['calibrate']['candidate']} (validation log loss "
        + ", ".join(f"{f} {v:.4f}" for f, v in losses.items())
        + ")"
    )
    for name, model in steps["evaluate"]["models"].items():
        line = ", ".join(
            f"{metric} {h['value']:.4f} [{h['low']:.4f}..{h['high']:.4f}]"
            for metric, h in model["headline"].items()
            if metric in ("auc", "log_loss", "ece") and h["value"] is not None
        )
        typer.echo(f"  {name} ({model['role']}), pre-finish test rows: {line}")
    against = verdict["note"] or f"gated against version {verdict['champion_version']}"
    typer.echo(
        f"run {registered['run_id']}: registered {settings.model_name} version "
        f"{version} as challenger ({against})"
    )
    if steps["promote"]["promoted"]:
        typer.echo(f"gate passed: version {version} is now champion")
    else:
        typer.echo("gate rejected the model (it stays registered, not promoted):")
        for reason in verdict["reasons"]:
            typer.echo(f"  {reason}")
    typer.echo(f"tracking: {settings.tracking_uri}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def airflow(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="API server / UI port.")] = 8080,
) -> None:
    """Run `airflow ARGS...` in brewcast's embedded setup: AIRFLOW_HOME under BREWCAST_HOME,
    SQLite, LocalExecutor, this project's dags/ (e.g. `brewcast airflow standalone`,
    `brewcast airflow dags test fermentation_ingest 2026-08-20T01:00:00+00:00`)."""
    import os
    import sys

    from application.processes import airflow_env

    settings = get_settings()
    env = airflow_env(
        settings.home,
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}",
    )
    passwords = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
    if not passwords.exists():  # a known login for the UI: admin / admin
        passwords.write_text('{"admin": "admin"}')
    binary = str(Path(sys.executable).with_name("airflow"))
    os.execve(binary, [binary, *ctx.args], {**os.environ, **env})


@app.command()
def demo(
    history_days: Annotated[int, typer.Option(help="Days of history to train on.")] = 365,
    live_days: Annotated[int, typer.Option(help="Days replayed through the service.")] = 56,
    drift_after_days: Annotated[
        int, typer.Option(help="Live days before the yeast turns sluggish.")
    ] = 14,
    fermenters: Annotated[int, typer.Option(help="Fermenters in the cellar.")] = 12,
    mlflow_port: Annotated[int, typer.Option(help="MLflow UI port.")] = 5000,
    airflow_port: Annotated[int, typer.Option(help="Airflow UI port.")] = 8080,
    serving_port: Annotated[int, typer.Option(help="BentoML port.")] = 3000,
    live_until: Annotated[
        str | None,
        typer.Option(
            help="Day the live weeks end, YYYY-MM-DD (default: yesterday). The simulated "
            "weather follows the calendar: a fixed day replays the same world every day."
        ),
    ] = None,
) -> None:
    """The whole loop: MLflow, Airflow and BentoML up; a simulated year ingested and trained
    through Airflow; live weeks with a drift replayed through the service; monitoring."""
    from application import demo as demo_run

    world = demo_run.DemoWorld(
        history_days=history_days,
        live_days=live_days,
        drift_after_days=drift_after_days,
        fermenters=fermenters,
        live_until=live_until,
    )
    try:
        _ = world.live_start  # a day in the future is refused before anything starts
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    ports = demo_run.DemoPorts(mlflow=mlflow_port, airflow=airflow_port, serving=serving_port)
    try:
        result = demo_run.run(get_settings().home, world, ports)
    except (RuntimeError, TimeoutError) as exc:
        raise _fail(f"{exc} (`brewcast stop` ends what the demo started)", 1) from exc
    typer.echo("\n".join(result.lines()))


@app.command()
def stop() -> None:
    """Stop the servers `brewcast demo` started (by pid)."""
    from application import demo as demo_run

    stopped = demo_run.stop(get_settings().home)
    typer.echo(f"stopped {', '.join(stopped)}" if stopped else "nothing to stop")


@app.command()
def monitor() -> None:
    """Compare logged predictions with arrived labels: bias, calibration, drift, alerts."""
    from application import stages

    summary = stages.monitor().details
    typer.echo(
        f"{summary['labelled_predictions']} labelled predictions, "
        f"{summary['pending_predictions']} pending; {len(summary['alerts'])} alert(s), "
        f"{len(summary['drift_alarms'])} drift alarm(s)"
    )
    for alert in summary["alerts"]:
        typer.echo(
            f"  ALERT {alert['window']} {alert['slice']}={alert['value']} "
            f"{alert['metric']} {alert['observed']:+.3f} (limit {alert['limit']:g}, "
            f"{alert['support']} predictions)"
        )
    typer.echo(f"report: {summary['report']}")
    if summary["retrain"]:
        raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 3000,
) -> None:
    """Serve the MLflow champion over REST with BentoML (onnxruntime: CUDA if present)."""
    import os
    import sys

    settings = get_settings()
    os.environ.setdefault("BENTOML_HOME", str(settings.paths.bentoml_home.resolve()))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    bentoml = Path(sys.executable).with_name("bentoml")
    os.execv(
        str(bentoml),
        [
            str(bentoml),
            "serve",
            "serving.service:FermentationService",
            "--host",
            host,
            "--port",
            str(port),
        ],
    )


keys_app = typer.Typer(
    help="API keys: one per device or brewery role, with a scope, stored hashed, revocable.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


def _key_book():
    from serving.access import KeyBook
    from serving.prediction_log import make_engine

    return KeyBook(make_engine(get_settings().prediction_log))


@keys_app.command("issue")
def keys_issue(
    name: Annotated[str, typer.Argument(help="Who holds it: a device or a person's role.")],
    scope: Annotated[
        str,
        typer.Option(
            help="device: push readings only; viewer: board and forecasts; operator: also "
            "batches, devices and acknowledgements; admin: everything."
        ),
    ] = "device",
) -> None:
    """Issue a key and print it once: the service keeps only its hash."""
    from serving.access import KeyRefused

    try:
        key = _key_book().issue(name, scope)
    except KeyRefused as exc:
        raise _fail(str(exc)) from None
    typer.echo(key)
    typer.echo(
        f"issued {scope} key {name!r}: give it as header X-API-Key (or ?key= on /readings "
        "and /board); it is not shown again",
        err=True,
    )


@keys_app.command("list")
def keys_list() -> None:
    """Every issued key's name, scope, and when it was issued or revoked (never the key)."""
    keys = _key_book().issued()
    if not keys:
        typer.echo("no keys issued: the service is open unless BREWCAST_SERVING_API_KEY is set")
    for key in keys:
        revoked = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "live"
        typer.echo(f"{key.name}\t{key.scope}\tissued {key.issued_at:%Y-%m-%d %H:%M}\t{revoked}")


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke a key: the service refuses it within seconds."""
    from serving.access import KEY_CACHE_SECONDS, KeyRefused

    try:
        _key_book().revoke(name)
    except KeyRefused as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"revoked {name!r}: refused within {KEY_CACHE_SECONDS:.0f} s")


if __name__ == "__main__":
    app()
