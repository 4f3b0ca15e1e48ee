"""Hull profiles: the store model, mapping from Copper and Planhat, identity, diff, apply (pure)."""
