"""tdx: a command-line experiment runner for five papers of one research line."""

import logging

# fairseq logs at INFO on import (optional extras it cannot find); keep the console quiet.
for _name in ("fairseq", "filelock", "torch._inductor", "torch._dynamo"):
    logging.getLogger(_name).setLevel(logging.WARNING)
