"""Process names: one shape for ``checked_by``, ``locked_by`` and logs."""

from __future__ import annotations

import os
import re
import socket

from mailpipe.identity import process_name


def test_process_names() -> None:
    host, pid = socket.gethostname(), os.getpid()

    assert process_name("worker") == f"worker {host}:{pid}"
    assert process_name() == f"{host}:{pid}"
    unique = {process_name(unique=True) for _ in range(20)}
    assert len(unique) == 20
    assert all(re.fullmatch(rf"{re.escape(host)}:{pid}:[0-9a-f]{{6}}", n) for n in unique)
    assert re.fullmatch(
        rf"inline {re.escape(host)}:{pid}:[0-9a-f]{{6}}", process_name("inline", unique=True)
    )
