"""One way to name a mailpipe process in the database and in logs (who claimed, who checked)."""

from __future__ import annotations

import os
import socket
import uuid


def process_name(role: str | None = None, *, unique: bool = False) -> str:
    """``"{role} {hostname}:{pid}"`` (``"{hostname}:{pid}"`` without a role).

    ``unique`` appends a short random nonce (``host:pid:1a2b3c``) for names several holders in
    one process must not share, e.g. drainers claiming leases (``locked_by``). The name is for
    people reading ``locked_by``/``checked_by``: nothing parses it.
    """
    name = f"{socket.gethostname()}:{os.getpid()}"
    if unique:
        name += f":{uuid.uuid4().hex[:6]}"
    return f"{role} {name}" if role else name
