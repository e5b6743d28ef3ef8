"""Compare LH-UTANet with MONAI networks, and its MoE settings, trained and evaluated through the same bundle configs.

The command line of the ``scripts/comparison`` package: ``python scripts/compare_models.py --help`` describes the
rows, the budget, the cached run folders and the output files.
"""

import sys

from bundle.errors import run_script
from scripts.comparison.cli import main

if __name__ == "__main__":
    sys.exit(run_script(main))
