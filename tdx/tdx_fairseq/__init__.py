"""fairseq plugin for tdx: `--user-dir $(tdx plugin-dir)` registers the runner's tasks and
every tdx plugin's models, tasks and criteria with fairseq (`tdx.plugins.register_fairseq`),
and allow-lists fairseq's checkpoint classes for torch.load.

The directory name is globally unique because fairseq imports a user dir by its basename.
"""

import logging

_root = logging.getLogger()
_level, _handlers = _root.level, list(_root.handlers)
import fairseq  # noqa: E402,F401  - on import it sets the root logger to DEBUG; undo that

_root.setLevel(_level)
_root.handlers[:] = _handlers

from tdx.checkpoints import allow_fairseq_checkpoints  # noqa: E402

allow_fairseq_checkpoints()

import tdx.language_modeling  # noqa: E402,F401
import tdx.translation  # noqa: E402,F401
from tdx.plugins import register_fairseq  # noqa: E402

register_fairseq()
