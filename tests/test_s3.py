"""S3 sources and deliveries against a real S3-compatible server (moto_server) on loopback.

Requests are counted, and faults injected, by `S3Relay` (tests/s3_server.py) between the client and
the server; nothing stands in for S3 itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pandas as pd
import pytest
from boto3.s3.transfer import TransferConfig
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogWorker

from dubflow.flows.cli import main
from dubflow.manifests.schema import ManifestError
from dubflow.tasks import storage
from dubflow.media.files import sha256_file
from dubflow.tasks.publish import (
    DeliveryFile,
    InvalidDestinationError,
    PairOutcome,
    check_run_id,
    open_destination,
    publish_s3,
)
from dubflow.tasks.storage import (
    S3Uri,
    S3UriError,
    StorageError,
    UnsafeNameError,
    check_endpoint_url,
    parse_s3_uri,
    s3_client,
)
from dubflow.tasks.stage_cache import CacheCounts, CacheRemoteError, StageCache, check_remote, stage_key
from dubflow.tasks.validate import validate_manifest
from s3_server import UPLOADS, WRITES, Fault, MotoServer, S3Relay, free_port

FAKE_KEY_ID = "AKIADUBFLOWFAKEKEY01"
FAKE_SECRET = "dubflow-fake-secret/DO-NOT-LEAK+0123456789abcdef"
SHOT = "shots/sc01_sh010.mov"
OUTCOMES = [PairOutcome("sh1", "fr", "delivered", None, 1.0)]
MiB = 1 << 20


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.close()


@pytest.fixture
def relay(moto: MotoServer) -> Iterator[S3Relay]:
    relay = S3Relay(moto)
    yield relay
    relay.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Recognisable fake credentials, no shared AWS config, and few attempts so dead endpoints fail fast."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)


def admin(server: MotoServer):
    """A client straight to the server (bypassing the relay), for setting up and inspecting buckets."""
    return boto3.client("s3", endpoint_url=server.url)


def new_bucket(server: MotoServer) -> str:
    name = f"bkt-{uuid.uuid4().hex[:12]}"
    admin(server).create_bucket(Bucket=name)
    return name


def delivery_files(root: Path, payloads: dict[str, bytes]) -> list[DeliveryFile]:
    files = []
    for relative, payload in payloads.items():
        source = root / "stage" / relative
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(payload)
        shot_id, *_ = relative.split("/")
        files.append(DeliveryFile(source, relative, "mix", shot_id, "fr"))
    return files


def objects(server: MotoServer, bucket: str, prefix: str = "") -> dict[str, dict]:
    """key -> {size, sha256 metadata} of everything under `prefix`."""
    client = admin(server)
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            head = client.head_object(Bucket=bucket, Key=item["Key"])
            found[item["Key"]] = {"size": item["Size"], "sha256": head["Metadata"].get("sha256")}
    return found


def put_sentinels(server: MotoServer, bucket: str) -> dict[str, bytes]:
    """Objects beside the run folder that no publish may touch, including a sibling sharing its prefix."""
    sentinels = {key: key.encode() for key in ("deliveries/r1x/keep.wav", "deliveries/r10/sh1/keep.wav",
                                                "deliveries/keep.txt", "elsewhere/r1/sh1/fr/sh1_fr_mix.wav")}
    for key, body in sentinels.items():
        admin(server).put_object(Bucket=bucket, Key=key, Body=body)
    return sentinels


def assert_sentinels_intact(server: MotoServer, bucket: str, sentinels: dict[str, bytes]) -> None:
    for key, body in sentinels.items():
        assert admin(server).get_object(Bucket=bucket, Key=key)["Body"].read() == body


# ---- URIs and names ---------------------------------------------------------------------------------


def test_uris_names_and_endpoints_are_checked_before_use() -> None:
    assert parse_s3_uri("s3://studio-pics/locked/sh 010.mov") == S3Uri("studio-pics", "locked/sh 010.mov")
    assert parse_s3_uri("s3://deliv.example/", prefix=True) == S3Uri("deliv.example", "")
    assert parse_s3_uri("s3://deliv/show/2024-06/", prefix=True).child("r1", "sh1", "fr", "sh1_fr.mp4").key == \
        "show/2024-06/r1/sh1/fr/sh1_fr.mp4"
    for bad in ("s3://Bad_Bucket/x", "s3://ab/x", "s3://192.168.0.1/x", "S3://bucket/x", "s3://bucket",
                "s3://bucket/dir/"):
        with pytest.raises(S3UriError):
            parse_s3_uri(bad)
    for bad_prefix in ("s3://bucket/a//b", "s3://bucket/a/../b", "s3://bucket/./b", "s3://bucket/a\\b"):
        with pytest.raises(S3UriError):
            parse_s3_uri(bad_prefix, prefix=True)
    with pytest.raises(S3UriError) as presigned:
        parse_s3_uri("s3://bucket/key.mov?X-Amz-Signature=SECRETSIG&X-Amz-Credential=AKIA")
    assert "SECRETSIG" not in str(presigned.value) and "presigned" in str(presigned.value)
    prefix = S3Uri("bucket", "deliveries")
    for unsafe in ("..", ".", "", "a/b", "a..b", "../r1", "r1\\x", "sh\x00"):
        with pytest.raises(UnsafeNameError):
            prefix.child(unsafe)
    assert prefix.contains("deliveries/r1/x") and not prefix.contains("deliveries1/x") and not prefix.contains("x")
    with pytest.raises(S3UriError) as with_credentials:
        check_endpoint_url("https://user:hunter2@s3.example.com")
    assert "hunter2" not in str(with_credentials.value)
    assert check_endpoint_url("http://127.0.0.1:9000") == "http://127.0.0.1:9000"


# ---- sources ----------------------------------------------------------------------------------------


def s3_manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """rows of (shot_id, source, lock_sha256), one French line each."""
    pd.DataFrame(
        [{"shot_id": shot, "source": source, "lock_sha256": lock, "language": "fr", "script": "Bonjour.", "speaker": ""}
         for shot, source, lock in rows]
    ).to_csv(path, index=False)
    return path


def test_s3_source_is_fetched_once_into_the_content_addressed_cache(
    moto: MotoServer, relay: S3Relay, small_samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DUBFLOW_CACHE", str(cache))
    monkeypatch.setenv("AWS_ENDPOINT_URL", relay.url)  # boto3 reads it itself: no endpoint passed below
    bucket = new_bucket(moto)
    picture = (small_samples_dir / SHOT).read_bytes()
    digest = hashlib.sha256(picture).hexdigest()
    admin(moto).put_object(Bucket=bucket, Key="locked/sc01_sh010.mov", Body=picture)
    uri = f"s3://{bucket}/locked/sc01_sh010.mov"
    manifest = s3_manifest(tmp_path / "manifest.csv", [("sh1", uri, digest)])

    first = validate_manifest(manifest)
    shot = first.shots["sh1"]
    assert (shot.source, shot.sha256, shot.origin) == (cache / "sources" / digest, digest, uri)
    assert shot.source.read_bytes() == picture and shot.media.frame_count > 0
    assert relay.count("GetObject") == 1
    assert not [p for p in (cache / "sources").iterdir() if p.name.startswith(".")]  # no temp file left

    relay.reset()
    assert validate_manifest(manifest).shots["sh1"].source == shot.source
    assert (relay.count("GetObject"), relay.count("HeadObject")) == (0, 1)

    # The object is replaced after lock: fetched again (new ETag), and the lock catches it.
    admin(moto).put_object(Bucket=bucket, Key="locked/sc01_sh010.mov", Body=picture[:-1] + b"\0")
    with pytest.raises(ManifestError) as caught:
        validate_manifest(manifest)
    (problem,) = caught.value.problems
    assert (problem.row, problem.column) == (2, "lock_sha256") and "does not match the lock" in problem.message
    assert relay.count("GetObject") == 1


def test_a_download_cut_short_is_fetched_again(
    moto: MotoServer, relay: S3Relay, small_samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUBFLOW_CACHE", str(tmp_path / "cache"))
    bucket = new_bucket(moto)
    admin(moto).put_object(Bucket=bucket, Key="sh.mov", Body=(small_samples_dir / SHOT).read_bytes())
    relay.faults.append(Fault("GetObject", truncate=True))
    manifest = s3_manifest(tmp_path / "m.csv", [("sh1", f"s3://{bucket}/sh.mov", "")])
    shot = validate_manifest(manifest, endpoint_url=relay.url).shots["sh1"]
    assert shot.sha256 == sha256_file(small_samples_dir / SHOT) == sha256_file(shot.source)
    assert relay.count("GetObject") == 2


def test_s3_source_problems_say_row_column_what_and_fix(
    moto: MotoServer, relay: S3Relay, small_samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUBFLOW_CACHE", str(tmp_path / "cache"))
    bucket = new_bucket(moto)
    admin(moto).put_object(Bucket=bucket, Key="ok.mov", Body=(small_samples_dir / SHOT).read_bytes())
    admin(moto).put_object(Bucket=bucket, Key="notes.mov", Body=b"not a picture")
    manifest = s3_manifest(tmp_path / "m.csv", [
        ("ok", f"s3://{bucket}/ok.mov", ""),
        ("notmedia", f"s3://{bucket}/notes.mov", ""),
        ("nokey", f"s3://{bucket}/Ok.mov", ""),
        ("nobucket", "s3://no-such-bucket-here/ok.mov", ""),
        ("badurl", "s3://Not_A_Bucket/ok.mov", ""),
        ("query", f"s3://{bucket}/ok.mov?versionId=SECRETSIG1", ""),
        ("https", "https://example.com/ok.mov?X-Amz-Signature=SECRETSIG2", ""),
    ])
    with pytest.raises(ManifestError) as caught:
        validate_manifest(manifest, endpoint_url=relay.url)
    problems = {problem.row: problem for problem in caught.value.problems}
    assert sorted(problems) == [3, 4, 5, 6, 7, 8] and {p.column for p in problems.values()} == {"source"}
    assert f"unreadable media: s3://{bucket}/notes.mov: cannot be opened" in problems[3].message
    assert f"no object at s3://{bucket}/Ok.mov" in problems[4].message and "case-sensitive" in problems[4].hint
    assert "bucket 'no-such-bucket-here' does not exist" in problems[5].message and "create it" in problems[5].hint
    assert "not a valid bucket name" in problems[6].message and "s3://bucket/key" in problems[6].hint
    assert "presigned" in problems[7].message
    assert "other than s3://" in problems[8].message
    assert "SECRETSIG" not in str(caught.value)


def test_unreachable_endpoint_is_reported_once_not_retried_per_row(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUBFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    dead = f"http://127.0.0.1:{free_port()}"
    manifest = s3_manifest(tmp_path / "m.csv", [(f"sh{i}", f"s3://bucket-x/sh{i}.mov", "") for i in range(3)])
    started = time.monotonic()
    with pytest.raises(ManifestError) as caught:
        validate_manifest(manifest, endpoint_url=dead)
    first, *rest = caught.value.problems
    assert f"the S3 endpoint {dead} did not answer" in first.message and "--endpoint-url" in first.hint
    assert [p.row for p in rest] == [3, 4] and all("not checked" in p.message and "(row 2)" in p.message for p in rest)
    assert time.monotonic() - started < 10


def test_access_denied_is_clear_for_sources_and_deliveries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """moto checks credentials and IAM policies after its first 4 requests: set-up uses those, then a
    user with no policy gets AccessDenied (403) for everything."""
    monkeypatch.setenv("DUBFLOW_CACHE", str(tmp_path / "cache"))
    server = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        admin(server).create_bucket(Bucket="locked")
        admin(server).put_object(Bucket="locked", Key="sh.mov", Body=b"picture")
        iam = boto3.client("iam", endpoint_url=server.url)
        iam.create_user(UserName="no-rights")
        key = iam.create_access_key(UserName="no-rights")["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])

        manifest = s3_manifest(tmp_path / "m.csv", [("sh1", "s3://locked/sh.mov", "")])
        with pytest.raises(ManifestError) as caught:
            validate_manifest(manifest, endpoint_url=server.url)
        (problem,) = caught.value.problems
        assert (problem.row, problem.column) == (2, "source")
        assert "access denied" in problem.message and "s3://locked/sh.mov" in problem.message
        assert "s3:GetObject" in problem.hint

        with pytest.raises(InvalidDestinationError) as refused:
            open_destination("s3://locked/deliveries", server.url)
        assert "access denied" in refused.value.what and "s3://locked/deliveries" in refused.value.what

        files = delivery_files(tmp_path, {"sh1/fr/sh1_fr_mix.wav": b"mix"})
        with pytest.raises(StorageError) as denied:
            publish_s3(S3Uri("locked", "deliveries"), "r1", files, OUTCOMES, {}, s3_client(server.url))
        assert "access denied" in denied.value.what and "s3:PutObject" in denied.value.hint
        assert key["SecretAccessKey"] not in str(denied.value)
    finally:
        server.close()


def test_out_prefix_problems_are_found_before_any_work(relay: S3Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidDestinationError) as missing:
        open_destination("s3://no-such-delivery-bucket/show", relay.url)
    assert "bucket 'no-such-delivery-bucket' does not exist" in missing.value.what and "create it" in missing.value.hint
    with pytest.raises(InvalidDestinationError) as bad:
        open_destination("s3://bucket-y/a/../b", relay.url)
    assert "'..'" in bad.value.what
    with pytest.raises(InvalidDestinationError) as presigned:
        open_destination("https://bucket.s3.amazonaws.com/x?X-Amz-Signature=SECRETSIG", relay.url)
    assert "SECRETSIG" not in str(presigned.value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(InvalidDestinationError) as dead:
        open_destination("s3://bucket-y/show", f"http://127.0.0.1:{free_port()}")
    assert "did not answer" in dead.value.what
    with pytest.raises(InvalidDestinationError) as run_id:
        check_run_id("../up")
    assert "run id" in run_id.value.what


# ---- publishing -------------------------------------------------------------------------------------


def test_publish_writes_the_manifest_last_and_a_republish_uploads_nothing(
    moto: MotoServer, relay: S3Relay, tmp_path: Path
) -> None:
    bucket = new_bucket(moto)
    sentinels = put_sentinels(moto, bucket)
    payloads = {f"sh{i}/fr/sh{i}_fr_mix.wav": os.urandom(1000 + i) for i in range(6)}
    payloads["sh0/sh0_me.wav"] = b""  # an empty file is a file too
    files = delivery_files(tmp_path, payloads)
    prefix, client = S3Uri(bucket, "deliveries"), s3_client(relay.url)

    published = publish_s3(prefix, "r1", files, OUTCOMES, {"profile": {"name": "smoke"}}, client)

    assert published.location == f"s3://{bucket}/deliveries/r1"
    stored = objects(moto, bucket, "deliveries/r1/")
    assert set(stored) == {f"deliveries/r1/{p}" for p in payloads} | {"deliveries/r1/delivery.parquet",
                                                                       "deliveries/r1/delivery.json"}
    for relative, payload in payloads.items():
        assert stored[f"deliveries/r1/{relative}"] == {"size": len(payload),
                                                       "sha256": hashlib.sha256(payload).hexdigest()}
        head = admin(moto).head_object(Bucket=bucket, Key=f"deliveries/r1/{relative}", ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(payload).digest()).decode()
    writes = relay.of(*WRITES)
    assert [w.key for w in writes[-2:]] == ["deliveries/r1/delivery.parquet", "deliveries/r1/delivery.json"]
    assert all(w.key.startswith("deliveries/r1/") for w in writes)
    manifest = json.loads(admin(moto).get_object(Bucket=bucket, Key="deliveries/r1/delivery.json")["Body"].read())
    assert {e["path"]: e["sha256"] for e in manifest["files"]} == {
        p: hashlib.sha256(b).hexdigest() for p, b in payloads.items()}
    assert manifest["run_id"] == "r1" and manifest["profile"] == {"name": "smoke"}

    relay.reset()
    again = publish_s3(prefix, "r1", files, OUTCOMES, {"profile": {"name": "smoke"}}, client)
    assert relay.of(*WRITES) == []
    assert again.written == () and set(again.skipped) == set(payloads) and again.removed == ()
    assert relay.count("ListObjects") == 1 and relay.count("HeadObject") == len(payloads) + 2
    assert_sentinels_intact(moto, bucket, sentinels)


def test_a_changed_republish_withdraws_the_manifest_first_and_removes_stale_objects(
    moto: MotoServer, relay: S3Relay, tmp_path: Path
) -> None:
    bucket = new_bucket(moto)
    sentinels = put_sentinels(moto, bucket)
    prefix, client = S3Uri(bucket, "deliveries"), s3_client(relay.url)
    first = {"sh1/fr/sh1_fr_mix.wav": b"one", "sh2/fr/sh2_fr_mix.wav": b"two", "sh3/fr/sh3_fr_mix.wav": b"three"}
    publish_s3(prefix, "r1", delivery_files(tmp_path / "a", first), OUTCOMES, {}, client)

    relay.reset()
    # sh2 changed; sh3 failed this time, so its file is no longer part of the delivery.
    second = {"sh1/fr/sh1_fr_mix.wav": b"one", "sh2/fr/sh2_fr_mix.wav": b"TWO"}
    published = publish_s3(prefix, "r1", delivery_files(tmp_path / "b", second), OUTCOMES, {}, client)

    writes = [(w.operation, w.key) for w in relay.of(*WRITES)]
    assert writes == [
        ("DeleteObjects", ""),  # delivery.json withdrawn before anything it lists changes
        ("PutObject", "deliveries/r1/sh2/fr/sh2_fr_mix.wav"),
        ("DeleteObjects", ""),  # the stale sh3 file, before the new manifest
        ("PutObject", "deliveries/r1/delivery.parquet"),
        ("PutObject", "deliveries/r1/delivery.json"),
    ]
    assert (published.written, published.skipped, published.removed) == (
        ("sh2/fr/sh2_fr_mix.wav", "delivery.parquet", "delivery.json"), ("sh1/fr/sh1_fr_mix.wav",),
        ("sh3/fr/sh3_fr_mix.wav",))
    assert set(objects(moto, bucket, "deliveries/r1/")) == {f"deliveries/r1/{p}" for p in second} | {
        "deliveries/r1/delivery.parquet", "deliveries/r1/delivery.json"}
    assert_sentinels_intact(moto, bucket, sentinels)


def test_throttling_and_server_errors_are_retried_with_backoff(
    moto: MotoServer, relay: S3Relay, tmp_path: Path
) -> None:
    bucket = new_bucket(moto)
    relay.faults += [Fault("PutObject", times=2, status=503, code="SlowDown"),
                     Fault("ListObjects", times=1, status=500, code="InternalError"),
                     Fault("HeadBucket", times=1, status=503, code="ServiceUnavailable")]
    payloads = {"sh1/fr/sh1_fr_mix.wav": b"mix", "sh1/fr/sh1_fr_dx.wav": b"dx"}
    open_destination(f"s3://{bucket}/d", relay.url)
    publish_s3(S3Uri(bucket, "d"), "r1", delivery_files(tmp_path, payloads), OUTCOMES, {}, s3_client(relay.url))
    assert set(objects(moto, bucket, "d/r1/")) == {f"d/r1/{p}" for p in payloads} | {"d/r1/delivery.parquet",
                                                                                      "d/r1/delivery.json"}
    assert relay.count("PutObject") == len(payloads) + 2 + 2  # two throttled attempts retried
    assert relay.count("ListObjects") == 2 and relay.count("HeadBucket") == 2


def test_a_200_mb_file_goes_multipart_with_its_sha256(
    moto: MotoServer, relay: S3Relay, tmp_path: Path, record_property
) -> None:
    bucket = new_bucket(moto)
    big = tmp_path / "stage" / "sh1" / "fr" / "sh1_fr.mov"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as handle:
        for _ in range(25):
            handle.write(os.urandom(8 * MiB))
    files = [DeliveryFile(big, "sh1/fr/sh1_fr.mov", "mezzanine_mov", "sh1", "fr")]
    relay.faults.append(Fault("UploadPart", times=1, status=500, code="InternalError"))
    started = time.monotonic()
    publish_s3(S3Uri(bucket, "d"), "r1", files, OUTCOMES, {}, s3_client(relay.url))
    seconds = time.monotonic() - started
    record_property("publish_200mb_seconds", round(seconds, 2))
    print(f"200 MB publish (hash + multipart upload through the relay to moto): {seconds:.1f} s")

    parts = -(-200 * MiB // storage.TRANSFER.multipart_chunksize)
    head = admin(moto).head_object(Bucket=bucket, Key="d/r1/sh1/fr/sh1_fr.mov", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith(f"-{parts}") and head["ContentLength"] == 200 * MiB
    assert head["Metadata"]["sha256"] == sha256_file(big)
    assert admin(moto).head_object(Bucket=bucket, Key="d/r1/sh1/fr/sh1_fr.mov", PartNumber=1)["PartsCount"] == parts
    assert relay.count("UploadPart") == parts + 1  # one part failed with a 500 and was sent again
    assert relay.count("CreateMultipartUpload", "CompleteMultipartUpload") == 2


def test_endpoint_dying_mid_publish_leaves_no_manifest_and_a_rerun_finishes_without_reuploading(
    moto: MotoServer, relay: S3Relay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small parts so a multipart upload is among the objects in flight when the endpoint dies.
    monkeypatch.setattr(storage, "TRANSFER", TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB,
                                                            max_concurrency=2))
    bucket = new_bucket(moto)
    sentinels = put_sentinels(moto, bucket)
    # The multipart file first, so that its upload is in flight when the endpoint dies.
    payloads = {"sh0/fr/sh0_fr.mov": os.urandom(16 * MiB)}
    payloads.update({f"sh{i}/fr/sh{i}_fr_mix.wav": os.urandom(2000 + i) for i in range(10)})
    files = delivery_files(tmp_path, payloads)
    prefix, client = S3Uri(bucket, "deliveries"), s3_client(relay.url)
    relay.die_after(UPLOADS, 5)

    with pytest.raises(StorageError) as stopped:
        publish_s3(prefix, "r1", files, OUTCOMES, {}, client)
    message = str(stopped.value)
    assert f"publishing s3://{bucket}/deliveries/r1 stopped" in message and "did not answer" in message
    assert "has no delivery.json, so the delivery is not complete" in message and "--run-id r1" in message
    assert not relay.alive

    relay.start()  # the server is back, with what it stored before
    finished = objects(moto, bucket, "deliveries/r1/")
    assert "deliveries/r1/delivery.json" not in finished and "deliveries/r1/delivery.parquet" not in finished
    assert 0 < len(finished) < len(payloads)
    assert all(entry["sha256"] == hashlib.sha256(payloads[key.removeprefix("deliveries/r1/")]).hexdigest()
               for key, entry in finished.items())

    relay.reset()
    rerun = publish_s3(prefix, "r1", files, OUTCOMES, {}, client)
    uploaded = {request.key for request in relay.of("PutObject", "CreateMultipartUpload")}
    expected = {f"deliveries/r1/{p}" for p in payloads} - set(finished)
    assert uploaded == expected | {"deliveries/r1/delivery.parquet", "deliveries/r1/delivery.json"}
    assert set(rerun.skipped) == {key.removeprefix("deliveries/r1/") for key in finished}
    assert relay.of(*WRITES)[-1].key == "deliveries/r1/delivery.json"
    complete = objects(moto, bucket, "deliveries/r1/")
    manifest = json.loads(admin(moto).get_object(Bucket=bucket, Key="deliveries/r1/delivery.json")["Body"].read())
    assert {e["path"]: e["sha256"] for e in manifest["files"]} == {
        key.removeprefix("deliveries/r1/"): entry["sha256"] for key, entry in complete.items()
        if not key.endswith(("delivery.json", "delivery.parquet"))}
    assert admin(moto).list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert_sentinels_intact(moto, bucket, sentinels)


# ---- the whole run ----------------------------------------------------------------------------------


def test_run_from_s3_to_s3_and_no_credential_reaches_any_output(
    prefect_server, moto: MotoServer, relay: S3Relay, small_samples_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture,
) -> None:
    """`dubflow validate` then `dubflow run` with an s3:// source and --out s3://, under recognisable fake
    credentials that must appear in no output, log, artifact, run record, manifest or work file."""
    caplog.set_level(logging.INFO)
    sources, deliveries = new_bucket(moto), new_bucket(moto)
    picture = (small_samples_dir / SHOT).read_bytes()
    admin(moto).put_object(Bucket=sources, Key="locked/sc01_sh010.mov", Body=picture)
    sample = pd.read_csv(small_samples_dir / "manifest.csv", dtype=str, keep_default_na=False)
    row = sample[(sample.shot_id == "sc01_sh010") & (sample.language == "fr")].iloc[0]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame([{"shot_id": "sc01_sh010", "source": f"s3://{sources}/locked/sc01_sh010.mov",
                   "lock_sha256": hashlib.sha256(picture).hexdigest(), "language": "fr", "script": row.script,
                   "speaker": row.speaker}]).to_csv(manifest, index=False)

    assert main(["validate", str(manifest), "--endpoint-url", relay.url]) == 0
    assert relay.count("GetObject") == 1
    assert main(["run", str(manifest), "--out", "s3://no-such-delivery-bucket/x", "--endpoint-url", relay.url]) == 2
    assert "bucket 'no-such-delivery-bucket' does not exist" in capsys.readouterr().err
    relay.reset()
    out = f"s3://{deliveries}/show/2024-06"
    assert main(["run", str(manifest), "--out", out, "--endpoint-url", relay.url, "--run-id", "s3run"]) == 0
    assert relay.count("GetObject") == 0  # validation fetched it: the run reads the cache
    printed = capsys.readouterr()
    assert f"delivery manifest: {out}/s3run/delivery.json" in printed.out + printed.err + caplog.text

    run_prefix = "show/2024-06/s3run/"
    stored = objects(moto, deliveries, run_prefix)
    delivery_json = admin(moto).get_object(Bucket=deliveries, Key=f"{run_prefix}delivery.json")["Body"].read()
    delivery = json.loads(delivery_json)
    pairs = [(p["shot_id"], p["language"], p["status"]) for p in delivery["pairs"]]
    assert pairs == [("sc01_sh010", "fr", "delivered")]
    assert {f"{run_prefix}{e['path']}": e["sha256"] for e in delivery["files"]} == {
        key: entry["sha256"] for key, entry in stored.items()
        if not key.endswith(("delivery.json", "delivery.parquet"))}
    assert f"{run_prefix}sc01_sh010/fr/sc01_sh010_fr.mp4" in stored
    writes = relay.of(*WRITES)
    assert {w.key for w in writes} <= set(stored) and writes[-1].key == f"{run_prefix}delivery.json"

    # The publish report, in the run's log: 10 deliverables and the review page's 9 files (page, script,
    # style, data, history, thumbnail, the original and dub proxies, the original mix).
    assert f"published {out}/s3run: 19 written" in caplog.text
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        (run,) = [r for r in client.read_flow_runs() if r.parameters.get("run_id") == "s3run"]
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        artifacts = [a for a in client.read_artifacts() if a.flow_run_id == run.id]
    assert logs and any(out in (a.data if isinstance(a.data, str) else json.dumps(a.data)) for a in artifacts)
    parquet = admin(moto).get_object(Bucket=deliveries, Key=f"{run_prefix}delivery.parquet")["Body"].read()
    recorded = [printed.out, printed.err, caplog.text, json.dumps(run.parameters), *(log.message for log in logs),
                *(json.dumps(a.data) + (a.description or "") for a in artifacts)]
    work = Path(os.environ["DUBFLOW_CACHE"]) / "work"  # the stage results: this run's and other tests'
    assert any(work.rglob("*.wav"))
    blobs = [delivery_json, parquet, *(path.read_bytes() for path in work.rglob("*") if path.is_file())]
    for secret in (FAKE_KEY_ID, FAKE_SECRET):
        assert not [text for text in recorded if secret in text]
        assert not [blob for blob in blobs if secret.encode() in blob]


# ---- the stage cache's remote -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Take:
    text: Path
    words: int


def _take(out_dir: Path, text: str) -> _Take:
    path = out_dir / "nested" / "take.txt"
    path.parent.mkdir()
    path.write_text(text)
    return _Take(path, len(text.split()))


def test_stage_results_are_shared_through_the_remote_and_checked_on_the_way_back(
    moto: MotoServer, tmp_path: Path
) -> None:
    bucket = new_bucket(moto)
    remote = f"s3://{bucket}/work"
    key = stage_key("unit", 1, text="bonjour tout le monde")
    machine_a = StageCache(tmp_path / "a", remote=remote, endpoint_url=moto.url)
    first = machine_a.result("unit", key, _Take, lambda out_dir: _take(out_dir, "bonjour tout le monde"))
    stored = objects(moto, bucket, "work/")
    assert set(stored) == {f"work/unit/{key}/nested/take.txt", f"work/unit/{key}/result.json"}
    assert all(entry["sha256"] for entry in stored.values())

    # Another machine, nothing on its disk: the result comes from the remote, not from computing.
    machine_b = StageCache(tmp_path / "b", remote=remote, endpoint_url=moto.url)
    second = machine_b.result("unit", key, _Take, lambda out_dir: pytest.fail("computed, not shared"))
    assert second.text.read_text() == first.text.read_text() and second.words == 4
    assert second.text.is_relative_to(tmp_path / "b")
    assert machine_b.counts([("unit", key)]) == CacheCounts({}, {"unit": 1})

    # An upload that never finished (no result.json) is not a result: it is computed.
    unfinished = stage_key("unit", 1, text="half")
    admin(moto).put_object(Bucket=bucket, Key=f"work/unit/{unfinished}/nested/take.txt", Body=b"half")
    machine_c = StageCache(tmp_path / "c", remote=remote, endpoint_url=moto.url)
    assert machine_c.result("unit", unfinished, _Take, lambda out_dir: _take(out_dir, "done now")).words == 2

    # A stored file changed behind dubflow's back is refused, not used.
    admin(moto).put_object(Bucket=bucket, Key=f"work/unit/{key}/nested/take.txt", Body=b"tampered",
                           Metadata={"sha256": stored[f"work/unit/{key}/nested/take.txt"]["sha256"]})
    with pytest.raises(StorageError, match="was stored as"):
        StageCache(tmp_path / "d", remote=remote, endpoint_url=moto.url).result(
            "unit", key, _Take, lambda out_dir: pytest.fail("computed"))

    with pytest.raises(CacheRemoteError, match="does not exist"):
        check_remote("s3://no-such-cache-bucket/work", moto.url)


def test_a_run_on_another_machine_reuses_every_stage_from_the_remote(
    prefect_server, moto: MotoServer, small_samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    remote = f"s3://{new_bucket(moto)}/work"
    sample = pd.read_csv(small_samples_dir / "manifest.csv", dtype=str, keep_default_na=False)
    sample = sample[(sample.shot_id == "sc01_sh010") & (sample.language == "fr")].copy()
    sample["source"] = [str(small_samples_dir / s) for s in sample.source]
    manifest = tmp_path / "manifest.csv"
    sample.to_csv(manifest, index=False)
    common = ["--cache-remote", remote, "--endpoint-url", moto.url]
    assert main(["run", str(manifest), "--out", str(tmp_path / "out"), "--run-id", "first", "--force", *common]) == 0

    monkeypatch.setenv("DUBFLOW_CACHE", str(tmp_path / "other-machine"))  # an empty disk
    caplog.clear()
    assert main(["run", str(manifest), "--out", str(tmp_path / "out"), "--run-id", "second", *common]) == 0
    assert "computed: nothing; reused: conform 1, separate 1, lipdub 1, remix 1, mux 1, subtitles 1, qc 1" in caplog.text
    first, second = (json.loads((tmp_path / "out" / run / "delivery.json").read_text()) for run in ("first", "second"))
    # The review page names its run: compared are the deliverables.
    assert [(f["path"], f["sha256"]) for f in first["files"] if f["role"] != "review"] == \
        [(f["path"], f["sha256"]) for f in second["files"] if f["role"] != "review"]
