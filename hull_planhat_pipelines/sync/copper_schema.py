"""What Copper's data looks like: the searchable objects, and the account metadata.

Declared once here, in ``sync/`` (pure), because both the client (which searches) and the frame
builder (which windows and resolves) read them, and ``sync`` may not import the HTTP clients.
``clients.copper`` re-exports everything. Metadata models accept extra keys: Copper adds fields
over time and a new field must not break a sync.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator


@dataclass(frozen=True)
class CopperObject:
    """One searchable Copper object: where it is searched and which date windows it."""

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


def _modified(name: str, record_type: str, flags: tuple[tuple[str, Any], ...] = ()) -> CopperObject:
    return CopperObject(
        name,
        record_type,
        f"/{name}/search",
        "date_modified",
        "minimum_modified_date",
        "maximum_modified_date",
        "date_modified",
        flags,
    )


COPPER_OBJECTS: dict[str, CopperObject] = {
    o.name: o
    for o in (
        # A converted lead leaves the default search; it is a merge into a person, not a
        # deletion, so the pipeline asks for converted leads too.
        _modified("leads", "lead", (("include_converted_leads", True),)),
        _modified("people", "person"),
        _modified("companies", "company"),
        _modified("opportunities", "opportunity"),
        CopperObject(
            "activities",
            "activity",
            "/activities/search",
            "activity_date",
            "minimum_activity_date",
            "maximum_activity_date",
            None,
        ),
    )
}


def copper_object(object_name: str) -> CopperObject:
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
    rank: int | None = None


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
    is_disabled: bool = False
    count_as_interaction: bool | None = None


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
    win_probability: int | None = None


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
