"""Copper: the object declarations, record shaping and polling plan (pure)."""
