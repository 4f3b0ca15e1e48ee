"""Pydantic models of the configuration file (``HULL_PLANHAT_CONFIG``).

The schema is a contract: the example configuration must load exactly as it stands. Keys may be
added here (with defaults), never renamed or dropped. Unknown keys and bad values fail at load
time with the offending key's dotted path in the message.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hull_planhat_pipelines.sync.batching import MAX_ANALYTICS_RECORDS, MAX_BULK_RECORDS

CONFIG_ENV_VAR = "HULL_PLANHAT_CONFIG"


class ConfigError(ValueError):
    """A configuration file that cannot be used; ``key_path`` names the first offending key."""

    def __init__(self, source: str, key_path: str, message: str) -> None:
        self.source = source
        self.key_path = key_path
        self.message = message
        super().__init__(f"{source}: {key_path}: {message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


NonEmptyStr = Annotated[str, Field(min_length=1)]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class UserIdentity(_Strict):
    """Copper field feeding each Hull user identity claim (``custom:<name>`` for custom fields)."""

    email: NonEmptyStr | None = None
    external_id: NonEmptyStr | None = None


class AccountIdentity(_Strict):
    domain: NonEmptyStr | None = None
    external_id: NonEmptyStr | None = None


class CopperIdentity(_Strict):
    lead: UserIdentity = UserIdentity(email="primary_email")
    person: UserIdentity = UserIdentity(email="primary_email")
    company: AccountIdentity = AccountIdentity(domain="email_domain")


AttributeMap = dict[NonEmptyStr, NonEmptyStr]


class CopperAttributes(_Strict):
    """Copper field -> attribute name inside the source's group (``copper_lead/`` ...)."""

    lead: AttributeMap = {}
    person: AttributeMap = {}
    company: AttributeMap = {}
    opportunity: AttributeMap = {}


class CopperSettings(_Strict):
    start_date: dt.date
    identity: CopperIdentity = CopperIdentity()
    identity_custom_fields: list[NonEmptyStr] | None = None
    """Custom fields that may feed identity claims (``identity_problems``). Unset: any custom
    field may feed ``external_id`` (Copper has no external id of its own) and none may feed an
    email or a domain; a list: exactly those custom fields, for any claim."""
    link_person_to_account: bool = False
    attributes: CopperAttributes = CopperAttributes()
    opportunity_type_field: NonEmptyStr | None = None
    activity_types: list[NonEmptyStr] = []
    # Added keys (not in the seed schema), all with defaults:
    activity_rescan_days: Annotated[int, Field(ge=0, le=90)] = 7
    """Trailing days of activities re-fetched by the incremental poll (back-dated activities)."""
    activity_rescan_minutes: Annotated[int, Field(ge=5)] = 60
    """How often the trailing activity window (and the days ahead) is re-fetched."""
    activity_horizon_days: Annotated[int, Field(ge=0, le=3650)] = 365
    """Days ahead of today whose activities are fetched (meetings planned for next week):
    the Copper partitions run that far into the future."""
    close_date_format: Literal["M/D/YYYY", "D/M/YYYY"] = "M/D/YYYY"
    """The Copper account's locale for opportunity ``close_date`` text."""
    requests_per_minute: Annotated[int, Field(ge=1)] = 180
    """Client-side throttle: Copper allows 180 requests a minute per account."""
    poll_minutes: Annotated[int, Field(ge=1)] = 5
    fetch_all_cron: NonEmptyStr = "0 3 * * 0"
    """When the scheduled "fetch all" (a backfill of every partition) runs; weekly by default."""

    @field_validator("start_date")
    @classmethod
    def _not_in_future(cls, value: dt.date) -> dt.date:
        if value > dt.datetime.now(dt.UTC).date():
            raise ValueError("start_date lies in the future")
        return value


class PlanhatIncoming(_Strict):
    """Planhat field -> attribute in group ``planhat/``; ``id`` is reserved: ``planhat/id``
    holds the ``_id`` of the record that wrote the group (a deletion detaches what it wrote)."""

    company_attributes: AttributeMap = {}
    enduser_attributes: AttributeMap = {}

    @field_validator("company_attributes", "enduser_attributes")
    @classmethod
    def _no_reserved_name(cls, value: dict[str, str]) -> dict[str, str]:
        if taken := sorted(field for field, name in value.items() if name == "id"):
            raise ValueError(
                f"attribute name 'id' is reserved (planhat/id holds the record's _id);"
                f" mapped from {', '.join(taken)}"
            )
        return value


class MetricSettings(_Strict):
    dimension_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")]
    model: Literal["Company", "EndUser", "Asset", "Project"] = "Company"
    sql: NonEmptyStr


