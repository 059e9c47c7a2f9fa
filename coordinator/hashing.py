"""SHA-256 without OpenSSL.

`hashlib` loads OpenSSL's libcrypto (about 4 MiB resident) to hash a few short names;
CPython's own SHA-256, which hashlib falls back to without OpenSSL, gives the same
digests. Its module is `_sha2` from Python 3.12 and `_sha256` before; hashlib is the
last resort, so a build without either still works.
"""

from __future__ import annotations

import importlib
from typing import Any

sha256: Any
for _module in ("_sha2", "_sha256", "hashlib"):
    try:
        sha256 = importlib.import_module(_module).sha256
        break
    except (ImportError, AttributeError):
        continue

__all__ = ["sha256"]
