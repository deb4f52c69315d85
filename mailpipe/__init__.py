"""mailpipe: a transactional-email pipeline on PostgreSQL.

The domain package: importable without Prefect, Great Expectations or pandas, so the hot path and
its tests stay fast. Flows in ``flows/`` are thin wrappers around what lives here.
"""

__version__ = "0.1.0"
