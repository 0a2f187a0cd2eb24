"""Reports built from the state over time: the per-alert follow-up report and its GCN Circular
draft (alert_report.py, circular.py), from the frames that covered an alert (coverage.py)."""
