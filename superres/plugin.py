"""SR-NAM's registrations with the tdx runner (entry point `tdx.plugins`); its training is
the `recipe: tdx.superres.srnam:run` of conf/experiment/srnam.yaml."""

from tdx.superres import report  # noqa: F401 - the `srnam` report preset
