"""Fine-tuning: linear probe, then train the top of a backbone on its cached maps (`featx finetune`).

The training function for engines (H4b's featx.finetune.distributed wraps it):

    train_top(config: TopConfig, train: MapRows, val: MapRows, *, head=(W, b), checkpoint=None,
              strategy=None, log=print, network=None) -> TopResult

in featx.finetune.top: plain options and file paths in, the best epoch's weights and history out;
the network is built inside `strategy.scope()` when a tf.distribute strategy is given.
"""

from featx.finetune.options import DEFAULTS, FinetuneOptions
from featx.finetune.run import FinetuneResult, finetune, finetune_with

__all__ = ["DEFAULTS", "FinetuneOptions", "FinetuneResult", "finetune", "finetune_with"]
