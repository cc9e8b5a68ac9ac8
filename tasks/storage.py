"""S3 for locked pictures in and deliveries out: URIs, the client, safe errors, the source cache,
verified uploads.

Everything here talks to S3 through boto3 with the standard AWS credential chain (environment,
shared config/credentials files and `AWS_PROFILE`, container and instance roles) and an optional
endpoint for S3-compatible stores (`--endpoint-url`, else boto3's own `AWS_ENDPOINT_URL`).

Secrets never reach a message: a `StorageError` is built only from the `s3://` URI, the endpoint's
scheme, host and port, the operation and S3's error code — never from a request URL (which may carry
an upload id or, were one ever used, a presigned signature), headers or credentials.

Integrity. Every object dubflow writes carries the full-file sha256 (the one in the delivery
manifest) in its metadata, `x-amz-meta-sha256`, and an S3 additional checksum (SHA256) that S3
verifies on receipt:
- single-request uploads send our own full-file SHA256, so S3 rejects a body that differs from the
  bytes we hashed;
- multipart uploads send a SHA256 per part; the object's checksum is then S3's *composite* (sha256 of
  the part digests), which we recompute from our own hashing pass and compare after the upload.
A later publish skips an object only when its size, its metadata sha256 and its S3 checksum all
match the local file: the metadata is what ties the object to the manifest (and is the same for
single and multipart objects), the S3 checksum is what S3 itself verified on the wire.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.session
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from s3transfer.utils import ChunksizeAdjuster

from dubflow.media.files import CHUNK, atomic_write_bytes, sha256_file

S3_SCHEME = "s3://"
SHA256_METADATA = "sha256"  # stored as x-amz-meta-sha256: the full-file sha256 of the delivery manifest
MiB = 1 << 20
# Files up to the threshold go in one request checked against our own full-file SHA256; larger ones
# go multipart in parallel parts (S3 allows up to 10,000 parts; s3transfer grows the part size for
# files past about 312 GiB).
TRANSFER = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=32 * MiB, max_concurrency=4)
FILE_CONCURRENCY = 4
# Attempts per request (first try included) unless AWS_MAX_ATTEMPTS or the profile's max_attempts
# says otherwise: botocore backs off exponentially with jitter on throttling, 5xx and dropped
# connections, so a publish rides out a short outage instead of losing hours of GPU work.
DEFAULT_MAX_ATTEMPTS = 8
# A GET whose body breaks off mid-stream is outside botocore's retries (they end when the headers
# arrive), so source downloads retry the whole GET themselves, this many times.
DOWNLOAD_ATTEMPTS = 3
DOWNLOAD_BACKOFF_S = 0.5

BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
IPV4_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+")
# Segments dubflow writes itself (run id, shot ids, languages, file names): the shot-id alphabet.
KEY_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,255}")
# Segments of a user-given --out prefix: AWS's "safe characters" for object keys.
PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9!_.*'()-]{1,255}")
MAX_KEY_BYTES = 1024
URL_WITH_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
THROTTLING_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                    "RequestThrottled", "ServiceUnavailable", "503"}
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                    "TokenRefreshRequired", "InvalidClientTokenId"}


class S3UriError(ValueError):
    """Text that should be an s3:// URI is not a usable one. The message never repeats a query string."""


class UnsafeNameError(ValueError):
    """A name dubflow would write (folder, file, object key segment) is not made of validated ids."""


def check_name(name: str) -> str:
    """`name` if it is safe as one folder/file name or object key segment, else UnsafeNameError.

    Run ids, shot ids, languages and the file names built from them all pass; anything that could
    climb out of a folder or prefix (`..`, `/`, `\\`, control characters) does not.
    """
    if not KEY_SEGMENT.fullmatch(name) or ".." in name or name == ".":
        raise UnsafeNameError(f"{name!r} cannot be a folder, file or object key name: dubflow writes names "
                              "only from validated ids (A–Z a–z 0–9 . _ -, no '..')")
    return name


