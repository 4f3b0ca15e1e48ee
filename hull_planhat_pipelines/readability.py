"""What the UI shows of every asset, applied once over all of them: a kind on each (the hull
assets declare none), and descriptions that tell apart the two "users" and the two "companies"
nodes (the graph shows a node's last key part and its description's first line; the keys
themselves are a contract and stay)."""

from collections.abc import Iterable, Sequence
from typing import Any

import dagster as dg

# The first words of a node's description, for asset names that occur in two groups.
LABELS = {
    "copper/companies": "Copper companies (raw CRM records)",
    "planhat/companies": "Planhat companies (snapshot of what Planhat holds)",
    "hull/users": "Hull user profiles (the profile store)",
    "planhat/users": "Planhat team members (owners, not customers)",
}
DEFAULT_KINDS = frozenset({"duckdb"})


def readable_spec(spec: dg.AssetSpec) -> dg.AssetSpec:
    key = spec.key.to_user_string()
    description = spec.description or ""
    label = LABELS.get(key)
    if label and not description.startswith(label):
        head = label.split(" (")[0]
        if description.startswith(head):
            description = label + description[len(head) :]
        else:
            description = f"{label}. {description}".strip()
    return spec.replace_attributes(
        kinds=set(spec.kinds) or set(DEFAULT_KINDS), description=description or None
    )


def readable(assets: Iterable[Any]) -> Sequence[Any]:
    """Every asset definition with ``readable_spec`` applied; anything else unchanged."""
    return [
        a.map_asset_specs(readable_spec) if isinstance(a, dg.AssetsDefinition) else a
        for a in assets
    ]
