"""The ctr kit's ``Task``: what the core verbs (predict/serve with ``--weights``) call."""

from __future__ import annotations

from torch import nn

from e2ekit.core.engine.task import ExportSpec, Task
from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.engine.stepper import build_model
from e2ekit.ctr.export import export_spec
from e2ekit.ctr.models.zoo import CtrModel


class CtrTask(Task):
    kit = "ctr"
    schema = CtrConfig
    default_metric = "auc"
    metric_mode = "max"

    def __init__(self, cfg: CtrConfig) -> None:
        super().__init__(cfg)
        self.cfg: CtrConfig = cfg

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def build_dataset(self, split: str) -> None:
        return None  # ctr streams files (ctr/data), it has no indexable dataset

    def export_spec(self, model: nn.Module) -> ExportSpec:
        assert isinstance(model, CtrModel)
        return export_spec(model, self.cfg, version="checkpoint")
