"""Optional MLflow logging (`mlflow.enabled=true`): a run folder's config as parameters and
its metrics as they are logged, into a local store beside the runs (default
`sqlite:///<runs root>/mlflow.db`; MLflow 3 keeps its file store in maintenance mode).

The run folder stays the record: metrics.jsonl and TensorBoard's event files are written
whatever happens here. MLflow mirrors them: one MLflow run per folder (its id in
summary.json, so a resume continues it), tagged with the folder relative to the runs root
and the commit; when a resume cuts the metrics back, the MLflow run is replaced by one that
holds what the folder kept. A store that fails mid-run is reported once and dropped; it
never stops training. Install with `pip install 'tdx[mlflow]'` (mlflow-skinny and the
SQL store's sqlalchemy and alembic); read with `MlflowClient` or `mlflow ui` (full mlflow).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tdx.errors import UsageError
from tdx.validate import leaves

log = logging.getLogger("tdx")
STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "diverged": "FAILED",
          "failed": "FAILED"}
BATCH = 500  # metrics per log_batch call (MLflow takes up to 1000)


def store_uri(cfg: DictConfig) -> str:
    """The tracking store: `mlflow.uri`, or a SQLite file in the runs root."""
    if cfg.mlflow.uri:
        return str(cfg.mlflow.uri)
    return f"sqlite:///{Path(cfg.paths.runs_dir).resolve() / 'mlflow.db'}"


def check(cfg: DictConfig) -> None:
    """UsageError before any folder when `mlflow.enabled=true` cannot work here."""
    missing = [m for m in ("mlflow", *(("sqlalchemy", "alembic")
                                       if store_uri(cfg).startswith("sqlite") else ()))
               if not _importable(m)]
    if missing:
        raise UsageError(f"mlflow.enabled=true needs {', '.join(missing)}, which is not "
                         "installed: pip install 'tdx[mlflow]' (or leave MLflow off).")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def clean_key(key: str) -> str:
    """A metric or parameter name MLflow accepts (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^\w\-./ ]", "_", key)


class MlflowMirror:
    """The MLflow run of one run folder (rank 0)."""

    def __init__(self, cfg: DictConfig, folder: Path, summary: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=store_uri(cfg))
        self.experiment = str(cfg.name)
        runs_root = Path(cfg.paths.runs_dir).resolve()
        self.folder = str(folder.resolve().relative_to(runs_root)) \
            if folder.resolve().is_relative_to(runs_root) else str(folder)
        self.tags = {"tdx.folder": self.folder, "tdx.commit": str(summary.get("git_commit")),
                     "tdx.experiment": self.experiment}
        self.params = leaves(OmegaConf.to_container(cfg, resolve=True))
        self.run_id = self._live(str(summary.get("mlflow_run_id") or "")) or self._new_run()
        self.client.update_run(self.run_id, status="RUNNING")

    def _live(self, run_id: str) -> str:
        """`run_id` if that MLflow run still exists and is not deleted (a user may delete
        it, or point mlflow.uri elsewhere), else ''."""
        if not run_id:
            return ""
        try:
            return run_id if self.client.get_run(run_id).info.lifecycle_stage == "active" \
                else ""
        except Exception:  # noqa: BLE001 - MlflowException: no such run in this store
            return ""

    def _new_run(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                self.client.create_experiment(self.experiment)
            except Exception:  # noqa: BLE001 - a job of the same sweep made it first
                pass
            exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id
        run = self.client.create_run(exp_id, run_name=self.folder, tags=self.tags)
        from mlflow.entities import Param

        items = [Param(clean_key(k), str(v)[:6000]) for k, v in self.params.items()]
        for i in range(0, len(items), 100):  # MLflow takes 100 parameters per call
            self.client.log_batch(run.info.run_id, params=items[i:i + 100])
        return run.info.run_id

    def log(self, rows: list[tuple[int, str, dict[str, Any]]]) -> None:
        """Metric lines (step, split, metrics) as the metrics split/key at step."""
        from mlflow.entities import Metric

        from tdx.run import numbers

        now = int(time.time() * 1000)
        items = [Metric(clean_key(f"{split}/{key}"), value, now, step)
                 for step, split, metrics in rows for key, value in numbers(metrics)]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, metrics=items[i:i + BATCH])

    def replace(self, rows: list[tuple[int, str, dict[str, Any]]]) -> None:
        """A resume cut the metrics back: a new MLflow run with the kept lines (MLflow
        cannot delete points); the old one is deleted once the new one holds them."""
        old, self.run_id = self.run_id, self._new_run()
        self.log(rows)
        self.client.delete_run(old)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))


def open_mirror(cfg: DictConfig, folder: Path, summary: dict[str, Any]) -> MlflowMirror | None:
    """The folder's MLflow run if `mlflow.enabled`; None (with one warning) if the store
    cannot be opened: training goes on without it."""
    if not cfg.get("mlflow", {}).get("enabled"):
        return None
    try:
        return MlflowMirror(cfg, folder, summary)
    except Exception as e:  # noqa: BLE001 - tracking is optional; the folder is the record
        log.warning("MLflow logging off for this run: %s: %s", type(e).__name__, e)
        return None
