"""The line's runtime: step functions over schema records, and the embedded asyncio runtime."""
