"""The program's answers on stdout: `status`, --help, --version, shell completion.

Written and flushed at once, so a failed write is known while the exit code can still
say so: `status` exits 0 or 1 to say held or free, and must not say either when its
answer was lost.
"""

from __future__ import annotations

import sys

from coordinator.errors import OutputError, OutputGone


def emit(text: str) -> None:
    """`text` and a newline on stdout, flushed. A closed stdout (`>&-`) takes nothing."""
    stream = sys.stdout
    if stream is None:
        return
    # What the stream cannot encode (a node id in an ASCII locale, a byte of a path
    # that is not UTF-8) is written as a backslash escape, not an error.
    encoding = getattr(stream, "encoding", None) or "utf-8"
    text = text.encode(encoding, "backslashreplace").decode(encoding)
    try:
        stream.write(text + "\n")
        stream.flush()
    except BrokenPipeError as exc:
        raise OutputGone("the reader of the output went away") from exc
    except (OSError, ValueError) as exc:  # ValueError: a stream closed in this process
        raise OutputError(f"cannot write to standard output: {exc}") from exc
