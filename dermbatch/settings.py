"""Settings read from `DERMBATCH_*` environment variables, each with a default and a unit."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The model bundle shipped with the package, used when no version is registered or named.
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


class Settings(BaseSettings):
    """dermbatch's configuration; every field reads the environment variable DERMBATCH_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="DERMBATCH_", extra="ignore")

    database_url: str = Field(
        "sqlite:///dermbatch.db", description="SQLAlchemy URL of the results database."
    )
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker URL.")
    result_backend: str | None = Field(
        None, description="Celery result backend URL; results live in the database, so none by default."
    )
    s3_endpoint_url: str | None = Field(
        None, description="Endpoint of an S3-compatible store (MinIO, SeaweedFS); None means AWS."
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="boto3 addressing style; S3-compatible stores usually need 'path'."
    )
    device: Literal["auto", "cpu", "gpu"] = Field("auto", description="Where TensorFlow runs.")
    model_path: Path | None = Field(
        None, description="A model bundle folder to use instead of the registry's active version."
    )
    models_dir: Path = Field(
        Path("models"), description="Folder where trained and imported model bundles are stored."
    )
    batch_size: int = Field(32, ge=1, le=4096, description="Images per batch (per Celery message).")
    gpu_batch_size: int = Field(128, ge=1, le=8192, description="Images per forward pass on a GPU.")
    read_threads: int = Field(8, ge=1, le=256, description="Concurrent image reads per batch.")
    tf_threads: int | None = Field(
        None, ge=1, description="TensorFlow intra-op threads per process; None divides the cores among processes."
    )
    worker_concurrency: int | None = Field(
        None, ge=1, description="Worker processes per machine; None means one per core on CPU, one per GPU."
    )
    max_image_pixels: int = Field(
        89_478_485, ge=1, description="Images with more pixels than this are rejected as decompression bombs."
    )
    max_image_bytes: int = Field(
        100 * 1024 * 1024, ge=1, description="Image files larger than this (bytes) are rejected."
    )
    task_max_attempts: int = Field(
        3, ge=1, description="Deliveries of one batch before its images are recorded as errors."
    )
    read_retries: int = Field(4, ge=0, description="Retries of a transient S3 or file read error.")
    retry_backoff_s: float = Field(0.5, ge=0, description="First retry delay in seconds; doubles each retry.")
    visibility_timeout_s: int = Field(
        3600, ge=60, description="Seconds before Redis redelivers an unacknowledged batch; above the longest batch."
    )
    model_poll_s: float = Field(
        30.0, ge=0, description="Seconds between checks of the registry for a newly promoted model."
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Port for a worker's Prometheus metrics; None disables them."
    )
    metrics_address: str = Field(
        "127.0.0.1", description="Address the metrics port binds; 0.0.0.0 inside a container that Prometheus scrapes."
    )
    labels_min_new: int = Field(1, ge=1, description="New confirmed labels needed before a retrain runs.")
    retrain_interval_s: float = Field(86400.0, gt=0, description="Seconds between scheduled retrain checks.")
    retrain_config: Path | None = Field(
        None, description="JSON file of training options (TrainConfig fields) for scheduled retrains; "
        "None uses the shipped model's recipe.",
    )
    split_file: Path | None = Field(
        None, description="Train/validation/test split CSV for retraining and evaluation; None uses the stored "
        "HAM10000 split.",
    )
    data_dir: Path | None = Field(
        None, description="HAM10000-layout folder the scheduled retrain trains on."
    )
    weights_dir: Path | None = Field(
        None, description="Folder containing the ImageNet backbone weights files that training starts from."
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process's settings, read once from the environment."""
    return Settings()
