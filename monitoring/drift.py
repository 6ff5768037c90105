"""Label-free drift that means something: batches, not snapshots; the same season; a test
that knows its sample size; and alarms ranked by how much they move the model.

PSI on every snapshot fired all the time, even on the champion's own training rows: a long
batch repeats its original gravity, pitch temperature and oxygen in every snapshot, so a
week of ~20 batches is lumpy by construction, and seasonal features differ from a whole
year's reference in every week. Here each batch counts once, at the snapshot nearest
:data:`~validation.reference.DRIFT_AGE_HOURS` after pitch, and is compared with the
training batches of its own season (all of them where the reference lacks it) by a
two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``), Holm-corrected over every
feature and season tested. An alarm also needs a material shift: the served mean at least
``monitor_min_drift_effect`` reference standard deviations away. Alarms are ranked by
impact, the effect times the feature's importance to the model (its absolute Spearman
correlation with the model's probability on the training batches; 1 for the probability
itself, whose drift is the model's output moving).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from brewcast.settings import Settings
from models.metrics import holm
from validation.reference import at_age

#: Batches a season needs, served and in the reference, before it is tested.
MIN_BATCHES = 10
DRIFT_COLUMNS = [
    "slice",
    "value",
    "feature",
    "served_batches",
    "reference_batches",
    "effect",
    "ks_statistic",
    "p_value",
    "p_adjusted",
    "importance",
    "impact",
    "alarm",
]


def served_at_age(predictions: pd.DataFrame) -> pd.DataFrame:
    """The logged predictions as one row per batch at the drift age: its features, its
    season and the probability served."""
    features = pd.json_normalize(predictions["features"].map(json.loads).tolist())
    features.index = predictions.index
    rows = features.assign(
        batch_id=predictions["batch_id"],
        season=predictions["season"].astype(object).fillna("(missing)").astype(str),
        probability=predictions["probability"].astype(float),
    )
    if "hours_since_pitch" not in rows:
        return rows.iloc[0:0]
    return at_age(rows[rows["batch_id"].notna()])


def drift_table(
    predictions: pd.DataFrame, reference: dict | None, settings: Settings
) -> pd.DataFrame:
    """Each (season, feature)'s test of the served batches against the reference's, most
    impactful alarm first (empty: no batch reference, or nothing to test)."""
    from scipy.stats import ks_2samp, spearmanr

    if not reference or "batches" not in reference or predictions.empty:
        return pd.DataFrame(columns=DRIFT_COLUMNS)
    base = pd.DataFrame(reference["batches"]["values"]).assign(
        season=reference["batches"]["season"]
    )
    served = served_at_age(predictions)
    importance = {
        f: 1.0
        if f == "probability"
        else float(
            abs(np.nan_to_num(spearmanr(base[f], base["probability"], nan_policy="omit")[0]))
        )
        if "probability" in base and base[f].nunique() > 1
        else 0.0
        for f in base.columns
        if f != "season"
    }
    rows = []
    for season, part in served.groupby("season", sort=True):
        same = base[base["season"] == season]
        against = same if len(same) >= MIN_BATCHES else base
        for feature in importance:
            if feature not in part:
                continue
            now = pd.to_numeric(part[feature], errors="coerce").dropna().to_numpy()
            then = pd.to_numeric(against[feature], errors="coerce").dropna().to_numpy()
            if len(now) < MIN_BATCHES or len(then) < MIN_BATCHES or np.ptp(then) == 0:
                continue
            test = ks_2samp(now, then)
            effect = (now.mean() - then.mean()) / then.std(ddof=1)
            rows.append(
                {
                    "slice": "season",
                    "value": season if against is same else f"{season} (vs every season)",
                    "feature": feature,
                    "served_batches": len(now),
                    "reference_batches": len(then),
                    "effect": float(effect),
                    "ks_statistic": float(test.statistic),
                    "p_value": float(test.pvalue),
                    "importance": importance[feature],
                    "impact": float(abs(effect) * importance[feature]),
                }
            )
    if not rows:
        return pd.DataFrame(columns=DRIFT_COLUMNS)
    table = pd.DataFrame(rows)
    table["p_adjusted"] = holm(table["p_value"].to_numpy())
    table["alarm"] = (table["p_adjusted"] < settings.monitor_alpha) & (
        table["effect"].abs() >= settings.monitor_min_drift_effect
    )
    return table.sort_values(["alarm", "impact"], ascending=False, ignore_index=True)[DRIFT_COLUMNS]
