"""The active-learning tasks of the LH-UTANet MONAI Label app (``main.py`` beside this folder)."""
