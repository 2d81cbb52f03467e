"""Attention with a geometry-guided bias (GGA): the bias computed from small direction tables, never as L x L.
Imports core.config and core.geometry only."""
