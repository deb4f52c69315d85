"""The suites and their policies, read from ``expectations/expectations/*.json`` without GX.

Each suite's ``meta.mailpipe`` says which SQL it validates (``query``), how that SQL is narrowed
to the rows a run could have changed (``window``), its policy (``fail`` or ``warn``, overridden
by ``MAILPIPE_QUALITY_POLICIES``) and the flows that check it (``flows``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from mailpipe.config import Settings, get_settings
from mailpipe.errors import ConfigError

POLICIES = ("fail", "warn")
# Rows are stamped by the database clock, ``since`` by the worker's: a margin keeps clock skew
# from hiding a row the run changed in its first seconds.
WINDOW_MARGIN = dt.timedelta(seconds=60)


class QualityConfigError(ConfigError):
    """The suites in ``expectations/`` cannot be read or do not match what was asked."""


@dataclass(frozen=True)
class SuiteSpec:
    """How one suite runs, from its JSON ``meta.mailpipe`` (read without importing GX)."""

    name: str
    table: str
    query: str
    window: str | None
    policy: str
    flows: tuple[str, ...]
    expectations: int
    policy_reason: str = ""

    def batch_query(self, since: dt.datetime | None) -> str:
        """The SQL validated: the whole ``query``, or its rows changed since ``since``."""
        if since is None or self.window is None:
            return self.query
        if not isinstance(since, dt.datetime) or since.tzinfo is None:
            raise QualityConfigError(
                "since must be a timezone-aware datetime (e.g. datetime.now(UTC))"
            )
        # isoformat() of a datetime is the only value put into SQL: no user text reaches it.
        bound = f"'{window_start(since)}'::timestamptz"
        return f"SELECT * FROM ({self.query}) AS w WHERE ({self.window.replace(':since', bound)})"


def window_start(since: dt.datetime) -> str:
    """Where a windowed suite's rows start (ISO 8601, UTC): ``since`` minus the clock-skew
    margin."""
    return (since - WINDOW_MARGIN).astimezone(dt.UTC).isoformat()


def expectations_dir() -> Path:
    """The GX project folder: ``expectations/`` in the wheel or at the checkout's root."""
    package = Path(__file__).resolve().parent.parent  # mailpipe/
    packaged = package / "expectations"
    if (packaged / "great_expectations.yml").is_file():
        return packaged
    return package.parent / "expectations"


def results_dir(settings: Settings | None = None) -> Path:
    """Where validation results and Data Docs go (never inside ``expectations/``)."""
    settings = settings or get_settings()
    return (settings.quality_results_dir or settings.data_dir / "quality").expanduser().resolve()


@lru_cache(maxsize=8)
def _load_specs(project_dir: Path) -> dict[str, SuiteSpec]:
    specs: dict[str, SuiteSpec] = {}
    for path in sorted((project_dir / "expectations").glob("*.json")):
        try:
            suite = json.loads(path.read_text(encoding="utf-8"))
            meta = suite["meta"]["mailpipe"]
            spec = SuiteSpec(
                name=suite["name"],
                table=meta["table"],
                query=meta["query"].strip(),
                window=meta.get("window"),
                policy=meta["policy"],
                flows=tuple(meta.get("flows", ())),
                expectations=len(suite["expectations"]),
                policy_reason=meta.get("policy_reason", ""),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise QualityConfigError(
                f"suite file {path} is not a mailpipe suite ({type(exc).__name__}: {exc}); "
                "each needs meta.mailpipe with table, query, window, policy and flows"
            ) from None
        if spec.policy not in POLICIES:
            raise QualityConfigError(
                f"suite {spec.name}: policy must be fail or warn, not {spec.policy!r}"
            )
        if spec.window is not None and ":since" not in spec.window:
            raise QualityConfigError(f"suite {spec.name}: window must use :since")
        specs[spec.name] = spec
    if not specs:
        raise QualityConfigError(f"no suites in {project_dir / 'expectations'}")
    return specs


def suite_specs(project_dir: Path | None = None) -> dict[str, SuiteSpec]:
    """Every suite by name (= table name), from the JSON files; cheap, no GX import."""
    return _load_specs((project_dir or expectations_dir()).resolve())


def reload_specs() -> None:
    """Forget the suites read so far (after a suite file was edited in this process)."""
    _load_specs.cache_clear()


def suites_for_flow(flow_name: str, project_dir: Path | None = None) -> list[str]:
    """The suites a flow checks at its end (the tables it writes)."""
    return [s.name for s in suite_specs(project_dir).values() if flow_name in s.flows]


def select_suites(specs: Mapping[str, SuiteSpec], tables: Sequence[str] | None) -> list[str]:
    """The suites of ``tables`` (each once, in the order given), or every suite for None."""
    if tables is None:
        return list(specs)
    unknown = [t for t in tables if t not in specs]
    if unknown:
        raise QualityConfigError(f"no suite for {', '.join(unknown)}; suites: {', '.join(specs)}")
    return list(dict.fromkeys(tables))


def effective_policy(spec: SuiteSpec, settings: Settings | None = None) -> str:
    """The suite's policy, unless ``MAILPIPE_QUALITY_POLICIES`` overrides it."""
    settings = settings or get_settings()
    policy = settings.quality_policies.get(spec.name, spec.policy)
    if policy not in POLICIES:
        raise QualityConfigError(
            f"MAILPIPE_QUALITY_POLICIES: {spec.name} must be fail or warn, not {policy!r}"
        )
    return policy
