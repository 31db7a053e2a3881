"""The HTTP API and dashboard: inspections for AOI machines, queries and the plant's web view."""
