"""Root conftest: catalog-wide options only (the harness plugin itself is
registered through the pytest11 entry point)."""
