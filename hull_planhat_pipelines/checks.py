"""Asset checks: the invariants each table promises, verified over the warehouse.

The checks of one asset (of the Hull profile tables: one step writes them all) run as one step
over one read-only connection. A step costs its run Dagster's bookkeeping, about as much as an
incremental poll's check query; one step a check made the checks a third of a poll's Copper
run. Each check is still its own result (its name, its asset, its severity, blocking or not);
a run that selects some of an asset's checks evaluates those alone. After an incremental poll
that wrote a Copper table, its checks cover the rows that poll wrote (see ``SqlCheck.written``).
"""

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import dagster as dg
import duckdb

from hull_planhat_pipelines.assets.planhat import snapshot_key, snapshot_table
from hull_planhat_pipelines.clients.copper import COPPER_OBJECTS, CopperObject
from hull_planhat_pipelines.clients.planhat_targets import PLANHAT_TARGETS
from hull_planhat_pipelines.resources import WarehouseResource
from hull_planhat_pipelines.settings import Settings
from hull_planhat_pipelines.sync.copper.polling import COPPER_SINCE_TAG
from hull_planhat_pipelines.warehouse import table_exists

SAMPLE = 10
CLOCK_MARGIN_SECONDS = 60
"""A run's start is stamped by whatever launched it, its rows by the host its step ran on: a
minute's margin covers clocks that differ (the rows of that minute are checked again)."""


