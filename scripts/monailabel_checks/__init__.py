"""The pieces of ``scripts/check_monailabel.py``: the side environment and the server (``server``), and the checks of
the app's scoring method and next-sample strategy (``active_learning``)."""
