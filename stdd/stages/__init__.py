"""The four stages: each run(folder, StageSettings) -> StageResult; see base.py and ../pipeline.py."""