@dataclass(frozen=True)
class SqlCheck:
    """A check that passes when ``sql`` returns no rows (the offending rows, sampled).
    A blocking check that fails stops the assets downstream of its asset in the same run."""

    key: tuple[str, str]
    name: str
    description: str
    sql: Callable[[], str]
    requires: Sequence[tuple[str, str]] = ()
    blocking: bool = False
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR
    written: Callable[[str], str] | None = None
    """The same check over the rows a run wrote, given the SQL condition that selects them (on
    ``_fetched_at``): after an incremental poll that wrote the asset, only those rows can break
    the invariant, and a poll that writes a hundred rows is not made to group a table of
    millions. Any other run (a range run: "fetch all", a backfill, a first start; a launch from
    the UI; the check alone) covers the whole table, so the weekly "fetch all" also checks the
    rows of a poll killed between its write and its checks."""

    @property
    def asset_key(self) -> dg.AssetKey:
        return dg.AssetKey(list(self.key))

    @property
    def check_key(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(self.asset_key, self.name)

    def spec(self) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(
            self.name, asset=self.asset_key, description=self.description, blocking=self.blocking
        )

    def evaluate(
        self, conn: duckdb.DuckDBPyConnection | None, written_since: float | None = None
    ) -> dg.AssetCheckResult:
        """``written_since``: the epoch second from which the rows this run wrote were fetched
        (None: the whole table)."""
        schema, table = self.key
        needed = [self.key, *self.requires]
        if conn is None or not all(table_exists(conn, *t) for t in needed):
            return self._result(passed=True, metadata={"rows_checked": 0})
        sql, scope, counted = self.sql(), "the whole table", f"{schema}.{table}"
        if self.written is not None and written_since is not None:
            fresh = f"_fetched_at >= to_timestamp({float(written_since)!r})"
            sql, scope = self.written(fresh), "the rows this run wrote"
            counted += f" where {fresh}"
        offenders = conn.execute(f"select * from ({sql}) limit {SAMPLE + 1}").fetchdf()
        total = conn.execute(f"select count(*) from {counted}").fetchone()[0]
        return self._result(
            passed=offenders.empty,
            severity=self.severity,
            metadata={
                "rows_checked": dg.MetadataValue.int(int(total)),
                "scope": dg.MetadataValue.text(scope),
                "offending_sample": dg.MetadataValue.md(
                    offenders.head(SAMPLE).to_markdown(index=False) if len(offenders) else "none"
                ),
            },
        )

    def _result(self, **fields: object) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(asset_key=self.asset_key, check_name=self.name, **fields)


def sql_checks(
    name: str,
    checks: Sequence[SqlCheck],
    scoped_runs: Callable[[Mapping[str, str]], bool] | None = None,
) -> dg.AssetChecksDefinition:
    """``checks`` as one step (``name``, unique among the ops), each evaluated when selected.
    ``scoped_runs``: which runs (by their tags) evaluate ``SqlCheck.written`` on the rows they
    wrote (None: none do)."""

    @dg.multi_asset_check(name=name, specs=[check.spec() for check in checks], can_subset=True)
    def _checks(
        context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> Iterator[dg.AssetCheckResult]:
        chosen = [check for check in checks if check.check_key in context.selected_asset_check_keys]
        scoped = scoped_runs is not None and scoped_runs(context.run.tags)
        since = (
            _written_since(context, {c.asset_key for c in chosen if c.written}) if scoped else {}
        )
        with warehouse.read_only() as conn:  # closed before the results are reported
            results = [check.evaluate(conn, since.get(check.asset_key)) for check in chosen]
        yield from results

    return _checks


def _written_since(
    context: dg.AssetCheckExecutionContext, assets: set[dg.AssetKey]
) -> dict[dg.AssetKey, float]:
    """For each of ``assets`` this run materialized, a moment before the rows it wrote were
    fetched: the run's start, less ``CLOCK_MARGIN_SECONDS`` (a row re-fetched unchanged keeps
    its earlier time and was checked when written)."""
    if not assets:
        return {}
    instance = context.instance
    written = [
        key
        for key in assets
        if (event := instance.get_latest_materialization_event(key)) is not None
        and event.run_id == context.run.run_id
    ]
    record = instance.get_run_record_by_id(context.run.run_id) if written else None
    if record is None or record.start_time is None:
        return {}
    return {key: float(record.start_time) - CLOCK_MARGIN_SECONDS for key in written}


def copper_checks(obj: CopperObject, settings: Settings) -> list[SqlCheck]:
    table = f"copper.{obj.name}"
    start = settings.copper.start_date.isoformat()
    date = obj.date_field

    def repeated(rows: str | None = None) -> str:
        """Ids twice in a partition, among the ids of ``rows`` (None: every id)."""
        among = f"where id in (select id from {table} where {rows}) " if rows else ""
        return (
            f"select partition_date, id, count(*) as n from {table} {among}"
            "group by all having count(*) > 1"
        )

    def misplaced(rows: str = "true") -> str:
        return (
            f"select id, {date}, partition_date from {table} where ({rows}) and "
            f"cast(timezone('UTC', {date}) as date) <> partition_date and not "
            f"(partition_date = date '{start}' and {date} < timestamptz '{start} 00:00:00+00')"
        )

    return [
        SqlCheck(
            ("copper", obj.name),
            "unique_ids_per_partition",
            "No record id appears twice within one partition.",
            repeated,
            written=repeated,
        ),
        SqlCheck(
            ("copper", obj.name),
            "dates_inside_partition",
            f"Every row's {date} falls on its partition's UTC day (the first partition holds "
            "everything older than the start date).",
            misplaced,
            written=misplaced,
        ),
    ]


def build_copper_checks(
    settings: Settings, objects: Iterable[CopperObject] | None = None
) -> list[dg.AssetChecksDefinition]:
    """The checks of each declared object (default: ``COPPER_OBJECTS``), a step per object."""
    chosen = COPPER_OBJECTS.values() if objects is None else objects
    return [
        sql_checks(f"copper__{obj.name}_checks", copper_checks(obj, settings), _polled)
        for obj in chosen
    ]


def _polled(tags: Mapping[str, str]) -> bool:
    """An incremental poll's run: it carries the window it fetched."""
    return COPPER_SINCE_TAG in tags


def planhat_checks() -> list[dg.AssetChecksDefinition]:
    """A step per snapshot table."""
    unique = {
        model: SqlCheck(
            tuple(snapshot_key(model).path),
            "unique_ids_per_snapshot",
            "No Planhat _id appears twice within one snapshot.",
            lambda model=model: (
                f"select snapshot_at, _id, count(*) as n from {snapshot_table(model)} "
                "where _id is not null group by all having count(*) > 1"
            ),
        )
        for model in ("companies", "endusers")
    }
    ours = SqlCheck(
        tuple(snapshot_key("companies").path),
        "external_id_on_companies_we_sent",
        "Every company we created or updated in Planhat still carries its externalId (in the "
        "latest snapshot).",
        lambda: (
            "select c._id, c.name, c.snapshot_at from planhat_current.companies c "
            "join (select distinct planhat_id from planhat.deliveries "
            "      where target = 'companies' and status in ('created', 'updated')) d "
            "  on d.planhat_id = c._id "
            "where c.external_id is null"
        ),
        requires=[("planhat", "deliveries")],
    )
    return [
        sql_checks("planhat__company_snapshots_checks", [unique["companies"], ours]),
        sql_checks("planhat__enduser_snapshots_checks", [unique["endusers"]]),
    ]


def build_hull_checks(settings: Settings) -> dg.AssetChecksDefinition:
    """The profile tables' checks, the owners' included, in one step: one step writes the
    tables."""
    return sql_checks("hull__profile_checks", [*hull_checks(), *owner_checks(settings)])


def hull_checks() -> list[SqlCheck]:
    def duplicates(table: str, column: str) -> Callable[[], str]:
        # Grouping every value by its 64-bit hash first keeps the hash table a third of the
        # size of one keyed by the text; only the values whose hash repeats are grouped exactly.
        return lambda: (
            f"select {column}, count(*) as profiles from hull.{table} "
            f"where {column} is not null and hash({column}) in ("
            f"  select hash({column}) from hull.{table} where {column} is not null"
            "   group by 1 having count(*) > 1"
            ") group by 1 having count(*) > 1"
        )

    return [
        SqlCheck(
            ("hull", "users"),
            "unique_email",
            "No two users share an email. Blocking: a broken identity stops the delivery.",
            duplicates("users", "email"),
            blocking=True,
        ),
        SqlCheck(
            ("hull", "users"),
            "unique_external_id",
            "No two users share an external id. Blocking: a broken identity stops the delivery.",
            duplicates("users", "external_id"),
            blocking=True,
        ),
        SqlCheck(
            ("hull", "accounts"),
            "unique_domain",
            "No two accounts share a domain.",
            duplicates("accounts", "domain"),
        ),
        SqlCheck(
            ("hull", "accounts"),
            "unique_external_id",
            "No two accounts share an external id. Blocking: a broken identity stops the delivery.",
            duplicates("accounts", "external_id"),
            blocking=True,
        ),
        SqlCheck(
            ("hull", "users"),
            "account_exists",
            "Every user's account exists.",
            lambda: (
                "select u.hull_id, u.account_hull_id from hull.users u "
                "left join hull.accounts a on a.hull_id = u.account_hull_id "
                "where u.account_hull_id is not null and a.hull_id is null"
            ),
            requires=[("hull", "accounts")],
        ),
    ]


FAILED_STATUSES = ("error", "ignored", "unknown", "unconfirmed", "dropped")
"""Mirrors ``clients.delivery.FAILED`` (checks read the table, not the client)."""


def _failed_records_check(key: list[str], targets: Callable[[], list[str]], settings: Settings):
    rule = settings.planhat.failed_records_check
    severity = dg.AssetCheckSeverity[rule.severity]

    @dg.asset_check(
        asset=dg.AssetKey(key),
        name="records_reached_planhat",
        description=(
            "Every record this run sent reached Planhat: none refused, ignored or left without "
            f"an answer (at most {rule.max_failed} allowed). A failed record does not fail the "
            "step, so the chain goes on; this check says so instead."
        ),
    )
    def _check(
        context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> dg.AssetCheckResult:
        names = targets()
        with warehouse.read_only() as conn:
            if conn is None or not names or not table_exists(conn, "planhat", "deliveries"):
                return dg.AssetCheckResult(passed=True, metadata={"failed": 0})
            marks = ", ".join("?" for _ in names)
            failed = conn.execute(
                "select target, status, coalesce(error, '') as error, key from ("
                "  select * from planhat.deliveries where run_id = ? and target in "
                f"  ({marks}) qualify row_number() over (partition by target, key "
                "  order by delivered_at desc, (status = 'pending')) = 1"
                f") where status in {FAILED_STATUSES}",
                [context.run.run_id, *names],
            ).fetchdf()
        by_target = failed.groupby("target").size().to_dict() if len(failed) else {}
        reasons = failed["error"].value_counts().head(5).to_dict() if len(failed) else {}
        return dg.AssetCheckResult(
            passed=len(failed) <= rule.max_failed,
            severity=severity,
            metadata={
                "failed": dg.MetadataValue.int(len(failed)),
                "failed_by_target": dg.MetadataValue.json(
                    {str(k): int(v) for k, v in by_target.items()}
                ),
                "top_reasons": dg.MetadataValue.json({str(k): int(v) for k, v in reasons.items()}),
            },
        )

    return _check


def delivery_checks(settings: Settings) -> list[dg.AssetChecksDefinition]:
    """One failed-records check on ``planhat/deliveries`` and on each destination."""
    core = [target.name for target in PLANHAT_TARGETS]
    checks = [_failed_records_check(["planhat", "deliveries"], lambda: core, settings)]
    for destination in settings.destinations:
        checks.append(
            _failed_records_check(
                ["planhat", f"destination_{destination.name}"],
                lambda name=destination.name: [name],
                settings,
            )
        )
    return checks


def owner_checks(settings: Settings) -> list[SqlCheck]:
    """Owners (and co-owners) of the accounts sent to Planhat must be Planhat team members.

    A warning, not a stop: the delivery skips each such company with ``Invalid Owner ID``;
    the check shows how many wait and which owner ids are unknown."""
    attributes = [
        (label, attribute)
        for label, attribute in (
            ("owner", settings.planhat.owner_attribute),
            ("co_owner", settings.planhat.co_owner_attribute),
        )
        if attribute
    ]
    if not attributes:
        return []
    segments = settings.planhat.company_segments
    in_segment = (
        "and list_has_any(a.segments, [" + ", ".join(_literal(s) for s in segments) + "])"
        if segments
        else ""
    )

    def sql() -> str:
        unions = [
            f"select a.hull_id, a.external_id, '{label}' as field, "
            f"json_extract_string(a.attributes, {_literal('$.' + _json_key(attribute))}) as value "
            f"from hull.accounts a where true {in_segment}"
            for label, attribute in attributes
        ]
        return (
            f"select * from ({' union all '.join(unions)}) o where o.value is not null "
            "and o.value not in (select _id from planhat.team_members "
            "where _id is not null and not coalesce(removed, false))"
        )

    return [
        SqlCheck(
            ("hull", "accounts"),
            "valid_owner",
            "Every owner and co-owner id of an in-segment account is a Planhat team member "
            "(planhat/team_members); the others are skipped by the delivery with Invalid Owner ID.",
            sql,
            requires=[("planhat", "team_members")],
            severity=dg.AssetCheckSeverity.WARN,
        )
    ]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _json_key(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'
