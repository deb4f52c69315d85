"""Compatibility shim: the pull step's old address, for deployments registered by older versions.

Deployments registered by older mailpipe versions store the pull step
``mailpipe.orchestration.enter_project_directory`` on the Prefect server; a worker resolves that
dotted name at every run. Removing this module would make those runs fail to start until
someone runs ``prefect deploy --all`` again, so it stays, holding nothing but the re-export.
New code and ``prefect.yaml`` use :mod:`mailpipe.deploy` (see its docstring for what is where).
"""

from __future__ import annotations

from mailpipe.deploy.project import enter_project_directory

__all__ = ["enter_project_directory"]
