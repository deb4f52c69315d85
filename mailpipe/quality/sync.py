"""``mailpipe check --sync-config``: write the GX objects the suite files need, nothing else.

For developers after adding or editing a suite. The committed ``expectations/`` must be in
sync (a test says so): flow runs only read it, an unsaved object would be saved by GX on its
first run.
"""

from __future__ import annotations

from pathlib import Path

from mailpipe.config import get_settings
from mailpipe.quality.gx import (
    ALL_TABLES_CHECKPOINT,
    BATCH_DEFINITION,
    DATASOURCE,
    ENV_DATABASE_URL,
    build_context,
    find_checkpoint,
    find_validation_definition,
    new_checkpoint,
    new_validation_definition,
)
from mailpipe.quality.suites import expectations_dir, reload_specs, results_dir, suite_specs


def sync_config(database_url: str | None = None, project_dir: Path | None = None) -> list[str]:
    """Create what the suite files need in the GX project: the datasource, one query asset
    per suite (its ``meta.mailpipe.query``), validation definitions and checkpoints (one per
    flow named in ``meta.mailpipe.flows``, one per suite, and ``all_tables``).

    Idempotent: writes only what is missing or changed. Returns what changed.
    """
    settings = get_settings()
    project_dir = (project_dir or expectations_dir()).resolve()
    reload_specs()  # the suite files were just edited, most likely
    specs = suite_specs(project_dir)
    if database_url is None:
        from mailpipe.db import database_url as resolve_url

        database_url = resolve_url(settings)
    ctx = build_context(project_dir, results_dir(settings), database_url)
    changed: list[str] = []
    try:
        datasource = ctx.data_sources.get(DATASOURCE)
    except KeyError:
        # The URL stays a ${...} reference, substituted at run time: no credential on disk.
        datasource = ctx.data_sources.add_sql(
            name=DATASOURCE, connection_string="${" + ENV_DATABASE_URL + "}"
        )
        changed.append(f"datasource {DATASOURCE}")
    validation_definitions = {}
    for spec in specs.values():
        try:
            asset = datasource.get_asset(spec.name)
        except LookupError:
            asset = datasource.add_query_asset(name=spec.name, query=spec.query)
            changed.append(f"asset {spec.name}")
        if asset.query != spec.query:
            asset.query = spec.query
            ctx.update_datasource(datasource)
            changed.append(f"asset {spec.name} query")
        try:
            batch_definition = asset.get_batch_definition(BATCH_DEFINITION)
        except KeyError:
            batch_definition = asset.add_batch_definition_whole_table(BATCH_DEFINITION)
            changed.append(f"batch definition {spec.name}")
        suite = ctx.suites.get(spec.name)
        if suite.id is None or any(e.id is None for e in suite.expectations):
            suite = ctx.suites.add_or_update(suite)  # hand-added expectations get ids
            changed.append(f"suite {spec.name} ids")
        vd = find_validation_definition(ctx, spec.name)
        if vd is None:
            vd = ctx.validation_definitions.add(
                new_validation_definition(spec.name, batch_definition, suite)
            )
            changed.append(f"validation definition {spec.name}")
        validation_definitions[spec.name] = vd
    flows = sorted({f for s in specs.values() for f in s.flows})
    wanted = {ALL_TABLES_CHECKPOINT: list(specs)}
    wanted |= {f: [s.name for s in specs.values() if f in s.flows] for f in flows}
    wanted |= {name: [name] for name in specs}  # `mailpipe check --suite NAME`
    for name, suites in wanted.items():
        existing = find_checkpoint(ctx, name)
        if (
            existing is not None
            and [vd.name for vd in existing.validation_definitions] == suites
            and not existing.actions
        ):
            continue
        ctx.checkpoints.add_or_update(
            new_checkpoint(name, [validation_definitions[s] for s in suites])
        )
        changed.append(f"checkpoint {name}")
    return changed
