"""Event sources: one package per kind (time triggers live in the engine's scheduler; api and
webhook come through the REST API). The contract is `jobwire.sources.base`; the kinds are listed
in `jobwire/registry.py`.

This module imports nothing: the registry imports each kind's `spec` while `jobwire.model` is
still being built, so importing a `spec` must not pull in the rest of jobwire."""
