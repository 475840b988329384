"""Evaluation: predictions scored against references (the ``METRICS`` table)."""
