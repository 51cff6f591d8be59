"""Baselines run in dbb_hf's own harness (same data, model factory, Accelerate loop,
evaluation and model selection), so that ``dbb-hf compare`` sets DBB against them on the
user's data: one small module per method.

| method | module | group labels it uses |
|---|---|---|
| ``erm`` | :mod:`dbb_hf.training` | none (validation, when selecting by worst-group accuracy) |
| ``reweight`` | :mod:`.reweight` (loss weights 1 / n_g) | train |
| ``upsample`` | :mod:`.reweight` (sampling 1 / n_g) | train |
| ``groupdro`` | :mod:`.groupdro` | train |
| ``jtt`` | :mod:`.jtt` | none (validation, when selecting by worst-group accuracy) |
| ``dfr`` | :mod:`.dfr` | validation (none with ``balance_by="class"``) |
| ``dbb`` | :mod:`dbb_hf.pipeline` | none (validation, when selecting by worst-group accuracy or
  learning tokens from a validation group) |
| ``dbb_dfr`` | the DBB model's last layer reset by DFR | as ``dfr`` |
"""

from .dfr import DFRConfig, run_dfr
from .groupdro import GroupDROConfig, GroupDROLoss
from .jtt import JTTConfig, error_set, upsample
from .reweight import GroupReweightedLoss, group_weights, upsampling_weights

# Methods that use the training split's group labels.
USES_TRAIN_GROUPS = ("reweight", "upsample", "groupdro")

__all__ = [
    "DFRConfig", "GroupDROConfig", "GroupDROLoss", "GroupReweightedLoss", "JTTConfig", "USES_TRAIN_GROUPS",
    "error_set", "group_weights", "run_dfr", "upsample", "upsampling_weights",
]
