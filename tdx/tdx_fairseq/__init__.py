"""fairseq plugin for tdx: `--user-dir $(tdx plugin-dir)` registers every tdx model, task
and criterion with fairseq, and allow-lists fairseq's checkpoint classes for torch.load.

The directory name is globally unique because fairseq imports a user dir by its basename.
"""

from tdx.checkpoints import allow_fairseq_checkpoints

allow_fairseq_checkpoints()

import tdx.attention.copy_task  # noqa: E402,F401
import tdx.attention.models  # noqa: E402,F401
