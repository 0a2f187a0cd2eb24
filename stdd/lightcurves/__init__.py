"""Light curves by position from the measurement store (query.py), with forced photometry on the
frames that cover a position (forced.py)."""