class StorageError(Exception):
    """An S3 operation failed: `what` happened `where`, and `hint` says how to fix it.

    `endpoint_wide` marks failures that every other request to the same endpoint would hit too
    (unreachable, no or rejected credentials), so callers can stop trying object after object.
    """

    def __init__(self, what: str, hint: str, *, endpoint_wide: bool = False):
        self.what = what
        self.hint = hint
        self.endpoint_wide = endpoint_wide
        super().__init__(f"{what} — {hint}")


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str  # no leading or trailing slash; "" is the bucket's root

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}" if self.key else f"{S3_SCHEME}{self.bucket}"

    def child(self, *segments: str) -> S3Uri:
        """The object under this prefix named by `segments`, each one checked: keys dubflow writes are
        made only of validated ids, so nothing can land outside the prefix."""
        key = "/".join(part for part in (self.key, *map(check_name, segments)) if part)
        if len(key.encode()) > MAX_KEY_BYTES:
            raise S3UriError(f"object key under {self} is longer than S3's {MAX_KEY_BYTES} bytes")
        return S3Uri(self.bucket, key)

    def contains(self, key: str) -> bool:
        """Whether `key` lies strictly inside this prefix (a folder boundary, so `run1` never holds `run10/x`)."""
        return key.startswith(f"{self.key}/" if self.key else "")


def is_s3_uri(text: str | Path) -> bool:
    return isinstance(text, str) and text.startswith(S3_SCHEME)


def looks_like_url(text: str) -> bool:
    return bool(URL_WITH_SCHEME.match(text))


def parse_s3_uri(text: str, *, prefix: bool = False) -> S3Uri:
    """`s3://bucket/key` for an object, or with `prefix=True` `s3://bucket[/prefix]` for a folder to
    write into, whose segments must be plain names (no empty, `.` or `..` segments)."""
    if not is_s3_uri(text):
        raise S3UriError("an S3 URI starts with s3:// (lower case), e.g. s3://bucket/shots/sh010.mov")
    if "?" in text or "#" in text:
        # Never echo it: a query string is where presigned URLs keep their signature.
        raise S3UriError("an S3 URI has no query string or fragment (presigned URLs are not accepted); "
                         "give s3://bucket/key and let the AWS credential chain sign the requests")
    bucket, _, key = text[len(S3_SCHEME):].partition("/")
    if not BUCKET_NAME.fullmatch(bucket) or ".." in bucket or IPV4_LIKE.fullmatch(bucket):
        shown = repr(bucket) if re.fullmatch(r"[\w.-]*", bucket) else "the bucket"  # not user:password@…
        raise S3UriError(f"{shown} is not a valid bucket name: 3–63 characters of a–z 0–9 . -, "
                         "starting and ending with a letter or digit")
    if any(ord(char) < 32 or char == "\x7f" for char in key):
        raise S3UriError(f"the key of {S3_SCHEME}{bucket}/… contains control characters")
    if not prefix:
        if not key or key.endswith("/"):
            raise S3UriError(f"{text!r} names no object: give the full key, e.g. s3://{bucket}/shots/sh010.mov")
        return S3Uri(bucket, key)
    key = key.removesuffix("/")
    for segment in key.split("/") if key else ():
        if not PREFIX_SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise S3UriError(f"prefix segment {segment!r} of {text!r} is not allowed: "
                             "use A–Z a–z 0–9 ! _ . * ' ( ) -, no empty, '.' or '..' segments")
    return S3Uri(bucket, key)


