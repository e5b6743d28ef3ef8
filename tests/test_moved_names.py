"""The module names before the packages (``bundle.tta``, ``bundle.handlers``, ``bundle.data.<old name>``) still work
for one release, each with one log line naming the new name."""

import logging
import sys

import bundle
import pytest
from bundle.inference.postprocessing import BinaryMaskd
from bundle.inference.tta import TTAInferer
from monai.bundle import ConfigParser


def new_name_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "bundle.moved"]


def test_an_old_target_in_a_config_builds_the_new_class_with_one_line(caplog):
    sys.modules.pop("bundle.postprocessing", None)  # a fresh stand-in: nothing resolved through it yet
    parser = ConfigParser({"post": {"_target_": "bundle.postprocessing.BinaryMaskd", "keys": "pred"}})
    with caplog.at_level(logging.WARNING, logger="bundle.moved"):
        assert isinstance(parser.get_parsed_content("post"), BinaryMaskd)
    lines = new_name_lines(caplog)
    assert len(lines) <= 1 and all("\n" not in line for line in lines)
    assert lines in (
        [],
        [
            "bundle.postprocessing.BinaryMaskd is now bundle.inference.postprocessing.BinaryMaskd: "
            "use the new name (e.g. in your config's _target_); the old one goes in 0.10.0."
        ],
    )


def test_old_names_in_expressions_and_imports(caplog):
    with caplog.at_level(logging.WARNING, logger="bundle.moved"):
        assert bundle.tta.TTAInferer is TTAInferer
        from bundle.handlers import PerSourceDice, ResumeCheckpoint  # split between training and evaluation

        assert PerSourceDice.__module__ == "bundle.evaluation.source_metrics"
        assert ResumeCheckpoint.__module__ == "bundle.training.handlers.resume"
        assert bundle.data.dataset_folders.__module__ == "bundle.data.datasets"  # bundle.data was a module
    assert all("is now bundle." in line for line in new_name_lines(caplog))


def test_an_unknown_old_name_still_fails():
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        bundle.tta.NoSuchThing
    with pytest.raises(AttributeError):
        bundle.no_such_module
