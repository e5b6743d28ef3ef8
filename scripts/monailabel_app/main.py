"""The LH-UTANet MONAI Label app: MONAI Label 0.8.5's ``monaibundle`` sample app, unchanged, plus the scoring method
``qc_score`` and the next-sample strategy ``worst_qc_first`` (``lib/qc.py``), for docs/monailabel.md's
annotate -> train -> re-score loop.

The app folder is this folder's files with the bundle in ``model/lh_utanet`` (docs/monailabel.md, section 2):
    monailabel start_server --app APP --studies IMAGES --conf models lh_utanet --host 127.0.0.1 --port 8000
``--conf models`` defaults to ``lh_utanet`` and ``--conf zoo_source`` to ``local`` (the folder as it is, offline).
The sample app's ``main.py`` is loaded from MONAI Label's installation, where ``monailabel apps`` finds it; ``--conf
monaibundle_app DIR`` names another copy (e.g. one that ``monailabel apps --download --name monaibundle`` wrote).
``--conf qc_model NAME`` picks the bundle whose masks are scored (default: the first served one), and
``--conf qc_reserve_s SECONDS`` (default 3600) sets how long a handed-out image is passed over by ``worst_qc_first``.
"""

from __future__ import annotations

import importlib.util
import logging
import os

from lib.qc import QCScoring, WorstQCFirst
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.main import Main

logger = logging.getLogger(__name__)

BUNDLE = "lh_utanet"
SCORING, STRATEGY = "qc_score", "worst_qc_first"


def monaibundle_main(app_dir: str | None = None):
    """The ``monaibundle`` sample app's ``main.py`` as a module: from ``app_dir``, else from the sample apps that
    ``monailabel apps`` lists (MONAI Label's installed ``sample-apps`` folder)."""
    app_dir = app_dir or os.path.join(Main()._get_installed_dir(None, "sample-apps"), "monaibundle")
    path = os.path.join(app_dir, "main.py")
    spec = importlib.util.spec_from_file_location("monaibundle_main", path)
    if spec is None or not os.path.isfile(path):
        raise FileNotFoundError(f"no monaibundle sample app at {app_dir}; name one with --conf monaibundle_app DIR")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def app_conf(conf: dict) -> dict:
    return {"models": BUNDLE, "zoo_source": "local", **(conf or {})}


# MONAI Label loads the class of main.py whose direct bases include one named MONAILabelApp (the first by name), so
# MONAILabelApp is named as a base, and the sample app's class is not kept under a name of this module. The base is
# chosen at import, from start_server's --conf values (MONAI Label exports them to its task processes too).
class LHUTANetApp(monaibundle_main(settings.MONAI_LABEL_APP_CONF.get("monaibundle_app")).MyApp, MONAILabelApp):
    """The ``monaibundle`` sample app with the qc tasks (module docstring)."""

    def __init__(self, app_dir, studies, conf):
        super().__init__(app_dir, studies, app_conf(conf))

    def qc_model(self) -> str | None:
        """The bundle whose masks are scored: ``--conf qc_model``, else the first served model with an infer task."""
        wanted = self.conf.get("qc_model") or next((name for name in self.models if name in self._infers), None)
        return wanted if wanted in self._infers else None

    def init_scoring_methods(self):
        methods = super().init_scoring_methods()
        model = self.qc_model()
        if model is None:
            logger.warning(f"no infer task for {SCORING}: served models {list(self._infers)}")
            return methods
        methods[SCORING] = QCScoring(self._infers[model], model)
        logger.info(f"+++ Adding Scoring Method:: {SCORING} => {model}")
        return methods

    def init_strategies(self):
        strategies = super().init_strategies()
        strategies[STRATEGY] = WorstQCFirst(float(self.conf.get("qc_reserve_s", 3600)))
        logger.info(f"+++ Adding Strategy:: {STRATEGY}")
        return strategies
