"""Stacking frames of one field (combine.py) and the per-input cutouts of a stack's candidates
(input_cutouts.py); `stdd stack` (stdd/cli/stack_cmd.py) runs them and then the stages."""
from .combine import METHODS, StackError, stack

__all__ = ["METHODS", "StackError", "stack"]
