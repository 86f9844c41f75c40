"""The model registry: model bundle folders recorded in `model_versions`, one of them active."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dermbatch.errors import ModelContractError, ModelNotFoundError
from dermbatch.db.models import ModelStatus, ModelVersion, utcnow
from dermbatch.model.bundle import ModelBundle, load_bundle
from dermbatch.settings import DEFAULT_MODEL_DIR, Settings

logger = logging.getLogger(__name__)


def register_bundle(session: Session, bundle: ModelBundle, *, status: str = ModelStatus.CANDIDATE) -> ModelVersion:
    """Record a bundle as a model version, or return the existing row of the same version and weights."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.version == bundle.version))
    if row is not None:
        if row.sha256 != bundle.metadata.sha256:
            raise ModelContractError(
                f"model version {bundle.version} is already registered with other weights "
                f"(sha256 {row.sha256[:12]}, this bundle {bundle.metadata.sha256[:12]}); give the bundle a new version name"
            )
        if row.path != str(bundle.path.resolve()):
            row.path = str(bundle.path.resolve())
        return row

    row = ModelVersion(
        version=bundle.version,
        path=str(bundle.path.resolve()),
        sha256=bundle.metadata.sha256,
        contract=bundle.contract.to_dict(),
        training=bundle.metadata.training,
        metrics=bundle.metadata.metrics,
        status=status,
    )
    session.add(row)
    session.flush()
    if status == ModelStatus.ACTIVE:
        promote(session, row.version)
    logger.info("registered model version %s from %s as %s", row.version, row.path, row.status)
    return row


def active_version(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.status == ModelStatus.ACTIVE))


def get_version(session: Session, version: str) -> ModelVersion:
    row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        raise ModelNotFoundError(f"no model version named {version!r}; see `dermbatch models list`")
    return row


def promote(session: Session, version: str) -> ModelVersion:
    """Make `version` the active model and retire the previously active one."""
    row = get_version(session, version)
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.status == ModelStatus.ACTIVE, ModelVersion.id != row.id)
        .values(status=ModelStatus.RETIRED)
    )
    row.status = ModelStatus.ACTIVE
    row.promoted_at = utcnow()
    session.flush()
    return row


def resolve_model_version(session: Session, settings: Settings, version: str | None = None) -> ModelVersion:
    """Pick the model version a new job uses.

    In order: the version named, then DERMBATCH_MODEL_PATH (registered if new), then the
    active version, then the bundle shipped with the package (registered as active).
    """
    if version:
        return get_version(session, version)
    if settings.model_path:
        return register_bundle(session, load_bundle(settings.model_path))
    row = active_version(session)
    if row is not None:
        return row
    return register_bundle(session, load_default_bundle(), status=ModelStatus.ACTIVE)


def load_default_bundle() -> ModelBundle:
    """Return the model bundle shipped with the package."""
    if not (DEFAULT_MODEL_DIR / "model.json").is_file():
        raise ModelNotFoundError(
            f"no model is registered and no default model is installed at {DEFAULT_MODEL_DIR}; "
            "set DERMBATCH_MODEL_PATH to a model bundle folder or run `dermbatch models import`"
        )
    return load_bundle(DEFAULT_MODEL_DIR)


def bundle_for(row: ModelVersion) -> ModelBundle:
    """Open the bundle folder of a registered version, checking that its weights are unchanged."""
    bundle = load_bundle(Path(row.path))
    if bundle.metadata.sha256 != row.sha256:
        raise ModelContractError(
            f"model bundle at {row.path} has sha256 {bundle.metadata.sha256[:12]}, but version "
            f"{row.version} was registered with {row.sha256[:12]}; restore the registered bundle"
        )
    return bundle
