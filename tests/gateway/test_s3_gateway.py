"""The S3 gateway with real clients (boto3, rclone) in front of a real S3 server
(``rclone serve s3``, which checks the re-signed requests itself), all on loopback.

The gateway serves TLS as a node would, so boto3 sends what it sends in production
(``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` with a CRC32 trailer for PutObject and UploadPart,
``UNSIGNED-PAYLOAD`` elsewhere); a second gateway on plain HTTP gets boto3's other form
(a signed SHA-256 payload with a checksum header).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from flashgate.events.values import AiCredential
from flashgate.gateway.s3 import sigv4
from tests.gateway.test_s3_sigv4 import signed_chunks
from tests.support.gateway import (
    REAL_BUCKET,
    UPSTREAM_ACCESS_KEY,
    UPSTREAM_SECRET_KEY,
    TestAuthority,
    Tls,
    Upstream,
    boto3_client,
    free_port,
    gateway_thread,
    make_tls,
    rclone_binary,
    rclone_env,
    rclone_upstream,
    s3_storage,
)

pytestmark = [
    pytest.mark.processes,
    # the accounting keys are plain strings, the server core's contract (request["fg.grant"])
    pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning"),
]

REPO = "demo"
ARCHIVE_REAL = "real-archive-canary-0043"


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Env:
    def __init__(self, tmp: Path, tls: Tls, upstream: Upstream) -> None:
        self.tmp, self.tls, self.upstream = tmp, tls, upstream
        self.authority = TestAuthority()
        self.clock = Clock()
        self.records: list[dict[str, Any]] = []
        self.url = ""
        self.http_url = ""
        self.authority.storages[(REPO, "photos")] = s3_storage(upstream.url)
        self.authority.storages[(REPO, "archive")] = s3_storage(upstream.url, ARCHIVE_REAL)
        self.authority.storages[(REPO, "wrongcred")] = _with_secret(upstream.url)
        self.authority.storages[(REPO, "unreachable")] = s3_storage(
            f"http://127.0.0.1:{free_port()}"
        )
        self.authority.storages[("other", "theirs")] = s3_storage(upstream.url)

    def client(self, access: str = "write", *, http: bool = False, **kw: Any) -> Any:
        key_id, secret = self.authority.add_key(REPO, access)
        return self.client_for(key_id, secret, http=http, **kw)

    def client_for(self, key_id: str, secret: str, *, http: bool = False, **kw: Any) -> Any:
        if http:
            return boto3_client(self.http_url, key_id, secret, **kw)
        return boto3_client(self.url, key_id, secret, ca=self.tls.cert, **kw)

    def stored(self, key: str, bucket: str = REAL_BUCKET) -> bytes:
        return (self.upstream.root / bucket / key).read_bytes()


def _with_secret(endpoint: str) -> Any:
    import msgspec

    return msgspec.structs.replace(
        s3_storage(endpoint), secret_access_key=UPSTREAM_SECRET_KEY + "-rotated-away"
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("s3gw")
    tls = make_tls(tmp)
    with rclone_upstream(tmp, (REAL_BUCKET, ARCHIVE_REAL)) as upstream:
        environment = Env(tmp, tls, upstream)
        with (
            gateway_thread(
                environment.authority,
                tls=tls,
                clock=environment.clock,
                records=environment.records,
            ) as url,
            gateway_thread(
                environment.authority,
                tls=None,
                clock=environment.clock,
                records=environment.records,
            ) as http_url,
        ):
            environment.url, environment.http_url = url, http_url
            yield environment


def code(error: ClientError) -> str:
    return str(error.response["Error"]["Code"])


def refused(call: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    return code(caught.value)


# --------------------------------------------------------------------------- operations


def test_list_buckets_lists_the_repository_storage_secrets(env: Env) -> None:
    names = [b["Name"] for b in env.client("read").list_buckets()["Buckets"]]
    assert names == ["archive", "photos", "unreachable", "wrongcred"]


@pytest.mark.parametrize("http", [False, True], ids=["tls-trailer", "http-signed-payload"])
def test_put_get_range_head_list_delete(env: Env, http: bool) -> None:
    s3 = env.client(http=http)
    key = f"docs/{'http' if http else 'tls'}/a b+c€.txt"
    data = os.urandom(100_000)
    s3.put_object(
        Bucket="photos", Key=key, Body=data, ContentType="text/plain", Metadata={"k": "v"}
    )
    assert env.stored(key) == data  # decoded, not the aws-chunked bytes
    got = s3.get_object(Bucket="photos", Key=key)
    assert got["Body"].read() == data and got["Metadata"] == {"k": "v"}
    assert got["ContentType"] == "text/plain"
    ranged = s3.get_object(Bucket="photos", Key=key, Range="bytes=1000-1999")
    assert ranged["Body"].read() == data[1000:2000]
    assert ranged["ContentRange"] == f"bytes 1000-1999/{len(data)}"
    assert s3.head_object(Bucket="photos", Key=key)["ContentLength"] == len(data)
    listed = s3.list_objects_v2(Bucket="photos", Prefix=f"docs/{'http' if http else 'tls'}/")
    assert listed["Name"] == "photos"
    assert [o["Key"] for o in listed["Contents"]] == [key]
    s3.delete_object(Bucket="photos", Key=key)
    assert refused(lambda: s3.head_object(Bucket="photos", Key=key)) == "404"
    assert refused(lambda: s3.get_object(Bucket="photos", Key=key)) == "NoSuchKey"


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
@pytest.mark.parametrize("http", [False, True], ids=["trailer", "header"])
def test_put_with_each_checksum(env: Env, algorithm: str, http: bool) -> None:
    s3 = env.client(http=http)
    key = f"sums/{algorithm}-{http}"
    data = os.urandom(70_000)
    s3.put_object(Bucket="photos", Key=key, Body=data, ChecksumAlgorithm=algorithm)
    assert env.stored(key) == data


def test_a_wrong_trailer_checksum_is_refused_and_nothing_is_stored(env: Env) -> None:
    s3 = env.client()

    def corrupt(request: Any, **_: Any) -> None:
        body = request.body
        original = body.read

        def read(size: int = -1) -> bytes:  # the data changed after the checksum was taken
            chunk = original(size)
            return chunk.replace(b"hello", b"HELLO", 1)

        body.read = read

    s3.meta.events.register("before-send.s3.PutObject", corrupt)
    assert refused(lambda: s3.put_object(Bucket="photos", Key="corrupt", Body=b"hello" * 1000)) == (
        "BadDigest"
    )
    assert not (env.upstream.root / REAL_BUCKET / "corrupt").exists()


def test_copy_within_a_bucket_and_not_across(env: Env) -> None:
    s3 = env.client()
    s3.put_object(Bucket="photos", Key="orig", Body=b"original")
    s3.copy_object(Bucket="photos", Key="copy", CopySource={"Bucket": "photos", "Key": "orig"})
    assert s3.get_object(Bucket="photos", Key="copy")["Body"].read() == b"original"
    across = {"Bucket": "archive", "Key": "orig"}
    assert refused(lambda: s3.copy_object(Bucket="photos", Key="x", CopySource=across)) == (
        "AccessDenied"
    )


def test_multipart_create_upload_list_complete_abort(env: Env) -> None:
    s3 = env.client()
    parts_data = [os.urandom(5 * 1024 * 1024), os.urandom(1000)]
    upload = s3.create_multipart_upload(Bucket="photos", Key="mp/obj")
    assert upload["Bucket"] == "photos"
    uid = upload["UploadId"]
    etags = []
    for number, data in enumerate(parts_data, 1):
        part = s3.upload_part(
            Bucket="photos", Key="mp/obj", UploadId=uid, PartNumber=number, Body=data
        )
        etags.append({"ETag": part["ETag"], "PartNumber": number})
    uploads = s3.list_multipart_uploads(Bucket="photos")
    assert uploads["Bucket"] == "photos"
    assert uid in [u["UploadId"] for u in uploads.get("Uploads", [])]
    listed = s3.list_parts(Bucket="photos", Key="mp/obj", UploadId=uid)
    assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2]
    assert listed["Bucket"] == "photos"
    done = s3.complete_multipart_upload(
        Bucket="photos", Key="mp/obj", UploadId=uid, MultipartUpload={"Parts": etags}
    )
    assert done["Bucket"] == "photos"
    assert env.stored("mp/obj") == b"".join(parts_data)
    other = s3.create_multipart_upload(Bucket="photos", Key="mp/aborted")["UploadId"]
    s3.abort_multipart_upload(Bucket="photos", Key="mp/aborted", UploadId=other)


def test_delete_objects_head_bucket_and_location(env: Env) -> None:
    s3 = env.client()
    for key in ("many/1", "many/2"):
        s3.put_object(Bucket="photos", Key=key, Body=b"x")
    deleted = s3.delete_objects(
        Bucket="photos", Delete={"Objects": [{"Key": "many/1"}, {"Key": "many/2"}]}
    )
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["many/1", "many/2"]
    assert not (env.upstream.root / REAL_BUCKET / "many" / "1").exists()
    s3.head_bucket(Bucket="photos")
    assert s3.get_bucket_location(Bucket="photos")["LocationConstraint"] is None


def test_a_rotated_storage_credential_is_used_from_the_next_request(env: Env) -> None:
    s3 = env.client()
    s3.put_object(Bucket="archive", Key="before-rotation", Body=b"1")
    previous = env.authority.storages[(REPO, "archive")]
    env.authority.storages[(REPO, "archive")] = _with_secret(env.upstream.url)  # a bad value
    try:
        assert refused(lambda: s3.get_object(Bucket="archive", Key="before-rotation")) == (
            "InternalError"
        )
    finally:
        env.authority.storages[(REPO, "archive")] = previous
    assert s3.get_object(Bucket="archive", Key="before-rotation")["Body"].read() == b"1"


def test_a_50_mb_multipart_upload_and_download(env: Env) -> None:
    s3 = env.client()
    source, back = env.tmp / "big.bin", env.tmp / "big.back"
    with source.open("wb") as f:
        for _ in range(50):
            f.write(os.urandom(1024 * 1024))
    config = TransferConfig(multipart_threshold=8 * 1024**2, multipart_chunksize=8 * 1024**2)
    s3.upload_file(str(source), "photos", "big/object.bin", Config=config)
    s3.download_file("photos", "big/object.bin", str(back), Config=config)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    assert hashlib.sha256(env.stored("big/object.bin")).hexdigest() == digest
    assert s3.head_object(Bucket="photos", Key="big/object.bin")["ContentLength"] == 50 * 1024**2
    # the gateway counted the bytes both ways
    puts = [r for r in env.records if r.get("fg.bytes_in", 0) >= 8 * 1024**2]
    gets = [r for r in env.records if r.get("fg.bytes_out", 0) >= 8 * 1024**2]
    assert puts and gets


def test_presigned_get_and_put(env: Env) -> None:
    s3 = env.client()
    http = urllib3.PoolManager(ca_certs=str(env.tls.cert))
    put_url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": "photos", "Key": "pre/sent"}, ExpiresIn=300
    )
    assert http.request("PUT", put_url, body=b"presigned body").status == 200
    get_url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "photos", "Key": "pre/sent"}, ExpiresIn=300
    )
    answer = http.request("GET", get_url, headers={"Range": "bytes=0-8"})
    assert answer.status == 206 and answer.data == b"presigned"


class _Streaming(S3SigV4Auth):  # type: ignore[misc]
    def __init__(self, credentials: Credentials, mode: str) -> None:
        super().__init__(credentials, "s3", "us-east-1")
        self._mode = mode

    def payload(self, request: AWSRequest) -> str:
        return self._mode


def _chunked_put(env: Env, key: str, data: bytes, *, trailer: bool, tamper: bool) -> Any:
    """A PUT in the signed aws-chunked forms no Python SDK sends: headers signed by
    botocore, chunks signed by this test."""
    key_id, secret = env.authority.add_key(REPO, "write")
    mode = sigv4.STREAMING_SIGNED_TRAILER if trailer else sigv4.STREAMING_SIGNED
    headers = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Decoded-Content-Length": str(len(data)),
        "X-Amz-Content-SHA256": mode,
    }
    checksum = None
    if trailer:
        import base64
        import zlib

        checksum = (
            "x-amz-checksum-crc32",
            base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode(),
        )
        headers["X-Amz-Trailer"] = "x-amz-checksum-crc32"
    url = f"{env.url}/photos/{key}"
    request = AWSRequest(method="PUT", url=url, headers=headers)
    _Streaming(Credentials(key_id, secret), mode).add_auth(request)
    auth = sigv4.parse_header_auth(request.headers["Authorization"], list(request.headers.items()))
    signing_key = sigv4.signing_key(secret.encode(), auth.scope)
    encoded = signed_chunks(
        data, signing_key, auth.amz_date, auth.scope, auth.signature, 65536, checksum
    )
    if tamper:
        encoded = encoded.replace(data[70000:70010], bytes(10), 1)
    http = urllib3.PoolManager(ca_certs=str(env.tls.cert))
    return http.request("PUT", url, body=encoded, headers=dict(request.headers.items()))


@pytest.mark.parametrize("trailer", [False, True], ids=["signed-chunks", "signed-chunks-trailer"])
def test_signed_aws_chunked_uploads(env: Env, trailer: bool) -> None:
    data = os.urandom(200_000)
    answer = _chunked_put(env, f"chunked/{trailer}", data, trailer=trailer, tamper=False)
    assert answer.status == 200, answer.data
    assert env.stored(f"chunked/{trailer}") == data
    answer = _chunked_put(env, f"chunked/bad-{trailer}", data, trailer=trailer, tamper=True)
    assert answer.status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in answer.data
    assert not (env.upstream.root / REAL_BUCKET / "chunked" / f"bad-{trailer}").exists()


def test_bucket_configuration_needs_an_admin_key(env: Env) -> None:
    config = {"Status": "Enabled"}
    write = env.client("write")
    assert (
        refused(
            lambda: write.put_bucket_versioning(Bucket="photos", VersioningConfiguration=config)
        )
        == "AccessDenied"
    )
    admin = env.client("admin")
    # relayed: whatever the upstream answers (rclone serve s3 has no versioning), never a 403
    try:
        admin.put_bucket_versioning(Bucket="photos", VersioningConfiguration=config)
    except ClientError as error:
        assert code(error) != "AccessDenied"


def test_a_client_that_goes_away_mid_body_leaves_nothing_stored(env: Env) -> None:
    import socket
    from urllib.parse import urlsplit

    key_id, secret = env.authority.add_key(REPO, "write")
    before = len(env.records)
    data = os.urandom(1024 * 1024)
    url = f"{env.http_url}/photos/half-sent"
    request = AWSRequest(method="PUT", url=url, headers={"Content-Length": str(len(data))})
    _Streaming(Credentials(key_id, secret), hashlib.sha256(data).hexdigest()).add_auth(request)
    split = urlsplit(url)
    head = f"PUT {split.path} HTTP/1.1\r\nHost: {split.netloc}\r\n" + "".join(
        f"{n}: {v}\r\n" for n, v in request.headers.items()
    )
    with socket.create_connection((split.hostname, split.port)) as sock:
        sock.sendall(head.encode() + b"\r\n" + data[: len(data) // 2])
        time.sleep(0.3)
    time.sleep(0.5)
    assert not (env.upstream.root / REAL_BUCKET / "half-sent").exists()
    # not refused up front (the signature held), not an upstream error: cut short, and
    # logged as a client that went away (499, never sent)
    assert [r["status"] for r in env.records[before:]] == [499]
    assert not any(r.get("fg.upstream_error") for r in env.records[before:])


# --------------------------------------------------------------------------- refusals


def test_a_wrong_signature(env: Env) -> None:
    key_id, _ = env.authority.add_key(REPO, "write")
    s3 = env.client_for(key_id, "fgs_" + "x" * 43)
    assert refused(lambda: s3.list_objects_v2(Bucket="photos")) == "SignatureDoesNotMatch"


def test_an_expired_presigned_url(env: Env) -> None:
    s3 = env.client()
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "photos", "Key": "x"}, ExpiresIn=60
    )
    http = urllib3.PoolManager(ca_certs=str(env.tls.cert))
    env.clock.offset = 120
    try:
        answer = http.request("GET", url)
    finally:
        env.clock.offset = 0
    assert answer.status == 403 and b"<Code>AccessDenied</Code>" in answer.data
    assert b"expired" in answer.data


def test_a_sigv2_presigned_url_is_told_to_use_sigv4(env: Env) -> None:
    import boto3

    key_id, secret = env.authority.add_key(REPO, "read")
    v2 = boto3.client(  # botocore's default for presigning on this endpoint: SigV2
        "s3",
        endpoint_url=env.url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        verify=str(env.tls.cert),
    )
    url = v2.generate_presigned_url("get_object", Params={"Bucket": "photos", "Key": "x"})
    assert "AWSAccessKeyId=" in url
    answer = urllib3.PoolManager(ca_certs=str(env.tls.cert)).request("GET", url)
    assert answer.status == 400 and b"<Code>InvalidRequest</Code>" in answer.data
    assert b"s3v4" in answer.data


def test_an_unsigned_x_amz_header(env: Env) -> None:
    s3 = env.client()

    def sneak(request: Any, **_: Any) -> None:
        request.headers["x-amz-meta-sneaky"] = "added after signing"

    s3.meta.events.register("before-send.s3.ListObjectsV2", sneak)
    assert refused(lambda: s3.list_objects_v2(Bucket="photos")) == "AccessDenied"


def test_a_read_key_writing(env: Env) -> None:
    s3 = env.client("read")
    assert s3.list_objects_v2(Bucket="photos")["Name"] == "photos"
    assert refused(lambda: s3.put_object(Bucket="photos", Key="r", Body=b"x")) == "AccessDenied"
    assert refused(lambda: s3.delete_object(Bucket="photos", Key="r")) == "AccessDenied"
    assert refused(lambda: s3.create_multipart_upload(Bucket="photos", Key="r")) == "AccessDenied"


def test_a_revoked_key(env: Env) -> None:
    key_id, secret = env.authority.add_key(REPO, "write")
    s3 = env.client_for(key_id, secret)
    s3.list_objects_v2(Bucket="photos")
    env.authority.revoke(key_id)
    assert refused(lambda: s3.list_objects_v2(Bucket="photos")) == "InvalidAccessKeyId"


def test_a_wrong_region(env: Env) -> None:
    s3 = env.client(region="eu-west-3")
    assert refused(lambda: s3.list_objects_v2(Bucket="photos")) == "AuthorizationHeaderMalformed"


def test_a_skewed_clock(env: Env) -> None:
    s3 = env.client()
    env.clock.offset = 20 * 60
    try:
        assert refused(lambda: s3.list_objects_v2(Bucket="photos")) == "RequestTimeTooSkewed"
    finally:
        env.clock.offset = 0


def test_unknown_buckets_and_other_repositories_are_denied_alike(env: Env) -> None:
    s3 = env.client("admin")
    assert refused(lambda: s3.list_objects_v2(Bucket="nope")) == "AccessDenied"
    assert refused(lambda: s3.list_objects_v2(Bucket="theirs")) == "AccessDenied"
    assert refused(lambda: s3.create_bucket(Bucket="newone")) == "NotImplemented"


def test_an_ai_key_is_not_a_storage_key(env: Env) -> None:
    key_id, secret = env.authority.add_key(REPO, "openai", scope="ai")
    env.authority.ais[(REPO, "openai")] = AiCredential(type="ai", provider="openai", api_key="sk-x")
    s3 = env.client_for(key_id, secret)
    assert refused(lambda: s3.list_buckets()) == "AccessDenied"


def test_a_loading_node_answers_503_with_retry_after(env: Env) -> None:
    s3 = env.client()
    env.authority.loaded = False
    try:
        with pytest.raises(ClientError) as caught:
            s3.list_buckets()
    finally:
        env.authority.loaded = True
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert caught.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "5"


def test_upstream_failures_are_502_and_counted(env: Env) -> None:
    s3 = env.client()
    before = len(env.records)
    assert refused(lambda: s3.list_objects_v2(Bucket="wrongcred")) == "InternalError"
    assert refused(lambda: s3.list_objects_v2(Bucket="unreachable")) == "InternalError"
    assert [r.get("fg.upstream_error") for r in env.records[before:]] == [True, True]
    assert [r["status"] for r in env.records[before:]] == [502, 502]


# --------------------------------------------------------------------------- a second client


def test_rclone_as_a_client(env: Env) -> None:
    key_id, secret = env.authority.add_key(REPO, "write")
    run_env = rclone_env(env.url, key_id, secret, env.tls.cert, "us-east-1")
    local = env.tmp / "rclone-src.bin"
    local.write_bytes(os.urandom(3 * 1024 * 1024 + 7))

    def rclone(*args: str) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(
            [rclone_binary(), *args], env=run_env, capture_output=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert UPSTREAM_SECRET_KEY.encode() not in done.stderr + done.stdout
        return done

    rclone("copyto", str(local), "gw:photos/rclone/file.bin")
    assert env.stored("rclone/file.bin") == local.read_bytes()
    assert rclone("lsf", "gw:photos/rclone/").stdout == b"file.bin\n"
    assert rclone("cat", "gw:photos/rclone/file.bin").stdout == local.read_bytes()
    rclone("deletefile", "gw:photos/rclone/file.bin")
    assert not (env.upstream.root / REAL_BUCKET / "rclone" / "file.bin").exists()


# --------------------------------------------------------------------------- canary


def test_the_upstream_credential_and_bucket_never_reach_a_client_or_a_log(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    s3 = env.client("admin")
    s3.put_object(Bucket="photos", Key="canary", Body=b"x")
    s3.list_objects_v2(Bucket="photos")
    uid = s3.create_multipart_upload(Bucket="photos", Key="canary-mp")["UploadId"]
    part = s3.upload_part(Bucket="photos", Key="canary-mp", UploadId=uid, PartNumber=1, Body=b"y")
    s3.complete_multipart_upload(
        Bucket="photos",
        Key="canary-mp",
        UploadId=uid,
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    for call in (
        lambda: s3.list_objects_v2(Bucket="wrongcred"),
        lambda: s3.get_object(Bucket="photos", Key="absent"),
        lambda: s3.list_parts(Bucket="photos", Key="x", UploadId="nope"),
    ):
        with pytest.raises(ClientError):
            call()
    assert env.records
    forbidden = [UPSTREAM_SECRET_KEY, UPSTREAM_ACCESS_KEY, REAL_BUCKET, env.upstream.url]
    for record in env.records:
        text = repr(record["headers"]) + repr(record.get("body")) + repr(record.get("fg.grant"))
        for value in forbidden:
            assert value not in text, (value, record)
    for value in forbidden:
        assert value not in caplog.text
