"""SQL building blocks the mappers share: JSON field extraction and attribute unnesting."""

from __future__ import annotations

import re
from collections.abc import Iterable

from hull_planhat_pipelines.sync.hull.batch import quote


def json_path(*keys: str) -> str:
    """A DuckDB JSON path naming each key literally (``:``, spaces, dots and quotes allowed)."""
    parts = ('"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"' for key in keys)
    return "$." + ".".join(parts)


class JsonFields:
    """The JSON paths one ``json_extract(column, [paths])`` reads, so that every record's JSON
    is parsed once however many fields the mappings name. ``value`` expressions index the list
    column ``v`` the extraction produces: SQL NULL there means "the record lacks the field",
    JSON ``null`` means "the field is null"."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def _index(self, path: str) -> int:
        if path not in self.paths:
            self.paths.append(path)
        return self.paths.index(path) + 1

    def path(self, *keys: str) -> str:
        """The value at one key path (JSON, NULL when missing)."""
        return f"v[{self._index(json_path(*keys))}]"

    def first(self, *paths: tuple[str, ...]) -> str:
        """The first of several key paths the record has (even if its value is null)."""
        exprs = [self.path(*keys) for keys in paths]
        return exprs[0] if len(exprs) == 1 else f"coalesce({', '.join(exprs)})"

    def copper_field(self, name: str) -> str:
        """A configured Copper field, resolved like ``copper.records.field_value``:
        ``custom:<Name>`` is that custom field; a plain name is the standard or derived field,
        else the custom field of that name."""
        if name.startswith("custom:"):
            return self.first((name,))
        return self.first((name,), (f"custom:{name}",))

    def planhat_field(self, name: str) -> str:
        """A Planhat field: the top-level key, else a dotted path (``custom.Plan``)."""
        if "." not in name:
            return self.first((name,))
        return self.first((name,), tuple(name.split(".")))

    @staticmethod
    def rebase(expr: str, var: str) -> str:
        """The same value expression over another extraction column (``pv``: the previous
        version of the record)."""
        return re.sub(r"\bv\[", f"{var}[", expr)

    def extraction(self, column: str, name: str = "v") -> str:
        """The select expression producing ``v`` (an empty list when no path is needed)."""
        if not self.paths:
            return f"[]::json[] as {name}"
        listed = ", ".join(quote(p) for p in self.paths)
        return f"json_extract({column}, [{listed}]) as {name}"


def text_of(json_expr: str) -> str:
    """A JSON value as text for a claim: strings unquoted, null as NULL, blank as NULL."""
    return f"nullif(({json_expr}) ->> '$', '')"


INVALID_EMAIL = "Invalid email"
_ADDRESS_PART = "[^@[:space:][:cntrl:]]+"


def matching_text(text_expr: str) -> str:
    """An email or a domain as claims compare it: trimmed and lower-cased (blank: NULL), so
    ``Ann@X.io``, ``ann@x.io `` and ``ann@x.io`` are one user."""
    return f"nullif(lower(trim({text_expr})), '')"


def valid_email(text_expr: str) -> str:
    """True for ``local@domain.tld`` without spaces or control characters (a NUL byte is not
    an address)."""
    return (
        f"(regexp_full_match({text_expr}, '{_ADDRESS_PART}@{_ADDRESS_PART}\\.{_ADDRESS_PART}')"
        f" and not regexp_matches({text_expr}, '[[:cntrl:]]'))"
    )


def canonical_value(json_expr: str) -> str:
    """A JSON value as canonical JSON text for ``in_attributes`` (JSON null -> SQL NULL)."""
    return (
        f"case when ({json_expr})::varchar = 'null' then null"
        f" else hull_canonical_scalar(({json_expr})::varchar) end"
    )


def attribute_structs(pairs: Iterable[tuple[str, str]]) -> str:
    """A list of ``{attribute, value}`` structs to unnest: one per (attribute SQL, JSON SQL)."""
    items = [f"{{'attribute': {name}, 'value': ({value})::json}}" for name, value in pairs]
    return "[" + ", ".join(items) + "]"


def unique_names(attributes: dict[str, str], reserved: tuple[str, ...] = ()) -> dict[str, str]:
    """The mapping with each attribute name once (the first field mapped to it wins), so that a
    record writes one value per attribute."""
    seen = set(reserved)
    kept: dict[str, str] = {}
    for field, name in attributes.items():
        if name not in seen:
            seen.add(name)
            kept[field] = name
    return kept
