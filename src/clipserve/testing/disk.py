"""A full disk, simulated without root: a file size limit on a child process.

``RLIMIT_FSIZE`` caps the size of every regular file the process writes (the kernel fails the
write with ``EFBIG``, "File too large", as it fails one on a full disk with ``ENOSPC``), and
``SIGXFSZ`` — which would otherwise kill the process at the limit — is ignored, so the failure
reaches the code as an error, as a full disk's does.

:func:`with_file_size_limit` wraps a command in a small launcher that sets both and then
``exec``s it (both survive ``exec``; the process keeps its pid). Unlike ``preexec_fn``, it is
safe to use from a process that runs threads.

The limit is per file, not a shared budget: a file that stays under it is written in full.

Example::

    subprocess.run(with_file_size_limit(["clipserve", "embed", ...], 256 * 1024))
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

_LAUNCHER = (
    "import os, resource, signal, sys; "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "limit = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)


def with_file_size_limit(command: Sequence[str], limit: int) -> list[str]:
    """``command`` run with writes past ``limit`` bytes of any one file failing (EFBIG)."""
    return [sys.executable, "-c", _LAUNCHER, str(limit), *command]
