"""The MONAI Label app's active-learning logic without MONAI Label (not installed here): the order of
``worst_qc_first`` (``scripts/monailabel_app/lib/ordering.py``), the scoring method and the strategy
(``lib/qc.py``) against stand-ins of MONAI Label's base classes, a datastore and an infer task, and the helpers
of ``scripts/check_monailabel.py``'s active-learning check. The real server runs them in scripts/check_monailabel.py."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types
from email.parser import BytesParser

import pytest
from scripts.monailabel_checks.active_learning import order_violations, worst_order
from scripts.monailabel_checks.server import multipart

from tests.helpers import REPO_ROOT

LIB = REPO_ROOT / "scripts" / "monailabel_app" / "lib"
STRATEGY = "worst_qc_first"


def load_lib(name: str = "lh_utanet_app_lib"):
    """The app's ``lib`` package under ``name`` (MONAI Label imports it as ``lib`` from the app folder)."""
    spec = importlib.util.spec_from_file_location(name, LIB / "__init__.py", submodule_search_locations=[str(LIB)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return package


@pytest.fixture
def ordering():
    load_lib()
    yield importlib.import_module("lh_utanet_app_lib.ordering")
    for name in [name for name in sys.modules if name.startswith("lh_utanet_app_lib")]:
        del sys.modules[name]


def served(ts: float, strategy: str = STRATEGY) -> dict:
    return {"strategy": {strategy: {"ts": ts, "client_id": "user"}}}


def test_lowest_score_first_unscored_last_ties_by_id(ordering):
    infos = {
        "c": {"qc_score": 0.9},
        "a": {"qc_score": 0.2},
        "unscored": {},
        "b": {"qc_score": 0.2},
        "broken": {"qc_score": "0.1"},  # not a number: as if unscored
        "nan": {"qc_score": math.nan},
        "bool": {"qc_score": True},
    }
    assert ordering.worst_first(infos, STRATEGY, now=1000) == ["a", "b", "c", "bool", "broken", "nan", "unscored"]


def test_images_handed_out_recently_are_passed_over_then_oldest_first(ordering):
    now = 10_000.0
    infos = {
        "worst": {"qc_score": 0.1, **served(now - 5)},
        "second": {"qc_score": 0.3, **served(now - 50)},
        "third": {"qc_score": 0.5},
        "old": {"qc_score": 0.2, **served(now - 7200)},  # handed out two hours ago: free again
        "other_strategy": {"qc_score": 0.4, **served(now - 1, strategy="random")},
    }
    order = ordering.worst_first(infos, STRATEGY, now, reserve_s=3600)
    assert order == ["old", "other_strategy", "third", "second", "worst"]
    assert ordering.worst_first(infos, STRATEGY, now, reserve_s=0) == [
        "worst",
        "old",
        "second",
        "other_strategy",
        "third",
    ]


def test_handing_out_in_turn_walks_the_scores_upwards(ordering):
    """What the check does on the server: each call's image is stamped as handed out, the next call gets the next."""
    scores = {"p0": 0.98, "p1": 0.88, "p2": 0.07, "p3": 0.93, "p4": 0.96, "p5": 0.46}
    infos = {image: {"qc_score": score} for image, score in scores.items()}
    sequence = []
    for second in range(len(scores) + 1):  # several calls within one second too: the stored ts is whole seconds
        image = ordering.worst_first(infos, STRATEGY, now=100 + second // 3)[0]
        infos[image].update(served(100 + second // 3))
        sequence.append(image)
    assert sequence[:-1] == sorted(scores, key=scores.get)
    assert sequence[-1] == "p2"  # all handed out: the one handed out longest ago, the worst


def test_served_at_reads_only_numbers(ordering):
    assert ordering.served_at({"strategy": {STRATEGY: {"ts": 5}}}, STRATEGY) == 5.0
    for info in ({}, {"strategy": None}, {"strategy": {STRATEGY: None}}, {"strategy": {STRATEGY: {"ts": "5"}}}):
        assert ordering.served_at(info, STRATEGY) is None


class FakeDatastore:
    """The part of MONAI Label's Datastore the tasks use."""

    def __init__(self, images: dict[str, dict], labelled: set[str] = frozenset()) -> None:
        self.infos, self.labelled, self.updates = images, set(labelled), []

    def get_unlabeled_images(self, label_tag=None, labels=None):
        return [image for image in self.infos if image not in self.labelled]

    def get_image_info(self, image):
        return dict(self.infos[image])

    def get_image_uri(self, image):
        return f"/studies/{image}.png"

    def update_image_info(self, image, info):
        self.updates.append(image)
        self.infos[image].update(info)


class FakeInferTask:
    """An infer task that returns ``scores`` as /infer's result; raises for an image whose score is an exception."""

    def __init__(self, path, scores: dict[str, float]) -> None:
        self.path, self.scores, self.requests = [str(path)], scores, []

    def get_path(self):
        return self.path[0]

    def __call__(self, request):
        self.requests.append(request)
        score = self.scores[request["image"].rsplit("/", 1)[1].removesuffix(".png")]
        if isinstance(score, Exception):
            raise score
        return None, {"result": {"qc_score": score, "needs_review": int(score < 0.5)}, "pred": "..."}


@pytest.fixture
def qc(monkeypatch):
    """``lib.qc`` with stand-ins of the MONAI Label modules it imports."""

    class Task:  # ScoringMethod and Strategy: a description and info()
        def __init__(self, description):
            self.description = description

        def info(self):
            return {"description": self.description}

    stand_ins = {
        "monailabel": {},
        "monailabel.interfaces": {},
        "monailabel.interfaces.datastore": {"Datastore": object},
        "monailabel.interfaces.tasks": {},
        "monailabel.interfaces.tasks.scoring": {"ScoringMethod": Task},
        "monailabel.interfaces.tasks.strategy": {"Strategy": Task},
        "monailabel.tasks": {},
        "monailabel.tasks.infer": {},
        "monailabel.tasks.infer.basic_infer": {"BasicInferTask": object},
        "monailabel.utils": {},
        "monailabel.utils.others": {},
        "monailabel.utils.others.generic": {"strtobool": lambda value: value in (True, "true", "1")},
    }
    for name, attributes in stand_ins.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attributes))
    load_lib()
    yield importlib.import_module("lh_utanet_app_lib.qc")
    for name in [name for name in sys.modules if name.startswith("lh_utanet_app_lib")]:
        del sys.modules[name]


def test_scoring_stores_scores_of_unlabeled_images_and_skips_those_of_the_same_weights(qc, tmp_path):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights 1")
    datastore = FakeDatastore({"a": {}, "b": {}, "c": {}, "labelled": {}}, labelled={"labelled"})
    task = FakeInferTask(weights, {"a": 0.7, "b": 0.2, "c": ValueError("unreadable")})
    summary = qc.QCScoring(task, "lh_utanet")({"device": "cpu"}, datastore)
    assert summary["scored"] == 2 and summary["skipped"] == 0 and summary["failed"] == ["c"] and summary["total"] == 3
    assert summary["model"] == "model.pt" and summary["model_sha256"] == qc.file_sha256(str(weights))
    assert datastore.infos["b"] == {
        "qc_score": 0.2,
        "needs_review": 1,
        "qc_score_model_sha256": summary["model_sha256"],
    }
    assert "qc_score" not in datastore.infos["c"] and "qc_score" not in datastore.infos["labelled"]
    assert all(request["skip_writer"] and request["device"] == "cpu" for request in task.requests)

    task.scores["c"] = 0.5
    task.requests.clear()
    again = qc.QCScoring(task, "lh_utanet")({}, datastore)  # only c: a and b hold scores of these weights
    assert (again["scored"], again["skipped"]) == (1, 2) and [r["image"] for r in task.requests] == ["/studies/c.png"]
    assert qc.QCScoring(task, "lh_utanet")({"force": True, "max_samples": 2}, datastore)["scored"] == 2

    weights.write_bytes(b"weights 2")  # new weights served: every unlabeled image again
    assert qc.QCScoring(task, "lh_utanet")({}, datastore)["scored"] == 3


def test_strategy_returns_the_worst_unlabeled_image(qc):
    datastore = FakeDatastore(
        {"a": {"qc_score": 0.7}, "b": {"qc_score": 0.2}, "c": {}, "labelled": {"qc_score": 0.01}}, labelled={"labelled"}
    )
    strategy = qc.WorstQCFirst()
    assert strategy({"strategy": STRATEGY}, datastore) == {"id": "b", "qc_score": 0.2, "unlabeled": 3, "unscored": 1}
    datastore.labelled |= {"a", "b", "c"}
    assert strategy({"strategy": STRATEGY}, datastore) is None


def test_check_helpers_order_and_multipart():
    scores = {"a": 0.1, "b": 0.1004, "c": 0.5}
    assert worst_order(scores) == ["a", "b", "c"]
    assert order_violations(["b", "a", "c"], scores, tolerance=0.001) == []  # closer than the tolerance
    assert order_violations(["c", "a", "b"], scores, tolerance=0.001) == [
        "c (0.500000) before a (0.100000)",
        "c (0.500000) before b (0.100400)",
    ]
    body, content_type = multipart({"params": "{}"}, "label", "x.png", b"\x89PNG\r\n\x00data")
    message = BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = {part.get_param("name", header="content-disposition"): part for part in message.get_payload()}
    assert parts["params"].get_payload() == "{}"
    assert (
        parts["label"].get_filename() == "x.png" and parts["label"].get_payload(decode=True) == b"\x89PNG\r\n\x00data"
    )