class ActivityQuerySettings(_Strict):
    """User activities from SQL over the warehouse (seed 002 "User Activities"), beside the
    tracked events. Columns: ``activity_id`` (stable: each is sent once), ``action``, ``email``
    and/or ``eu_ext_id`` (the enduser's external id); optional ``company_external_id``,
    ``count``, ``weight``, ``name``, ``date``, ``info`` (JSON)."""

    name: Identifier
    sql: NonEmptyStr


class FailedRecordsCheck(_Strict):
    """The asset check on ``planhat/deliveries`` and each destination: records of the run that
    did not (or may not) reach Planhat. More than ``max_failed`` fails it with ``severity``;
    ERROR makes ``hull-planhat sync`` exit 3 ("completed with errors")."""

    severity: Literal["ERROR", "WARN"] = "ERROR"
    max_failed: Annotated[int, Field(ge=0)] = 0


class PlanhatSettings(_Strict):
    fetch_interval_minutes: Annotated[int, Field(ge=5, le=1440)] = 60
    """Minutes between Planhat snapshots: any value from 5 to 1,440 (a sensor interval, not a
    cron expression, so 300 or 180 are as good as 60)."""
    contact_segments: list[NonEmptyStr] = []
    company_segments: list[NonEmptyStr] = []
    tracking_events: list[NonEmptyStr] = []
    user_attributes: AttributeMap = {}
    account_attributes: AttributeMap = {}
    owner_attribute: NonEmptyStr | None = None
    co_owner_attribute: NonEmptyStr | None = None
    incoming: PlanhatIncoming = PlanhatIncoming()
    metrics: list[MetricSettings] = []
    batch_size: Annotated[int, Field(ge=1, le=MAX_BULK_RECORDS)] = MAX_BULK_RECORDS
    # Added keys:
    analytics_batch_size: Annotated[int, Field(ge=1, le=MAX_ANALYTICS_RECORDS)] = 10_000
    requests_per_minute: Annotated[int, Field(ge=1)] = 200
    """Client-side throttle: Planhat's soft quota is 200 calls a minute."""
    failed_records_check: FailedRecordsCheck = FailedRecordsCheck()
    activity_queries: list[ActivityQuerySettings] = []

    def batch_size_for(self, host: Literal["rest", "analytics"]) -> int:
        """The configured batch size of a Planhat target by the host it writes to: REST bulk
        upserts share ``batch_size``, analytics posts ``analytics_batch_size``."""
        return self.analytics_batch_size if host == "analytics" else self.batch_size

    @field_validator("metrics")
    @classmethod
    def _unique_dimensions(cls, metrics: list[MetricSettings]) -> list[MetricSettings]:
        seen: set[tuple[str, str]] = set()
        for metric in metrics:
            key = (metric.dimension_id, metric.model)
            if key in seen:
                raise ValueError(f"dimension {metric.dimension_id!r} ({metric.model}) twice")
            seen.add(key)
        return metrics


class SegmentSettings(_Strict):
    """Named DuckDB predicates over ``hull.accounts`` / ``hull.users`` (+ ``account_*``)."""

    accounts: dict[NonEmptyStr, NonEmptyStr] = {}
    users: dict[NonEmptyStr, NonEmptyStr] = {}


class DestinationSettings(_Strict):
    """Any other Planhat endpoint, fed by a SQL query over the warehouse."""

    name: Identifier
    method: Literal["PUT", "POST", "PATCH"]
    path: Annotated[str, Field(pattern=r"^/")]
    source_sql: NonEmptyStr
    exclude: list[NonEmptyStr] = []
    headers: dict[NonEmptyStr, str] = {}
    batch_size: Annotated[int, Field(ge=1, le=MAX_BULK_RECORDS)] = 1
    capture_responses: bool = False
    on_change: Literal["update", "create", "ignore"] = "update"
    """A record already delivered whose content changed: update the Planhat record it created
    (a POST destination: ``PUT <path>/<_id>``), create another one, or send nothing."""
    stable_key: bool = True
    """Give each record sent to a collection path an ``externalId`` derived from its key
    (``<name>-<key>``) unless the SQL returns one: a bulk PUT upserts by it, and a create whose
    answer was lost is read back by it instead of being posted twice."""
    journal_every: Annotated[int, Field(ge=1, le=MAX_BULK_RECORDS)] = 50
    """Records per warehouse transaction of a one-record destination's intents and outcomes
    (two transactions a record cost minutes at scale), at least: when Planhat answers, and
    ``planhat.requests_per_minute`` lets out, more than this many records a second, a group
    covers about a second of sending instead (so commits stay a small share of a fast
    delivery; under Planhat's 200 a minute, groups stay at this). After a crash, at most a
    group is read back (creates) or sent again (updates); 1, or a create that cannot be read
    back (no stable external id), keeps one intent per record. A bulk destination commits each
    request's outcomes at its answer."""

    @property
    def is_bulk(self) -> bool:
        """A PUT to a collection path takes an array; everything else takes one record."""
        return self.method == "PUT" and "{" not in self.path

    @model_validator(mode="after")
    def _one_record_unless_bulk(self) -> DestinationSettings:
        if not self.is_bulk and self.batch_size != 1:
            raise ValueError(
                f"batch_size must be 1: {self.method} {self.path} takes one record per call"
            )
        if re.search(r"\{(?!external_id\})[^}]*\}", self.path):
            raise ValueError("the only path placeholder is {external_id}")
        lowered = {name.lower() for name in self.headers}
        if lowered & {"authorization", "content-type"}:
            raise ValueError("Authorization and Content-Type headers are set by the client")
        return self


