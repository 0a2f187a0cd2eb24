"""Candidates followed across frames and nights (history.py) and checked against local
catalogues of variable and high-proper-motion stars (catalogs.py)."""
