"""The quality study of ``scripts/quality_study.py``: each model's outputs on a centre it never saw, cached once
(:mod:`.cache`); the candidate features (:mod:`.candidates`); logistic scores and the review table (:mod:`.fitting`);
leave-one-centre-out and the choice of the shipped score (:mod:`.study`); docs/quality.md (:mod:`.report`)."""
