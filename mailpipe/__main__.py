"""``python -m mailpipe``: the same as the ``mailpipe`` console script."""

from mailpipe.cli import app

app()
