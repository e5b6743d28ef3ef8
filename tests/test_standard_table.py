"""scripts/standard_table.py: the card's table block is replaced, and only it; rows carry our scores and costs."""

import pytest
from scripts.standard_table import PUBLISHED, replace_block, table


def test_the_card_block_is_replaced_and_nothing_else():
    card = "intro\n<!-- standard-table -->\nold table\n<!-- /standard-table -->\noutro\n"
    assert replace_block(card, "new") == "intro\n<!-- standard-table -->\nnew\n<!-- /standard-table -->\noutro\n"
    with pytest.raises(ValueError, match="no <!-- standard-table -->"):
        replace_block("a card without the block", "new")


def test_table_lists_ours_first_then_the_published_rows():
    scores = {"Kvasir 100": {"dice": 0.8643, "iou": 0.797}, "ClinicDB 62": {"dice": 0.7928, "iou": 0.718}}
    lines = table({"0.8.0": scores}, {"0.8.0": (2.10, 0.93, 6.2)}).splitlines()
    assert lines[2] == "| 0.8.0 | **0.864** / 0.797 | **0.793** / 0.718 | 2.10 | 0.93 | 6.2 | CPU, no ImageNet |"
    assert [line.split(" | ")[0][2:] for line in lines[3:]] == [row[0] for row in PUBLISHED]