class Settings(_Strict):
    copper: CopperSettings
    planhat: PlanhatSettings = PlanhatSettings()
    segments: SegmentSettings = SegmentSettings()
    destinations: list[DestinationSettings] = []

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, destinations: list[DestinationSettings]) -> list[DestinationSettings]:
        names = [d.name for d in destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique: {', '.join(duplicates)}")
        return destinations


IDENTITY_FIELDS: dict[str, frozenset[str]] = {
    "email": frozenset({"primary_email"}),
    "domain": frozenset({"email_domain"}),
    "external_id": frozenset(),
}
"""Standard Copper fields allowed to feed each identity claim (the seed restricted them too:
a claim fed by a title or a phone number merges strangers into one profile)."""


def identity_problems(copper: CopperSettings) -> list[tuple[str, str]]:
    """``(key path, message)`` for every identity field outside the allow-list."""
    declared = copper.identity_custom_fields
    problems = []
    for record, identity in (
        ("lead", copper.identity.lead),
        ("person", copper.identity.person),
        ("company", copper.identity.company),
    ):
        for claim, field in identity.model_dump(exclude_none=True).items():
            allowed = IDENTITY_FIELDS[claim]
            if field in allowed:
                continue
            custom = field.removeprefix("custom:")
            is_custom = field.startswith("custom:") or field not in _STANDARD_FIELDS
            if is_custom and (
                custom in declared if declared is not None else claim == "external_id"
            ):
                continue
            standard = ", ".join(sorted(allowed)) or "no standard field"
            problems.append(
                (
                    f"copper.identity.{record}.{claim}",
                    f"{field!r} cannot feed {claim}: allowed are {standard} and custom fields"
                    " listed in copper.identity_custom_fields"
                    + (
                        " (any custom field for external_id while unset)"
                        if declared is None
                        else ""
                    ),
                )
            )
    return problems


_STANDARD_FIELDS = frozenset(
    {
        "id",
        "name",
        "prefix",
        "first_name",
        "middle_name",
        "last_name",
        "suffix",
        "title",
        "company_name",
        "customer_source_id",
        "customer_source",
        "details",
        "email",
        "emails",
        "primary_email",
        "phone",
        "phone_numbers",
        "socials",
        "tags",
        "websites",
        "address",
        "assignee_id",
        "assignee_email",
        "status",
        "status_id",
        "contact_type",
        "contact_type_id",
        "company_id",
        "monetary_value",
        "monetary_unit",
        "interaction_count",
        "date_created",
        "date_modified",
        "date_last_contacted",
        "email_domain",
        "primary_contact_id",
        "leads_converted_from",
        "converted_contact_id",
        "converted_at",
        "converted_opportunity_id",
    }
)
"""Copper's standard and derived record fields: a plain name outside these is a custom field
(``field_value`` resolves it that way)."""


def _key_path(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location) or "<root>"


def parse_settings(data: Any, source: str = "<config>") -> Settings:
    """Validate already-parsed YAML; raises ``ConfigError`` naming the first offending key."""
    if not isinstance(data, dict):
        raise ConfigError(source, "<root>", "the configuration must be a mapping")
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = tuple(p for p in first["loc"] if not str(p).startswith("function-after"))
        raise ConfigError(source, _key_path(location), first["msg"]) from None
    for path, message in identity_problems(settings.copper):
        raise ConfigError(source, path, message)
    return settings


def default_config_path() -> Path:
    """The configuration shipped with the package (it targets the sandbox APIs)."""
    return Path(str(resources.files("hull_planhat_pipelines") / "config" / "sandbox.yaml"))


def config_path() -> Path:
    value = os.environ.get(CONFIG_ENV_VAR)
    return Path(value) if value else default_config_path()


def load_settings(path: str | Path | None = None) -> Settings:
    """Load and validate a configuration file (default: ``HULL_PLANHAT_CONFIG`` or the packaged one)."""
    resolved = Path(path) if path is not None else config_path()
    try:
        text = resolved.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(resolved), "<file>", f"cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(resolved), "<yaml>", str(exc)) from None
    return parse_settings(data, str(resolved))
