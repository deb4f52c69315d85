"""Serve the four deployments of prefect.yaml from one process: ``python deployments/serve.py``.

The same as ``mailpipe serve`` (see ``mailpipe serve --help``), for process managers that want
a script. Needs a Prefect API: PREFECT_API_URL, or a local ``prefect server start``.
"""

from __future__ import annotations

from mailpipe.orchestration import serve_project

if __name__ == "__main__":
    serve_project()
