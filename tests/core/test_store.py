"""The database layer: idempotent prediction writes and the probability query."""

from __future__ import annotations

from sqlalchemy import func, select, text

from dermbatch.db import store
from dermbatch.db.engine import session_scope
from dermbatch.db.migrate import upgrade_database
from dermbatch.db.models import ClassProbability, ImageStatus, ModelVersion, Prediction

LABELS = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def make_job(url: str, uris: list[str]) -> tuple[int, list[int], int]:
    upgrade_database(url)
    with session_scope(url) as session:
        version = ModelVersion(version="v-test", path="/nowhere", sha256="0" * 64,
                               contract={"labels": list(LABELS), "input_height": 8, "input_width": 8})
        session.add(version)
        session.flush()
        job = store.create_job(session, source_uri="/images", model_version_id=version.id, batch_size=4,
                               force=False, mode="embedded")
        ids = store.add_images(session, job.id, [store.ImageRef(uri=uri) for uri in uris])
        store.mark_job_running(session, job.id, len(ids))
        return job.id, ids, version.id


def outcome(image_id: int, uri: str, mel: float) -> store.PredictionOutcome:
    rest = (1.0 - mel) / 6
    probabilities = {label: (mel if label == "mel" else rest) for label in LABELS}
    best = max(probabilities, key=probabilities.get)
    return store.PredictionOutcome(image_id=image_id, uri=uri, content_hash=f"hash-{uri}", size_bytes=10,
                                   label=best, confidence=probabilities[best], probabilities=probabilities)


def test_prediction_written_twice_is_stored_once(sqlite_url):
    job_id, ids, version_id = make_job(sqlite_url, ["/images/a.jpg"])
    prediction = outcome(ids[0], "/images/a.jpg", 0.5)

    for _ in range(2):
        with session_scope(sqlite_url) as session:
            store.record_outcomes(session, model_version_id=version_id, predictions=[prediction], errors=[])

    with session_scope(sqlite_url) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 1
        assert session.scalar(select(func.count()).select_from(ClassProbability)) == 7
        assert store.job_counts(session, job_id).done == 1


def test_finished_image_is_not_overwritten_by_late_error(sqlite_url):
    job_id, ids, version_id = make_job(sqlite_url, ["/images/a.jpg"])
    with session_scope(sqlite_url) as session:
        store.record_outcomes(session, model_version_id=version_id,
                              predictions=[outcome(ids[0], "/images/a.jpg", 0.5)], errors=[])

    with session_scope(sqlite_url) as session:
        store.record_outcomes(session, model_version_id=version_id, predictions=[],
                              errors=[store.ErrorOutcome(image_id=ids[0], reason="read_failed", message="late")])

    with session_scope(sqlite_url) as session:
        counts = store.job_counts(session, job_id)
    assert (counts.done, counts.error) == (1, 0)


def test_job_finishes_only_when_no_image_is_pending(sqlite_url):
    job_id, ids, version_id = make_job(sqlite_url, ["/images/a.jpg", "/images/b.jpg"])
    with session_scope(sqlite_url) as session:
        store.record_outcomes(session, model_version_id=version_id,
                              predictions=[outcome(ids[0], "/images/a.jpg", 0.5)], errors=[])
        assert not store.finish_job_if_complete(session, job_id)

    with session_scope(sqlite_url) as session:
        store.record_outcomes(session, model_version_id=version_id, predictions=[],
                              errors=[store.ErrorOutcome(image_id=ids[1], reason="not_an_image", message="text")])
        assert store.finish_job_if_complete(session, job_id)
        assert not store.finish_job_if_complete(session, job_id)


def test_sql_query_for_melanoma_probability(sqlite_url):
    uris = [f"/images/{index}.jpg" for index in range(4)]
    job_id, ids, version_id = make_job(sqlite_url, uris)
    with session_scope(sqlite_url) as session:
        store.record_outcomes(
            session, model_version_id=version_id, errors=[],
            predictions=[outcome(image_id, uri, mel) for image_id, uri, mel in zip(ids, uris, [0.1, 0.3, 0.6, 0.29])],
        )

    query = text(
        "SELECT i.uri FROM images i "
        "JOIN prediction_probabilities p ON p.prediction_id = i.prediction_id "
        "WHERE i.job_id = :job AND p.label = 'mel' AND p.probability >= :minimum ORDER BY i.uri"
    )
    with session_scope(sqlite_url) as session:
        found = [row.uri for row in session.execute(query, {"job": job_id, "minimum": 0.3})]
        plan = " ".join(str(row) for row in session.execute(text("EXPLAIN QUERY PLAN " + query.text),
                                                            {"job": job_id, "minimum": 0.3}))

    assert found == ["/images/1.jpg", "/images/2.jpg"]
    assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
    assert ImageStatus.DONE == "done"
