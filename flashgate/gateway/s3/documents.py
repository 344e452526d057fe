"""The XML documents the gateway writes or rewrites.

Error documents are always the gateway's own (an upstream's error is reduced to its
``Code``: its message, ``HostId``, ``BucketName`` or ``AWSAccessKeyId`` never reach the
client). Listings the upstream answers name the real bucket in ``<Name>`` or ``<Bucket>``
and ``<Location>``: those elements are rewritten to the virtual bucket.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from xml.sax.saxutils import escape

XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'
NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
#: A fixed creation date for virtual buckets (a secret's creation time is not the bucket's).
CREATION_DATE = "2024-01-01T00:00:00.000Z"
#: S3 error codes an upstream may answer that the gateway relays by name.
_UPSTREAM_CODE = re.compile(rb"<Code>([A-Za-z0-9.]{1,64})</Code>")


def error(code: str, message: str, resource: str, request_id: str) -> bytes:
    return (
        XML_HEAD
        + "<Error>"
        + f"<Code>{escape(code)}</Code>"
        + f"<Message>{escape(message)}</Message>"
        + f"<Resource>{escape(resource)}</Resource>"
        + f"<RequestId>{request_id}</RequestId>"
        + "</Error>"
    ).encode()


def list_buckets(owner: str, names: Sequence[str]) -> bytes:
    buckets = "".join(
        f"<Bucket><Name>{escape(n)}</Name><CreationDate>{CREATION_DATE}</CreationDate></Bucket>"
        for n in names
    )
    return (
        XML_HEAD
        + f'<ListAllMyBucketsResult xmlns="{NAMESPACE}">'
        + f"<Owner><ID>{escape(owner)}</ID><DisplayName>{escape(owner)}</DisplayName></Owner>"
        + f"<Buckets>{buckets}</Buckets>"
        + "</ListAllMyBucketsResult>"
    ).encode()


def location(region: str) -> bytes:
    constraint = "" if region == "us-east-1" else escape(region)
    return (
        XML_HEAD + f'<LocationConstraint xmlns="{NAMESPACE}">{constraint}</LocationConstraint>'
    ).encode()


def upstream_code(body: bytes) -> str | None:
    """The ``<Code>`` of an upstream error document, if it has one."""
    found = _UPSTREAM_CODE.search(body[: 64 * 1024])
    return found.group(1).decode() if found else None


def rewrite_bucket(body: bytes, real: str, virtual: str, location: str) -> bytes:
    """``<Name>``/``<Bucket>`` naming the real bucket name the virtual one instead, any
    ``<Location>`` becomes ``location`` (the object's path on the gateway), and ``<Owner>``
    and ``<Initiator>`` go (they name the real account and the stored credential's
    identity, an IAM user ARN)."""
    body = re.sub(rb"<(Owner|Initiator)>.*?</\1>", b"", body, flags=re.DOTALL)
    real_x, virtual_x = escape(real).encode(), escape(virtual).encode()
    for tag in (b"Name", b"Bucket"):
        body = body.replace(
            b"<%s>%s</%s>" % (tag, real_x, tag), b"<%s>%s</%s>" % (tag, virtual_x, tag)
        )
    return re.sub(
        rb"<Location>[^<]*</Location>",
        b"<Location>" + escape(location).encode() + b"</Location>",
        body,
    )
