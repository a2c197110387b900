"""Print the project's pip requirements that `make install` installs after fairseq.

fairseq-fixed and torch are installed by the Makefile in a fixed order (see Makefile),
so they are left out here; the dev, launchers and mlflow extras are added.
"""

import tomllib
from pathlib import Path

pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
meta = tomllib.loads(pyproject.read_text())["project"]
skip = ("fairseq-fixed", "torch")
reqs = [r for r in meta["dependencies"] if not r.startswith(skip)]
reqs += [r for extra in ("dev", "launchers", "mlflow")
         for r in meta["optional-dependencies"][extra]]
print(" ".join(reqs))
