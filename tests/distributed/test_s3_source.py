"""Listing and reading images on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import pytest

from dermbatch.errors import ImageReadError, SourceAccessError, SourceNotFoundError
from dermbatch.settings import Settings
from dermbatch.sources.s3 import dispose_clients, list_s3, read_object
from services import free_port

ODD_KEYS = [
    "odd/with space.jpg",
    "odd/plus+sign.jpg",
    "odd/ümlaut-é.png",
    "odd/日本語.jpeg",
    "odd/percent%20literal.jpg",
    "odd/nested/deeper/UPPER.JPG",
]


def settings_for(server, **overrides) -> Settings:
    return Settings(s3_endpoint_url=server.endpoint_url, s3_addressing_style="path", **overrides)


@pytest.fixture()
def s3_env(monkeypatch, s3_server):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


def test_listing_more_than_one_page(s3_env):
    client = s3_env.client()
    bucket = s3_env.create_bucket()
    keys = [f"many/img-{index:05d}.jpg" for index in range(1100)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as executor:
        list(executor.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b"x"), keys))

    refs = list(list_s3(f"s3://{bucket}/many/", settings_for(s3_env)))

    assert len(refs) == 1100
    assert sorted(ref.uri for ref in refs) == [f"s3://{bucket}/{key}" for key in keys]
    assert all(ref.size_bytes == 1 for ref in refs)
    assert all(ref.content_hash for ref in refs)


def test_listing_odd_key_names(s3_env):
    client = s3_env.client()
    bucket = s3_env.create_bucket()
    for key in ODD_KEYS:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())

    refs = list(list_s3(f"s3://{bucket}/odd/", settings_for(s3_env)))

    assert sorted(ref.uri for ref in refs) == sorted(f"s3://{bucket}/{key}" for key in ODD_KEYS)
    for ref in refs:
        data, etag = read_object(ref.uri, settings_for(s3_env))
        assert data == ref.uri.split("/", 3)[3].encode()
        assert etag == ref.content_hash


def test_listing_skips_other_keys(s3_env):
    client = s3_env.client()
    bucket = s3_env.create_bucket()
    for key in ("mixed/a.jpg", "mixed/notes.txt", "mixed/README", "mixed/folder/", "mixed/b.png", "other/c.jpg"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")

    uris = sorted(ref.uri for ref in list_s3(f"s3://{bucket}/mixed/", settings_for(s3_env)))

    assert uris == [f"s3://{bucket}/mixed/a.jpg", f"s3://{bucket}/mixed/b.png"]


def test_listing_empty_prefix_yields_nothing(s3_env):
    bucket = s3_env.create_bucket()

    assert list(list_s3(f"s3://{bucket}/nothing-here/", settings_for(s3_env))) == []


def test_listing_missing_bucket(s3_env):
    with pytest.raises(SourceNotFoundError, match="not found"):
        list(list_s3("s3://no-such-bucket-dermbatch/prefix/", settings_for(s3_env)))


def test_listing_wrong_credentials(s3_env, monkeypatch):
    bucket = s3_env.create_bucket()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    dispose_clients()

    try:
        with pytest.raises(SourceAccessError, match="denied"):
            list(list_s3(f"s3://{bucket}/", settings_for(s3_env)))
    finally:
        monkeypatch.undo()
        dispose_clients()


def test_read_missing_key_is_permanent(s3_env):
    bucket = s3_env.create_bucket()

    with pytest.raises(ImageReadError) as raised:
        read_object(f"s3://{bucket}/missing.jpg", settings_for(s3_env))

    assert raised.value.transient is False
    assert "NoSuchKey" in str(raised.value)


def test_read_unreachable_endpoint_is_transient(s3_env):
    closed_port = free_port()
    settings = Settings(s3_endpoint_url=f"http://127.0.0.1:{closed_port}", s3_addressing_style="path")

    with pytest.raises(ImageReadError) as raised:
        read_object("s3://bucket/key.jpg", settings)

    assert raised.value.transient is True
