"""The runner's three kinds of failure that are not crashes; imports nothing from tdx.

- `UsageError`: a user mistake (unknown experiment, bad override, missing file). The CLI
  prints it as one paragraph and exits with code 2, never with a traceback.
- `Diverged`: a NaN or infinite loss or gradient; every engine stops the run with status
  `diverged`.
- `Interrupted`: a Ctrl-C / SIGTERM acted on (after the state was saved); the run ends
  `interrupted` and `resume=` continues it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UsageError(Exception):
    """A user mistake: printed as a message, exit code 2."""


class Diverged(RuntimeError):
    """The loss became NaN or infinite: the run stops as `diverged`."""


class Interrupted(Exception):
    """A stop signal was acted on once the state was saved: the run stops as `interrupted`."""


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """' Did you mean: a, b?' for the options closest to `word` ('' if none is close)."""
    near = difflib.get_close_matches(word, list(options), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(near)}?" if near else ""
