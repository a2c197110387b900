"""tdx: a command-line experiment runner for five papers of one research line."""

import logging
import os

# Checkpoints load with torch's weights_only (an allow-list, tdx.checkpoints) whatever the
# environment says: fairseq's own loads pass no `weights_only`, and this variable would
# turn it off for them, letting a crafted checkpoint run code on `resume=`.
os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)

# fairseq logs at INFO on import (optional extras it cannot find); keep the console quiet.
for _name in ("fairseq", "filelock", "torch._inductor", "torch._dynamo"):
    logging.getLogger(_name).setLevel(logging.WARNING)
