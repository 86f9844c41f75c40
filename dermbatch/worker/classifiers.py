"""The classifiers one worker process keeps loaded, and its check for a newly promoted model version."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from sqlalchemy.exc import SQLAlchemyError

from dermbatch.db.engine import session_scope
from dermbatch.db.models import ModelVersion
from dermbatch.db.registry import active_version, bundle_for
from dermbatch.errors import ModelNotFoundError
from dermbatch.model.classifier import Classifier
from dermbatch.settings import Settings

logger = logging.getLogger(__name__)

#: Model versions kept loaded per process: the active one and the one used before it, so
#: that jobs submitted just before a promotion finish without reloading on every batch.
CLASSIFIER_CACHE_SIZE = 2


class ClassifierCache:
    """Classifiers by model version id, least recently used evicted first.

    Each job names its model version, and each batch uses the classifier of that version. `poll_active`
    loads a newly promoted version between batches, so a promotion reaches running
    workers within `settings.model_poll_s` seconds without a restart.
    """

    def __init__(self, settings: Settings, capacity: int = CLASSIFIER_CACHE_SIZE) -> None:
        self.settings = settings
        self.capacity = capacity
        self.active_id: int | None = None
        self._classifiers: OrderedDict[int, Classifier] = OrderedDict()
        self._last_poll = float("-inf")

    def get(self, model_version_id: int) -> Classifier:
        """Return the classifier of a model version, loading it on first use."""
        classifier = self._classifiers.get(model_version_id)
        if classifier is not None:
            self._classifiers.move_to_end(model_version_id)
            return classifier

        started = time.perf_counter()
        classifier = Classifier(self._bundle(model_version_id))
        logger.info("loaded model version %s (id %d) from %s in %.1f s", classifier.version, model_version_id,
                    classifier.bundle.path, time.perf_counter() - started)
        self._classifiers[model_version_id] = classifier
        self._evict()
        return classifier

    def poll_active(self, *, force: bool = False) -> None:
        """Load the registry's active model version if it changed; at most once per `model_poll_s` unless forced."""
        now = time.monotonic()
        if not force and now - self._last_poll < self.settings.model_poll_s:
            return
        self._last_poll = now

        try:
            with session_scope(self.settings.database_url) as session:
                row = active_version(session)
                active_id = row.id if row is not None else None
                version = row.version if row is not None else None
        except SQLAlchemyError as error:
            logger.warning("could not read the active model version from the database: %s", error)
            return
        if active_id is None or active_id == self.active_id:
            return

        if self.active_id is not None:
            logger.info("model version %s (id %d) is now active; loading it", version, active_id)
        self.active_id = active_id
        self.get(active_id)

    def _bundle(self, model_version_id: int):
        with session_scope(self.settings.database_url) as session:
            row = session.get(ModelVersion, model_version_id)
            if row is None:
                raise ModelNotFoundError(f"model version id {model_version_id} is not in the database")
            return bundle_for(row)

    def _evict(self) -> None:
        while len(self._classifiers) > self.capacity:
            oldest = next(iter(self._classifiers))
            if oldest == self.active_id:
                self._classifiers.move_to_end(oldest)
                oldest = next(iter(self._classifiers))
            self._classifiers.pop(oldest)
            logger.info("unloaded model version id %d", oldest)
