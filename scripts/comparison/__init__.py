"""The model comparison of ``scripts/compare_models.py``: which rows exist (:mod:`.catalogue`), training and
evaluating them through the bundle configs with a result cache per run folder (:mod:`.runner`), what the training
runs logged (:mod:`.training_logs`), the summary tables (:mod:`.report`) and plots (:mod:`.plots`), and the command
line (:mod:`.cli`)."""
