"""scripts/docs_figures.py: Dice, the skip without data, and the contact sheet from given masks (no model run)."""

import numpy as np
from PIL import Image
from scripts import docs_figures


def test_dice_of_binarised_masks():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[:1] = True
    assert docs_figures.dice(a, b) == 2 * 4 / (8 + 4)
    assert docs_figures.dice(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_skips_without_data(tmp_path, capsys):
    assert docs_figures.main(["--data_dir", str(tmp_path / "absent"), "--output", str(tmp_path / "x.png")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "x.png").exists()


def test_contact_sheet_from_masks(tmp_path):
    data, preds = tmp_path / "kvasir", tmp_path / "preds"
    for folder in (data / "images", data / "masks", preds):
        folder.mkdir(parents=True)
    names = [f"img{i}" for i in range(5)]
    (data / "pranet_test_names.txt").write_text("\n".join(names) + "\n")
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(data / "images" / f"{name}.jpg")
        ref = np.zeros((40, 60), np.uint8)
        ref[10:30, 10:40] = 255
        Image.fromarray(ref).convert("RGB").save(data / "masks" / f"{name}.jpg")  # JPEG noise, as Kvasir-SEG's
        pred = np.zeros((40, 60), np.uint8)
        pred[10 + 2 * i : 30, 10:40] = 255
        Image.fromarray(pred).save(preds / f"{name}_mask.png")
    out = tmp_path / "fig" / "sheet.png"
    assert docs_figures.main(["--data_dir", str(data), "--pred_dir", str(preds), "--output", str(out)]) == 0
    rows = (tmp_path / "fig" / "sheet_dice.csv").read_text().splitlines()
    assert rows[0] == "image,dice" and rows[1].startswith("img0,") and rows[-1].startswith("img4,")
    assert float(rows[1].split(",")[1]) > 0.99 > float(rows[-1].split(",")[1])
    assert out.stat().st_size > 1000
