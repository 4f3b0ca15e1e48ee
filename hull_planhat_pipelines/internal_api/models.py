"""Request and response bodies of the internal users API.

Bodies are validated here, before anything is sent to Planhat, so a bad request costs no
Planhat call and the caller learns which field is wrong (422 with the field's path).

Unknown fields are refused (``extra="forbid"``) rather than ignored or forwarded: ignoring
hides typos (``nickname`` would silently not be set), and forwarding would turn this API into a
proxy that writes any field Planhat accepts on a user (``permissions``, ``removed``, ``_id``)
with the connector's service-account token. A new writable field is one declaration below.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Email = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
]
PlanhatId = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{24}$")]
"""A Planhat ``_id``: 24 hex digits (roles, managers and teams are referenced by it)."""
UserId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@+:-]{0,199}$")]
"""What the path accepts as a user id. The client quotes ``/ ? #``, but a ``..`` segment would
be resolved by the HTTP stack into another Planhat endpoint: ids start with a letter or digit."""


def _omitted_not_null(schema: dict[str, Any]) -> None:
    """Optional fields are omitted when unchanged, never ``null``: the schema says so."""
    for prop in schema.get("properties", {}).values():
        variants = [v for v in prop.pop("anyOf", []) if v.get("type") != "null"]
        if len(variants) == 1:
            prop.update(variants[0])
        elif variants:
            prop["anyOf"] = variants
        if prop.get("default", ...) is None:
            del prop["default"]


class _UserFields(BaseModel):
    """The writable fields of a Planhat user (team member); all optional here.

    ``None`` is only the "not given" default: an explicit ``null`` is refused below.
    """

    # strict: "true" is not a boolean and 5 is not a name; Planhat gets what the caller meant.
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_omitted_not_null)

    email: Email | None = None
    nickName: Text | None = None
    firstName: Text | None = None
    lastName: Text | None = None
    roles: list[PlanhatId] | None = Field(None, description="Role ids.")
    externalId: Text | None = Field(None, description="The user's id in another system.")
    inactive: bool | None = Field(None, description="Cannot log in, still assignable as owner.")
    isHidden: bool | None = None
    managers: list[PlanhatId] | None = Field(None, description="User ids.")
    teams: list[PlanhatId] | None = Field(None, description="Team ids.")
    tzOffset: float | None = Field(None, ge=-14, le=14, description="Hours from UTC.")
    custom: dict[str, Any] | None = Field(None, description="Custom fields, merged by Planhat.")

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        """An explicit ``null`` would blank the field in Planhat; omit the field instead."""
        if value is None:
            raise ValueError("may not be null (omit the field instead)")
        return value

    def to_planhat(self) -> dict[str, Any]:
        """The body sent to Planhat: only the fields the caller gave."""
        return self.model_dump(exclude_unset=True)


class UserCreate(_UserFields):
    """``POST /users``: Planhat requires email, nickName, firstName and lastName."""

    email: Email
    nickName: Text
    firstName: Text
    lastName: Text


class UserUpdate(_UserFields):
    """``PUT /users/{id}`` is a partial update: send only what changes, at least one field."""

    @model_validator(mode="after")
    def _not_empty(self) -> UserUpdate:
        if not self.model_fields_set:
            raise ValueError("an update needs at least one field")
        return self


class User(BaseModel):
    """A Planhat user as Planhat returns it (documentation only: responses pass through)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str = Field(alias="_id")
    email: str | None = None
    nickName: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    roles: list[Any] | None = None
    externalId: str | None = None
    inactive: bool | None = None
    isHidden: bool | None = None
    removed: bool | None = None
    createdAt: str | None = None
    updatedAt: str | None = None


class ErrorBody(BaseModel):
    """Every refusal and upstream failure: a short message, never a stack trace."""

    detail: str
