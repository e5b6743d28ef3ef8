"""Cross-validation runs of ``scripts/train_folds.py``: the fold trainings and evaluations, and their summary."""
