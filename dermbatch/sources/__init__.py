"""Image sources: listing a folder or an S3 prefix, and reading one image by URI."""

from dermbatch.sources.uri import is_s3_uri, parse_s3_uri

__all__ = ["is_s3_uri", "parse_s3_uri"]
