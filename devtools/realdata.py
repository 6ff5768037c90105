"""The real hydrometer logs of ``tests/fixtures/realdata`` (MIT, their LICENSE files beside
them) through the drop folder, validation and the features code: their snapshots, as a
model trained on brewcast's lake would be scored on them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

REALDATA = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "realdata"
SAISON = ("tilt_saison_2025-11.jsonl", "tilt_saison_2025-11_batch.json")
MEAD = ("tilt_mead_2024-12.csv",)


def real_snapshots(settings, names: tuple[str, ...]) -> pd.DataFrame:
    """The snapshots of the real logs ``names``, ingested under ``settings``' home."""
    from application import stages
    from brewcast import lake
    from brewcast.schema import BATCHES, READINGS
    from models.dataset import LabelRules, build_snapshots

    settings.paths.drop.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(REALDATA / name, settings.paths.drop / name)
    stages.ingest(settings, "drop")
    stages.validate(settings)
    return build_snapshots(
        lake.read_table(settings.paths.lake, "validated", BATCHES),
        lake.read_table(settings.paths.lake, "validated", READINGS),
        LabelRules.from_settings(settings),
    )
