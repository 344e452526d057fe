"""The S3-compatible part of the gateway (DESIGN §7): SigV4 verification (``sigv4``, with
the body checks of ``body`` and ``checksums``), the operations and access levels
(``operations``), the upstream request re-signed by botocore (``upstream``), the XML the
client sees (``documents``) and the handler (``gateway``)."""

from flashgate.gateway.s3.gateway import S3Gateway, claims

__all__ = ["S3Gateway", "claims"]
