"""Where curves go besides the HDF5 files: TensorBoard (``tb/``) and, optionally, MLflow.

``tracking: ["tensorboard", "mlflow"]`` logs every scalar to both. MLflow gets the resolved options as
parameters, the per-step and per-epoch scalars as metrics, and ``training_plots.png`` and ``figures/``
as artifacts; its run id is kept in the run folder (``mlflow_run.json``), so a resumed run continues
the same MLflow run. The default store is ``sqlite:///MODEL_ROOT/mlflow.db`` with artifacts in
``MODEL_ROOT/mlartifacts`` (``mlflow ui --backend-store-uri sqlite:///models/mlflow.db`` shows them).
"""

import json
import logging
import os

from nenya.errors import NenyaError
from nenya.io.atomic import write_json

RUN_FILE = "mlflow_run.json"


class Tracking:
    """A SummaryWriter-like sink (``add_scalar``, ``flush``, ``close``) for TensorBoard and MLflow."""

    def __init__(self, opt, folder: str, resume: bool, step: int):
        self.folder = folder
        self.tensorboard = None
        if "tensorboard" in opt.tracking:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(os.path.join(folder, "tb"), purge_step=step if resume else None)
        self.client, self.run_id = (None, None) if "mlflow" not in opt.tracking else _mlflow_run(opt, folder, resume)

    def add_scalar(self, name: str, value: float, step: int) -> None:
        """Log one scalar at ``step`` (an epoch or a training step, as the name says)."""
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(name, value, step)
        if self.client is not None:
            self.client.log_metric(self.run_id, name, float(value), step=int(step))

    def flush(self) -> None:
        """Write what TensorBoard buffers."""
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def artifacts(self) -> None:
        """Send training_plots.png and figures/ to MLflow."""
        if self.client is None:
            return
        plots = os.path.join(self.folder, "training_plots.png")
        if os.path.isfile(plots):
            self.client.log_artifact(self.run_id, plots)
        figures = os.path.join(self.folder, "figures")
        if os.path.isdir(figures):
            self.client.log_artifacts(self.run_id, figures, artifact_path="figures")

    def close(self, finished: bool = False) -> None:
        """Close TensorBoard; mark the MLflow run finished when the run is."""
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.client is not None and finished:
            self.client.set_terminated(self.run_id)


def _mlflow_run(opt, folder: str, resume: bool):
    """(MlflowClient, run id): the run recorded in the folder when resuming, else a new one with the options."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise NenyaError("option 'tracking' includes mlflow, but MLflow is not installed; pip install -e .[mlflow] "
                         "or remove mlflow from tracking") from None
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    root = os.path.abspath(opt.model_root)
    uri = opt.mlflow_uri or f"sqlite:///{os.path.join(root, 'mlflow.db')}"
    try:
        client = MlflowClient(tracking_uri=uri)
        record = os.path.join(folder, RUN_FILE)
        if resume and os.path.isfile(record):
            with open(record) as handle:
                run_id = json.load(handle)["run_id"]
            client.update_run(run_id, status="RUNNING")
            return client, run_id
        name = opt.experiment_name or opt.method
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            name, artifact_location=f"file:{os.path.join(root, 'mlartifacts')}")
        run_id = client.create_run(experiment_id, run_name=opt.model_name).info.run_id
    except Exception as err:  # an unreachable server or a bad URI: one line, not MLflow's traceback
        raise NenyaError(f"MLflow at {uri} (option 'mlflow_uri'): {str(err).splitlines()[0]}") from None
    from mlflow.entities import Param
    client.log_batch(run_id, params=[Param(key, json.dumps(value)[:6000]) for key, value in sorted(opt.to_dict().items())])
    write_json(os.path.join(folder, RUN_FILE), {"run_id": run_id, "tracking_uri": uri}, indent=2)
    return client, run_id
