"""Deployment machinery: how mailpipe's flows are registered, served and run on Prefect.

The edge of the package that knows Prefect as a scheduler (the domain never imports this
subpackage, nor ``flows``). One module per job:

- :mod:`~mailpipe.deploy.project`: the project folder, ``prefect.yaml`` and the pull step;
- :mod:`~mailpipe.deploy.api`: which Prefect API this process talks to, and its errors;
- :mod:`~mailpipe.deploy.setup`: ``mailpipe setup prefect`` (Secret blocks, pool, variables);
- :mod:`~mailpipe.deploy.processes`: the child processes (``prefect`` commands, workers);
- :mod:`~mailpipe.deploy.server`: a local Prefect server as a child process (``up``);
- :mod:`~mailpipe.deploy.kept`: the local Prefect server ``mailpipe run`` starts and keeps;
- :mod:`~mailpipe.deploy.database`: that server's database (a ``prefect`` database on Postgres);
- :mod:`~mailpipe.deploy.recovery`: runs left behind by a dead worker of this machine;
- :mod:`~mailpipe.deploy.serve` and :mod:`~mailpipe.deploy.up`: the two single-machine modes;
- :mod:`~mailpipe.deploy.sweeper`: ``process_email_queue``'s runs executed by a deliverer.

Prefect is imported lazily, inside the functions that need it, so the CLI stays quick.
"""

from __future__ import annotations

from mailpipe.errors import MailpipeError


class OrchestrationError(MailpipeError):
    """Prefect cannot be prepared or reached (what failed and how to fix it)."""
