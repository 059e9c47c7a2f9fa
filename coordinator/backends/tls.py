"""TLS failures that waiting will not fix.

A server certificate that fails verification (signed by another CA, issued for
another host name, expired) or a client certificate the server refuses stays that
way until someone changes a certificate or the configuration: retrying is pointless,
so the backends report it as BackendRejected (exit code 3), in one line.
"""

from __future__ import annotations

import os
import re
import ssl

# Python's ssl module, libpq (OpenSSL) and the TLS alerts a server sends when it
# refuses our client certificate.
VERIFY_FAILED = re.compile(
    r"certificate verify failed|CERTIFICATE_VERIFY_FAILED"
    r"|server certificate for .* does not match host name"
    r"|alert (?:unknown ca|bad certificate|certificate required|certificate unknown"
    r"|certificate expired|certificate revoked)",
    re.IGNORECASE,
)


def verification_failed(exc: BaseException | None) -> bool:
    """True when `exc`, or an exception it was raised from, is a certificate that
    failed verification on either side."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLCertVerificationError) or VERIFY_FAILED.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def describe(store: str, where: str, text: str) -> str:
    """The operator's line: what failed, where, and the library's own reason."""
    return (
        f"{store} at {where}: TLS certificate verification failed (a CA that did not "
        f"sign the server's certificate, a host name the certificate does not name, or "
        f"a client certificate the server refuses); not retrying: {text}"
    )


def unreadable(path: str) -> str:
    """Why a certificate, key or CA file named in the configuration cannot be used, or
    "" if it can: it is read at each connection, so one that cannot be read fails every
    connection alike, which waiting does not fix."""
    if os.access(path, os.R_OK):
        return ""
    return "does not exist" if not os.path.exists(path) else "cannot be read"
