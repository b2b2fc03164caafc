"""The Python client library (async and sync): `AsyncClient`, `Client`, the typed errors.

The foundation's minimal plaintext client lives in `keyswarm.client.plain`.
Heavy imports (zmq, cryptography) happen on first use of a name here.
"""

from __future__ import annotations

from typing import Any

_NAMES = {
    "AsyncClient": "keyswarm.client.session",
    "CredentialsError": "keyswarm.client.session",
    "key_file_signer": "keyswarm.client.session",
    "slot_9a_signer": "keyswarm.client.session",
    "Client": "keyswarm.client.sync",
}


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        import keyswarm.client.errors as errors

        if hasattr(errors, name):
            return getattr(errors, name)
        raise AttributeError(f"module 'keyswarm.client' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
