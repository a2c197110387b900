"""Zero-shot KD's registrations with the tdx runner (entry point `tdx.plugins`); its
training is the `recipe: tdx.distill.zskd:run` of conf/experiment/zskd.yaml."""

from tdx.distill import report  # noqa: F401 - the `zskd` report preset
