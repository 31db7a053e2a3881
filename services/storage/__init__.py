"""Storage edges: ports (``ports.py``), their adapters (one module each) and ``stores.open_*`` by URL."""