def check_endpoint_url(url: str) -> str:
    """An endpoint is scheme://host[:port][/path]; credentials in it would end up in logs and run records."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise S3UriError("an endpoint URL looks like https://s3.example.com or http://127.0.0.1:9000")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise S3UriError("the endpoint URL must not carry credentials, a query or a fragment: give the "
                         "credentials through the AWS credential chain (AWS_PROFILE, AWS_ACCESS_KEY_ID, a role)")
    return url


def s3_client(endpoint_url: str | None = None) -> Any:
    """An S3 client on the standard credential chain; `endpoint_url` None leaves boto3 to read
    `AWS_ENDPOINT_URL` (or `endpoint_url` of the profile) itself."""
    if endpoint_url is not None:
        check_endpoint_url(endpoint_url)
    core = botocore.session.get_session()
    attempts = core.get_config_variable("max_attempts") or DEFAULT_MAX_ATTEMPTS
    config = Config(
        retries={"mode": core.get_config_variable("retry_mode") or "standard", "total_max_attempts": attempts},
        max_pool_connections=FILE_CONCURRENCY * (TRANSFER.max_request_concurrency + 1),
        connect_timeout=10,
        read_timeout=120,
    )
    return boto3.session.Session(botocore_session=core).client("s3", endpoint_url=endpoint_url, config=config)


def endpoint_label(client: Any) -> str:
    """scheme://host[:port] of the client's endpoint: enough to say where, nothing that could be secret."""
    parts = urlsplit(client.meta.endpoint_url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def storage_error(exc: Exception, client: Any, uri: S3Uri, action: str) -> StorageError:
    """Turn a boto3 failure of `action` ("read", "write", …) on `uri` into a clear, secret-free error."""
    where = endpoint_label(client)
    attempts = client.meta.config.retries["total_max_attempts"]
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
        return StorageError(
            f"no usable AWS credentials to {action} {uri}",
            "provide them through the standard chain: AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "~/.aws/credentials, or a container/instance role",
            endpoint_wide=True,
        )
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        return StorageError(
            f"could not {action} {uri}: the S3 endpoint {where} did not answer ({type(exc).__name__}, "
            f"{attempts} attempts)",
            "check --endpoint-url / AWS_ENDPOINT_URL and the network",
            endpoint_wide=True,
        )
    if not isinstance(exc, ClientError):
        return StorageError(f"could not {action} {uri} at {where} ({type(exc).__name__})",
                            "check the S3 endpoint and the network")
    code = str(exc.response.get("Error", {}).get("Code") or "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket":
        return StorageError(f"bucket {uri.bucket!r} does not exist at {where}",
                            "create it, or fix the bucket name or the endpoint (--endpoint-url / AWS_ENDPOINT_URL)")
    if code in ("NoSuchKey", "404") or status == 404:
        return StorageError(f"no object at {uri} ({where})", "check the key: S3 keys are case-sensitive and exact")
    if code in CREDENTIAL_CODES:
        return StorageError(f"S3 at {where} rejected the credentials ({code}) when asked to {action} {uri}",
                            "check the credentials the AWS chain finds (AWS_PROFILE, AWS_ACCESS_KEY_ID, role) "
                            "and that they belong to this endpoint", endpoint_wide=True)
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled") or status == 403:
        return StorageError(
            f"access denied: the credentials may not {action} {uri} ({where})",
            "grant them s3:GetObject (sources) or s3:PutObject, s3:DeleteObject, s3:ListBucket and "
            "s3:AbortMultipartUpload (deliveries) on this bucket and prefix",
        )
    if code in THROTTLING_CODES or (status or 0) >= 500:
        return StorageError(
            f"S3 at {where} kept failing to {action} {uri} ({code or status}) after {attempts} attempts",
            "the store is throttling or failing: wait, or raise AWS_MAX_ATTEMPTS",
        )
    return StorageError(f"S3 at {where} refused to {action} {uri} ({code or status})",
                        "see this S3 error code in the store's documentation")


def check_bucket(client: Any, uri: S3Uri, action: str) -> None:
    """Fail early, with a clear error, when the bucket is missing or the credentials cannot reach it."""
    try:
        client.head_bucket(Bucket=uri.bucket)
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            exc.response["Error"]["Code"] = "NoSuchBucket"  # a HEAD has no body to name the error
        raise storage_error(exc, client, uri, action) from None
    except BotoCoreError as exc:
        raise storage_error(exc, client, uri, action) from None


# ---- sources ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchedSource:
    path: Path  # $DUBFLOW_CACHE/sources/<sha256>: named by its content, shared by every URI that holds it
    sha256: str


def fetch_source(client: Any, uri: S3Uri, cache_root: Path) -> FetchedSource:
    """The object at `uri` as a local file in the content-addressed cache, downloading it only when
    the cache does not yet hold this version of it.

    One HEAD per call learns the object's ETag and size; an index entry keyed by endpoint, bucket,
    key, ETag and size remembers which sha256 that version had. The download goes to a temporary
    file, hashed on the way, and is renamed to `sources/<sha256>` only when complete.
    """
    try:
        head = client.head_object(Bucket=uri.bucket, Key=uri.key)
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            check_bucket(client, uri, "read")  # a 404 on HEAD does not say whether key or bucket is missing
        raise storage_error(exc, client, uri, "read") from None
    except BotoCoreError as exc:
        raise storage_error(exc, client, uri, "read") from None
    etag, size = head["ETag"], head["ContentLength"]
    sources = Path(cache_root) / "sources"
    version = hashlib.sha256("\n".join((endpoint_label(client), uri.bucket, uri.key, etag, str(size))).encode())
    index = sources / "index" / version.hexdigest()
    if index.is_file():
        digest = index.read_text().strip()
        cached = sources / digest
        if cached.is_file() and cached.stat().st_size == size:
            return FetchedSource(cached, digest)
    digest = _download(client, uri, etag, size, sources)
    atomic_write_bytes(index, digest.encode())
    return FetchedSource(sources / digest, digest)


def _download(client: Any, uri: S3Uri, etag: str, size: int, sources: Path) -> str:
    sources.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        fd, tmp = tempfile.mkstemp(dir=sources, prefix=".download-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                # IfMatch: every byte comes from the version the HEAD saw, even across retries.
                digest = _write_body(client.get_object(Bucket=uri.bucket, Key=uri.key, IfMatch=etag)["Body"], handle)
                handle.flush()
                os.fsync(handle.fileno())
            if Path(tmp).stat().st_size != size:
                raise IncompleteReadError(actual_bytes=Path(tmp).stat().st_size, expected_bytes=size)
            os.replace(tmp, sources / digest)
            return digest
        except (ResponseStreamingError, IncompleteReadError, ReadTimeoutError) as exc:
            Path(tmp).unlink(missing_ok=True)
            if attempt == DOWNLOAD_ATTEMPTS:
                raise storage_error(exc, client, uri, "read") from None
            time.sleep(DOWNLOAD_BACKOFF_S * 2 ** (attempt - 1))
        except ClientError as exc:
            Path(tmp).unlink(missing_ok=True)
            if exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                raise StorageError(f"{uri} changed while it was being downloaded",
                                   "make sure the locked picture is not being rewritten, then run again") from None
            raise storage_error(exc, client, uri, "read") from None
        except BotoCoreError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise storage_error(exc, client, uri, "read") from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    raise AssertionError("unreachable: the last attempt returns or raises")


# ---- uploads ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileDigest:
    size: int
    sha256: str  # hex, full file: the delivery manifest's hash and the object's x-amz-meta-sha256
    s3_checksum: str  # base64 ChecksumSHA256 S3 will report: full-object, or composite "<b64>-<parts>"

    @property
    def multipart(self) -> bool:
        return "-" in self.s3_checksum


def digest_file(path: Path) -> FileDigest:
    """The file's sha256 and the checksum S3 will report for it. A multipart-sized file is read once,
    hashing both the whole and the exact parts s3transfer will send, whose digests make S3's composite."""
    size = Path(path).stat().st_size
    if size < TRANSFER.multipart_threshold:
        sha256 = sha256_file(path)
        return FileDigest(size, sha256, base64.b64encode(bytes.fromhex(sha256)).decode())
    part_size = ChunksizeAdjuster().adjust_chunksize(TRANSFER.multipart_chunksize, size)
    full = hashlib.sha256()
    parts: list[bytes] = []
    with open(path, "rb") as handle:
        while True:
            part, got = hashlib.sha256(), 0
            while got < part_size and (chunk := handle.read(min(CHUNK, part_size - got))):
                full.update(chunk)
                part.update(chunk)
                got += len(chunk)
            if not got:
                break
            parts.append(part.digest())
    composite = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    return FileDigest(size, full.hexdigest(), f"{composite}-{len(parts)}")


def stored_matches(client: Any, uri: S3Uri, digest: FileDigest) -> bool:
    """Whether the object at `uri` already is this file: size, metadata sha256 and S3's own checksum."""
    try:
        head = client.head_object(Bucket=uri.bucket, Key=uri.key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return False
        raise storage_error(exc, client, uri, "read") from None
    except BotoCoreError as exc:
        raise storage_error(exc, client, uri, "read") from None
    return (
        head["ContentLength"] == digest.size
        and head.get("Metadata", {}).get(SHA256_METADATA) == digest.sha256
        and _same_checksum(head.get("ChecksumSHA256"), digest.s3_checksum)
    )


def _same_checksum(stored: str | None, expected: str) -> bool:
    # Stores differ in whether a composite checksum carries its "-<parts>" suffix; the digest decides.
    return stored is not None and stored.split("-")[0] == expected.split("-")[0]


def upload_files(client: Any, uploads: Iterable[tuple[Path, S3Uri, FileDigest]]) -> None:
    """Upload each file to its URI, verified, several at a time. On the first failure the uploads not
    yet started are cancelled and a StorageError says how many finished; finished objects stay."""
    uploads = list(uploads)
    pool = ThreadPoolExecutor(FILE_CONCURRENCY)
    try:
        futures = [pool.submit(upload_file, client, path, uri, digest) for path, uri, digest in uploads]
        wait(futures, return_when=FIRST_EXCEPTION)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    failures = [future.exception() for future in futures if not future.cancelled() and future.exception()]
    if not failures:
        return
    finished = sum(1 for future in futures if not future.cancelled() and future.exception() is None)
    first = failures[0]
    if isinstance(first, StorageError):
        raise StorageError(f"{first.what}; {finished} of {len(uploads)} uploads finished", first.hint,
                           endpoint_wide=first.endpoint_wide) from None
    raise first


def upload_file(client: Any, path: Path, uri: S3Uri, digest: FileDigest) -> None:
    """Upload one file with its sha256 metadata and an S3 SHA256 checksum, then check what S3 stored."""
    if not digest.multipart:
        with open(path, "rb") as body:
            _put_verified(client, uri, body, digest)
        return
    try:
        with create_transfer_manager(client, TRANSFER) as manager:
            extra = {"ChecksumAlgorithm": "SHA256", "Metadata": {SHA256_METADATA: digest.sha256}}
            manager.upload(str(path), uri.bucket, uri.key, extra_args=extra).result()
        stored = client.head_object(Bucket=uri.bucket, Key=uri.key, ChecksumMode="ENABLED").get("ChecksumSHA256")
    except (ClientError, BotoCoreError) as exc:
        raise storage_error(exc, client, uri, "write") from None
    _check_stored(uri, stored, digest)


def digest_bytes(data: bytes) -> FileDigest:
    """The digest of a small in-memory object (a delivery manifest), always sent in one request."""
    sha256 = hashlib.sha256(data).digest()
    return FileDigest(len(data), sha256.hex(), base64.b64encode(sha256).decode())


def put_bytes(client: Any, uri: S3Uri, data: bytes) -> None:
    """Write a small object from memory, verified like a file."""
    _put_verified(client, uri, data, digest_bytes(data))


def _put_verified(client: Any, uri: S3Uri, body: Any, digest: FileDigest) -> None:
    # One request carrying our full-file SHA256 (the algorithm named too, or some stores drop the
    # value): S3 refuses the body if it is not the bytes we hashed, and reports what it stored.
    try:
        response = client.put_object(Bucket=uri.bucket, Key=uri.key, Body=body, ChecksumAlgorithm="SHA256",
                                     ChecksumSHA256=digest.s3_checksum, Metadata={SHA256_METADATA: digest.sha256})
    except (ClientError, BotoCoreError) as exc:
        raise storage_error(exc, client, uri, "write") from None
    _check_stored(uri, response.get("ChecksumSHA256"), digest)


def _check_stored(uri: S3Uri, stored: str | None, digest: FileDigest) -> None:
    if not _same_checksum(stored, digest.s3_checksum):
        raise StorageError(
            f"{uri} was stored with SHA256 checksum {stored}, but the local file gives {digest.s3_checksum}",
            "the file changed while it was uploaded, or the store does not keep SHA256 checksums",
        )


def download_file(client: Any, uri: S3Uri, path: Path) -> None:
    """The object at `uri` into `path`, checked against the full-file sha256 it was uploaded with
    (`upload_file` stores it); an object without one is refused rather than trusted."""
    try:
        response = client.get_object(Bucket=uri.bucket, Key=uri.key)
        expected = response.get("Metadata", {}).get(SHA256_METADATA)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            digest = _write_body(response["Body"], handle)
    except (ClientError, BotoCoreError) as exc:
        raise storage_error(exc, client, uri, "read") from None
    if expected != digest:
        raise StorageError(f"{uri} has sha256 {digest}, but was stored as {expected}",
                           "the object was changed or written by something other than dubflow; delete it")


def _write_body(body: Any, handle: Any) -> str:
    """Copy a GetObject body into an open file; its sha256, computed on the way."""
    digest = hashlib.sha256()
    for chunk in body.iter_chunks(CHUNK):
        digest.update(chunk)
        handle.write(chunk)
    return digest.hexdigest()


def list_keys(client: Any, prefix: S3Uri) -> list[str]:
    """Every object key inside `prefix` (a folder boundary)."""
    keys: list[str] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=f"{prefix.key}/"):
            keys += [item["Key"] for item in page.get("Contents", [])]
    except (ClientError, BotoCoreError) as exc:
        raise storage_error(exc, client, prefix, "list") from None
    return keys


def delete_keys(client: Any, prefix: S3Uri, keys: Iterable[str]) -> None:
    """Delete objects, each of which must lie inside `prefix`; nothing outside it is ever deleted."""
    keys = list(keys)
    outside = [key for key in keys if not prefix.contains(key)]
    if outside:
        raise AssertionError(f"refusing to delete {len(outside)} key(s) outside {prefix}")
    try:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = keys[start:start + 1000]
            response = client.delete_objects(Bucket=prefix.bucket,
                                              Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True})
            if response.get("Errors"):  # per-key failures arrive in a 200 response
                raise ClientError({"Error": response["Errors"][0]}, "DeleteObjects")
    except (ClientError, BotoCoreError) as exc:
        raise storage_error(exc, client, prefix, "delete objects in") from None


def abort_unfinished_uploads(client: Any, prefix: S3Uri) -> None:
    """Abort multipart uploads left inside `prefix` by an interrupted publish (their parts cost storage)."""
    try:
        pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=prefix.bucket, Prefix=f"{prefix.key}/")
        for page in pages:
            for upload in page.get("Uploads", []):
                if prefix.contains(upload["Key"]):
                    client.abort_multipart_upload(Bucket=prefix.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    except ClientError as exc:
        # Housekeeping, not delivery: a role without s3:ListBucketMultipartUploads still delivers, and
        # a bucket lifecycle rule (AbortIncompleteMultipartUpload) cleans up after it instead.
        if exc.response.get("Error", {}).get("Code") not in ("AccessDenied", "403"):
            raise storage_error(exc, client, prefix, "clean unfinished uploads in") from None
    except BotoCoreError as exc:
        raise storage_error(exc, client, prefix, "clean unfinished uploads in") from None
