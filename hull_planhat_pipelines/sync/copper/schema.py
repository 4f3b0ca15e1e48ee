"""What Copper's data looks like: the searchable objects, and the account metadata.

Each object is one ``CopperObject`` declaration (search path, date and sort fields, typed
columns, id lookups). Declared once here, in ``sync/`` (pure), because both the client (which searches) and the frame
builder (which windows and resolves) read them, and ``sync`` may not import the HTTP clients.
``clients.copper`` re-exports everything. Metadata models accept extra keys: Copper adds fields
over time and a new field must not break a sync.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

ColumnKind = Literal["id", "int", "float", "text", "timestamp", "date"]


@dataclass(frozen=True)
class Column:
    """One typed column of a raw ``copper.<object>`` table, read from the normalized record."""

    name: str
    kind: ColumnKind
    description: str = ""
    """What the column holds, as the asset's Columns tab says it."""


@dataclass(frozen=True)
class Lookup:
    """An id field resolved to a name: ``status_id`` -> ``status`` via a metadata table."""

    field: str
    """The derived field: ``status``."""
    id_field: str
    """The record's id field: ``status_id``."""
    table: str
    """The ``CopperMetadata`` property mapping ids to names: ``lead_status_names``."""


@dataclass(frozen=True)
class CopperObject:
    """Everything the pipeline knows of one searchable Copper object, in one place: where it is
    searched, which date windows it, its typed columns and the ids resolved to names.

    The Copper assets, checks, raw tables and the client all derive from these declarations; the
    sandbox declares how it seeds each object separately (the pipeline never imports it).
    """

    name: str
    """Plural, as in the asset keys: ``leads``."""
    record_type: str
    """Singular, as in ``available_on`` and activity parents: ``lead``."""
    path: str
    date_field: str
    min_key: str
    max_key: str
    sort_by: str | None
    """None: no documented sort (activities); records come as returned."""
    search_flags: tuple[tuple[str, Any], ...] = ()
    """Body keys every search of the object sends (leads: converted ones included)."""
    columns: tuple[Column, ...] = ()
    """Typed columns of its table besides the common ones (id, name, dates, record, ...)."""
    lookups: tuple[Lookup, ...] = ()
    """Id fields resolved to names by ``copper.records.normalize``."""
    hull_source: bool = True
    """Whether Hull reads it (leads, people, companies, opportunities, activities); an object
    declared only to land as a table (tasks) is not."""


def modified_object(
    name: str,
    record_type: str,
    *,
    columns: tuple[Column, ...] = (),
    lookups: tuple[Lookup, ...] = (),
    search_flags: tuple[tuple[str, Any], ...] = (),
    hull_source: bool = True,
) -> CopperObject:
    """An object searched at ``/<name>/search`` and windowed and sorted by ``date_modified``:
    every Copper object but activities."""
    return CopperObject(
        name,
        record_type,
        f"/{name}/search",
        "date_modified",
        "minimum_modified_date",
        "maximum_modified_date",
        "date_modified",
        search_flags,
        columns,
        lookups,
        hull_source,
    )


_ASSIGNEE = Lookup("assignee_email", "assignee_id", "user_emails")
_CONTACT_TYPE = Lookup("contact_type", "contact_type_id", "contact_type_names")
_CUSTOMER_SOURCE = Lookup("customer_source", "customer_source_id", "customer_source_names")

DEFAULT_OBJECTS: tuple[CopperObject, ...] = (
    # A converted lead leaves the default search; it is a merge into a person, not a
    # deletion, so the pipeline asks for converted leads too.
    modified_object(
        "leads",
        "lead",
        search_flags=(("include_converted_leads", True),),
        columns=(
            Column("status", "text", "The lead's status name."),
            Column("monetary_value", "float", "The lead's value, in its monetary unit."),
            Column("converted_contact_id", "int", "Copper id of the person the lead became."),
            Column("converted_at", "timestamp", "When the lead was converted."),
        ),
        lookups=(
            Lookup("status", "status_id", "lead_status_names"),
            _CUSTOMER_SOURCE,
            _ASSIGNEE,
        ),
    ),
    modified_object(
        "people",
        "person",
        columns=(Column("company_id", "int", "Copper id of the person's company."),),
        lookups=(_CONTACT_TYPE, _ASSIGNEE),
    ),
    modified_object(
        "companies",
        "company",
        columns=(
            Column("email_domain", "text", "The company's email domain: its identity in Hull."),
            Column("primary_contact_id", "int", "Copper id of the primary contact person."),
        ),
        lookups=(_CONTACT_TYPE, _ASSIGNEE),
    ),
    modified_object(
        "opportunities",
        "opportunity",
        columns=(
            Column("company_id", "int", "Copper id of the opportunity's company."),
            Column("primary_contact_id", "int", "Copper id of the primary contact person."),
            Column("status", "text", "Open, Won, Lost or Abandoned."),
            Column("monetary_value", "float", "The opportunity's value, in its monetary unit."),
            Column(
                "opportunity_type",
                "text",
                "The configured type field's value: the attribute group the opportunity goes"
                " to in Hull (blank: not ingested).",
            ),
        ),
        lookups=(
            _CUSTOMER_SOURCE,
            Lookup("pipeline", "pipeline_id", "pipeline_names"),
            Lookup("pipeline_stage", "pipeline_stage_id", "stage_names"),
            Lookup("loss_reason", "loss_reason_id", "loss_reason_names"),
            _ASSIGNEE,
        ),
    ),
    CopperObject(
        "activities",
        "activity",
        "/activities/search",
        "activity_date",
        "minimum_activity_date",
        "maximum_activity_date",
        None,
        columns=(
            Column("parent_type", "text", "What the activity is on: person, lead, company, ..."),
            Column("parent_id", "int", "Copper id of the record the activity is on."),
            Column("type_id", "int", "Copper id of the activity type."),
            Column(
                "type_category",
                "text",
                "``user`` (logged by a person: a Hull event) or ``system``.",
            ),
            Column("type_name", "text", "The activity type's name (the Hull event's name)."),
            Column("activity_date", "timestamp", "When the activity took place."),
        ),
        lookups=(Lookup("user_email", "user_id", "user_emails"),),
    ),
)
"""The objects the pipeline syncs. Another object is one more declaration (see
``docs/extending.md``); ``copper_objects`` builds a registry with extra ones."""


