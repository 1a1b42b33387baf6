"""mixpretrain.data: ingest, shards, per-domain streams, the mixture stream, phantom domains.

``DomainStream`` is exported lazily so that ``import mixpretrain.data`` (and the CLI's
``--help``) does not load torch.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "DomainStream":
        from .stream import DomainStream

        return DomainStream
    raise AttributeError(f"module 'mixpretrain.data' has no attribute {name!r}")
