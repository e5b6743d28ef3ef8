"""torchvision stand-in of scripts/check_monailabel.py, copied there as ``torchvision/utils.py`` onto the MONAI Label
server's PYTHONPATH: MONAI Label imports these names at start-up, for code this bundle never calls."""


def _unavailable(*args, **kwargs):
    raise RuntimeError("torchvision is not installed (stand-in of scripts/check_monailabel.py)")


make_grid = save_image = _unavailable
