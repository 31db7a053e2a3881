"""The label-store contract, run on every adapter: SQLite for real, and MongoDB through the real
pymongo client against ``nx-27017`` (a MongoDB-wire-protocol server on SQLite, started by the
fixture) or against the live server named by ``LINEWATCH_TEST_MONGO_URL``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from schemas.label import Label, Review
from services.storage.errors import LabelConflict, LabelNotFound
from services.storage.label_query import LabelQuery
from services.storage.ports import LabelStore
from services.storage.stores import open_label_store
from tests.mongo_server import mongo_server_url, mongo_url
from tests.storage.factories import T0, make_label

__all__ = ["mongo_server_url", "mongo_url"]


@pytest.fixture(params=["sqlite", "mongodb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LabelStore]:
    url = (
        f"sqlite:///{tmp_path}/labels.db"
        if request.param == "sqlite"
        else request.getfixturevalue("mongo_url")
    )
    opened = open_label_store(url)
    try:
        yield opened
    finally:
        opened.close()


def review(decision: str = "good", who: str = "m.keller", minutes: float = 5, **fields: object) -> Review:
    return Review.model_validate(
        {"decision": decision, "reviewer": who, "reviewed_at": T0 + timedelta(minutes=minutes), **fields}
    )


def test_adding_is_idempotent_and_never_undoes_a_review(store: LabelStore) -> None:
    label = make_label(verdict="REVIEW", queued=True, priority=0.9)
    assert store.add_labels([label]) == 1
    assert store.get_label(label.frame_id) == label
    assert store.get_label(label.frame_id.upper()) == label  # frame ids compare case-blind
    decided = store.review(label.frame_id, review("defect", defect_class="crack", note="shoulder"))
    assert decided.status == "reviewed" and decided.revision == 1 and decided.ground_truth == "defect"
    again = make_label(verdict="REVIEW", frame_id=label.frame_id)  # a replay of the same inspection
    other = make_label(verdict="NG")
    assert store.add_labels([again, other]) == 1
    assert store.get_label(label.frame_id) == decided
    assert store.get_label(other.frame_id) == other
    assert store.add_labels([]) == 0


def test_history_says_who_changed_what(store: LabelStore) -> None:
    label = make_label(verdict="NG", queued=True, priority=0.4)
    store.add_labels([label], actor="line-1-worker")
    store.review(label.frame_id, review("defect", who="a.first", defect_class="scratch"))
    store.review(label.frame_id, review("good", who="b.second", minutes=9, note="reflection, not a scratch"))
    events = store.history(label.frame_id)
    assert [(e.actor, e.action) for e in events] == [
        ("line-1-worker", "queued"),
        ("a.first", "reviewed"),
        ("b.second", "reviewed"),
    ]
    assert events[0].changes["reasons"] == [None, ["test"]]
    assert events[1].changes == {
        "status": ["queued", "reviewed"],
        "decision": [None, "defect"],
        "defect_class": [None, "scratch"],
    }
    assert events[2].changes == {
        "decision": ["defect", "good"],
        "defect_class": ["scratch", None],
        "note": [None, "reflection, not a scratch"],
    }
    assert events[2].at == T0 + timedelta(minutes=9)
    final = store.get_label(label.frame_id)
    assert final is not None and final.revision == 2 and final.review is not None
    assert final.review.reviewer == "b.second"
    assert store.history(make_label().frame_id) == []


def test_review_of_an_unknown_frame_or_a_stale_revision_is_refused(store: LabelStore) -> None:
    label = make_label(verdict="REVIEW", queued=True)
    with pytest.raises(LabelNotFound):
        store.review(label.frame_id, review())
    store.add_labels([label])
    store.review(label.frame_id, review("defect"), expected_revision=0)
    with pytest.raises(LabelConflict, match="revision 1, not 0"):
        store.review(label.frame_id, review("good", who="late"), expected_revision=0)
    current = store.get_label(label.frame_id)
    assert (
        current is not None and current.ground_truth == "defect" and len(store.history(label.frame_id)) == 2
    )


def test_two_reviewers_at_once_one_wins_and_nothing_is_lost(store: LabelStore) -> None:
    label = make_label(verdict="REVIEW", queued=True)
    store.add_labels([label])
    outcomes: list[str] = []

    def decide(who: str, decision: str) -> None:
        try:
            store.review(label.frame_id, review(decision, who=who), expected_revision=0)
            outcomes.append(who)
        except LabelConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=decide, args=(who, d)) for who, d in (("x", "good"), ("y", "defect"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes)[0] == "conflict" and len(outcomes) == 2
    winner = next(who for who in outcomes if who != "conflict")
    current = store.get_label(label.frame_id)
    assert current is not None and current.review is not None and current.review.reviewer == winner
    assert [e.actor for e in store.history(label.frame_id)] == ["linewatch", winner]


def test_the_queue_lists_by_priority_and_filters_match_exactly(store: LabelStore) -> None:
    labels = [
        make_label(at_s=0, verdict="REVIEW", queued=True, priority=0.2),
        make_label(at_s=10, verdict="NG", queued=True, priority=0.9, camera_id="cam-side"),
        make_label(at_s=20, verdict="NG", queued=True, priority=0.9),
        make_label(at_s=30, verdict="NG", recipe="bracket-b2"),
        make_label(at_s=40, verdict="REVIEW", queued=True, priority=0.5),
    ]
    store.add_labels(labels)
    store.review(labels[4].frame_id, review("good"))
    queue = store.query_labels(LabelQuery(status="queued", order="priority"))
    assert [label.frame_id for label in queue] == [
        labels[i].frame_id for i in (1, 2, 0)
    ]  # ties: oldest first
    newest = store.query_labels(LabelQuery(limit=2))
    assert [label.frame_id for label in newest] == [labels[4].frame_id, labels[3].frame_id]
    cases: list[tuple[LabelQuery, set[int]]] = [
        (LabelQuery(status="auto"), {3}),
        (LabelQuery(status="reviewed", decision="good"), {4}),
        (LabelQuery(verdict="NG"), {1, 2, 3}),
        (LabelQuery(camera_id="cam-side"), {1}),
        (LabelQuery(recipe="bracket-b2"), {3}),
        (
            LabelQuery(captured_from=T0 + timedelta(seconds=10), captured_to=T0 + timedelta(seconds=30)),
            {1, 2},
        ),
        (LabelQuery(queued_from=T0 + timedelta(seconds=15)), {2, 4}),
        (LabelQuery(model_version="1", line_id="press-line-1"), {0, 1, 2, 3, 4}),
    ]
    for query, expected in cases:
        found = {label.frame_id for label in store.query_labels(query)}
        assert found == {labels[i].frame_id for i in expected}, query
        assert store.count_labels(query) == len(expected)
    page = store.query_labels(LabelQuery(status="queued", order="priority", limit=1, offset=1))
    assert [label.frame_id for label in page] == [labels[2].frame_id]


def test_a_label_round_trips_every_field(store: LabelStore) -> None:
    label = make_label(verdict="NG", queued=True, priority=1.5, with_blobs=True)
    store.add_labels([label])
    stored = store.get_label(label.frame_id)
    assert stored == label
    assert isinstance(stored, Label) and stored.mask is not None and stored.defects