def copper_objects(extra: Iterable[CopperObject] = ()) -> dict[str, CopperObject]:
    """Name -> declaration: the default objects plus ``extra`` (a name declared twice is an
    error, so an extra object cannot silently replace a default one)."""
    registry = {o.name: o for o in DEFAULT_OBJECTS}
    for obj in extra:
        if obj.name in registry:
            raise ValueError(f"Copper object {obj.name!r} is declared twice")
        registry[obj.name] = obj
    return registry


COPPER_OBJECTS: dict[str, CopperObject] = copper_objects()


def copper_object(object_name: str | CopperObject) -> CopperObject:
    """The declaration of a default object by name; a declaration is returned as it is, so
    callers may pass objects declared outside the default registry."""
    if isinstance(object_name, CopperObject):
        return object_name
    try:
        return COPPER_OBJECTS[object_name]
    except KeyError:
        known = ", ".join(COPPER_OBJECTS)
        raise ValueError(f"unknown Copper object {object_name!r} (known: {known})") from None


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow")


class FieldOption(_Tolerant):
    id: int
    name: str


class CustomFieldDefinition(_Tolerant):
    id: int
    name: str
    data_type: str
    available_on: list[str] = []
    options: list[FieldOption] = []
    currency: str | None = None
    """Only on Currency definitions: record values carry the bare amount."""
    connected_id: int | None = None
    """Connect fields come in pairs; the partner's ``available_on`` names the target type."""

    @field_validator("available_on", "options", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


class ActivityType(_Tolerant):
    id: int
    category: str
    name: str


class ActivityTypes(_Tolerant):
    """``GET /activity_types`` as Copper answers it: user and system types apart (their ids are
    separate number spaces: Note is user type 0)."""

    user: list[ActivityType] = []
    system: list[ActivityType] = []

    @property
    def all(self) -> list[ActivityType]:
        return [*self.user, *self.system]


class PipelineStage(_Tolerant):
    id: int
    name: str


class Pipeline(_Tolerant):
    id: int
    name: str
    stages: list[PipelineStage] = []


class NamedItem(_Tolerant):
    id: int
    name: str


class CopperUser(_Tolerant):
    id: int
    name: str | None = None
    email: str | None = None


class CopperMetadata(_Tolerant):
    """Everything an id in a record can point to."""

    custom_field_definitions: list[CustomFieldDefinition] = []
    activity_types: ActivityTypes = ActivityTypes()
    pipelines: list[Pipeline] = []
    lead_statuses: list[NamedItem] = []
    customer_sources: list[NamedItem] = []
    contact_types: list[NamedItem] = []
    loss_reasons: list[NamedItem] = []
    users: list[CopperUser] = []

    @functools.cached_property
    def field_definitions(self) -> dict[int, CustomFieldDefinition]:
        return {d.id: d for d in self.custom_field_definitions}

    @functools.cached_property
    def field_options(self) -> dict[int, dict[int, str]]:
        """Definition id -> option id -> option name (Dropdown and MultiSelect)."""
        return {d.id: {o.id: o.name for o in d.options} for d in self.custom_field_definitions}

    @functools.cached_property
    def activity_type_names(self) -> dict[tuple[str, int], str]:
        """(category, id) -> name: user and system type ids are separate number spaces."""
        return {(t.category, t.id): t.name for t in self.activity_types.all}

    @functools.cached_property
    def pipeline_names(self) -> dict[int, str]:
        return _names(self.pipelines)

    @functools.cached_property
    def stage_names(self) -> dict[int, str]:
        return {s.id: s.name for p in self.pipelines for s in p.stages}

    @functools.cached_property
    def lead_status_names(self) -> dict[int, str]:
        return _names(self.lead_statuses)

    @functools.cached_property
    def customer_source_names(self) -> dict[int, str]:
        return _names(self.customer_sources)

    @functools.cached_property
    def contact_type_names(self) -> dict[int, str]:
        return _names(self.contact_types)

    @functools.cached_property
    def loss_reason_names(self) -> dict[int, str]:
        return _names(self.loss_reasons)

    @functools.cached_property
    def user_emails(self) -> dict[int, str | None]:
        return {u.id: u.email for u in self.users}


def _names(items: list[Any]) -> dict[int, str]:
    return {item.id: item.name for item in items}


def int_or_none(value: Any) -> int | None:
    """An id, a Unix date or a header as an int; None for missing, booleans and junk."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
