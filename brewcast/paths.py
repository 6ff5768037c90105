"""Every location brewcast keeps under ``BREWCAST_HOME``, named once.

Modules ask :class:`Paths` (``settings.paths``) where a thing lives instead of composing
``home / "..."`` themselves, so a location changes in one place and ``brewcast demo`` can
clear exactly what brewcast writes. Nothing here touches the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """The layout of one brewcast home (``drop_dir`` overrides the drop folder)."""

    home: Path
    drop_dir: Path | None = None

    # -- the lake and what feeds it -----------------------------------------------------
    @property
    def lake(self) -> Path:
        return self.home / "lake"

    @property
    def drop(self) -> Path:
        return self.drop_dir if self.drop_dir is not None else self.home / "drop"

    @property
    def brewerypi_db(self) -> Path:
        """Where ``brewcast simulate --to brewerypi`` writes when given no URL."""
        return self.home / "brewerypi.db"

    @property
    def labelled_batches(self) -> Path:
        """The batches labelled at the last features build (to count the new ones)."""
        return self.home / "features" / "labelled_batches.json"

    # -- validation -----------------------------------------------------------------------
    @property
    def gx_project_root(self) -> Path:
        """Great Expectations keeps its file-backed project in ``gx/`` under this."""
        return self.home

    @property
    def gx_uncommitted(self) -> Path:
        return self.home / "gx" / "uncommitted"

    @property
    def validation_summary(self) -> Path:
        return self.home / "validation" / "last_run.json"

    @property
    def validation_reference(self) -> Path:
        """The champion's training statistics that new features are checked against."""
        return self.home / "validation" / "reference.json"

    # -- training and the model stores ------------------------------------------------------
    @property
    def training(self) -> Path:
        return self.home / "training"

    def training_run(self, run_id: str) -> Path:
        """The work directory of one training run (re-running a step reuses it)."""
        return (self.training / re.sub(r"[^A-Za-z0-9._-]", "_", run_id)).resolve()

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    # -- serving and monitoring -------------------------------------------------------------
    @property
    def predictions_db(self) -> Path:
        return self.home / "predictions.db"

    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"

    @property
    def champion_download(self) -> Path:
        return self.home / "serving" / "download"

    @property
    def monitoring(self) -> Path:
        return self.home / "monitoring"

    @property
    def monitoring_summary(self) -> Path:
        return self.monitoring / "summary.json"

    # -- the demo and its servers -----------------------------------------------------------
    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def demo(self) -> Path:
        return self.home / "demo"

    def state(self) -> tuple[list[Path], list[Path]]:
        """(folders, files) holding brewcast's state: what a fresh demo clears."""
        folders = [
            self.lake,
            self.drop,
            self.home / "serving",
            self.home / "validation",
            self.airflow_home,
            self.bentoml_home,
            self.mlflow_artifacts,
            self.training,
            self.monitoring,
            self.home / "gx",
            self.home / "features",
            self.demo,
        ]
        db = self.predictions_db
        files = [self.mlflow_db, db, db.with_name(f"{db.name}-wal"), db.with_name(f"{db.name}-shm")]
        return folders, files
