"""scripts/compare_masks.py: Dice between two folders of masks."""

import numpy as np
from PIL import Image
from scripts import compare_masks


def write_mask(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def test_reports_mean_and_min_dice_and_fails_on_a_missing_mask(tmp_path, capsys):
    mask = np.zeros((4, 4), bool)
    mask[:2] = True
    half = mask.copy()
    half[1] = False  # 4 of the 8 pixels: Dice 2 * 4 / 12
    write_mask(tmp_path / "a" / "x_mask.png", mask)
    write_mask(tmp_path / "b" / "x_mask.png", half)
    write_mask(tmp_path / "a" / "sub" / "y_mask.png", np.zeros((4, 4), bool))
    write_mask(tmp_path / "b" / "sub" / "y_mask.png", np.zeros((4, 4), bool))
    assert compare_masks.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert f"2 masks: Dice mean {(1 + 8 / 12) / 2:.5f}, min {8 / 12:.5f}" in out
    write_mask(tmp_path / "a" / "z_mask.png", mask)
    assert compare_masks.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "z_mask.png: missing" in capsys.readouterr().err
