"""Frozen-backbone evaluation: features, the kNN protocol, the linear probe, loading weights."""
