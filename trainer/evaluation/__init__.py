"""Evaluation stage: generate on held-out rows, score them, write report.md."""
