"""A minimal TOM Toolkit site for the delivery tests (tests/tom_server.py runs it from its own venv)."""
