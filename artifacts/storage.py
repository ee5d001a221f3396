"""Storage access by URI: a local path or ``s3://bucket/prefix``, through pyarrow's filesystems.

Every part of vitrine reads and writes artifacts through these functions, so a local directory
(the default) and object storage behave the same. For S3 the endpoint comes from
``AWS_ENDPOINT_URL`` (or ``VITRINE_S3_ENDPOINT``), credentials from the standard AWS
environment variables and config files; that is how a loopback S3 server, MinIO or AWS itself
are reached without code changes.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

DEFAULT_ROOT = ".vitrine"
STORAGE_ENV = "VITRINE_STORAGE"


# The settings that point a process at the same object store as this one: what Ray workers and
# submitted jobs are given. Key values are among them only so that they can be *recognised*;
# :func:`worker_env` never passes them on.
ENV_VARS = ("AWS_ENDPOINT_URL", "VITRINE_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE")


class StorageError(RuntimeError):
    """An artifact could not be read or written; the message names the URI."""


# What object storage says when it is unreachable or overloaded, as opposed to "no such object":
# worth retrying, and never a reason to call an item bad.
_TRANSIENT = ("NETWORK_CONNECTION", "connect", "timed out", "timeout", "SLOW_DOWN", "503", "INTERNAL_FAILURE",
              "Connection reset", "UNAVAILABLE")


def is_transient(exc: BaseException) -> bool:
    """A storage error that says "try again later" (outage, throttling), not "this object is bad"."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    return isinstance(exc, (OSError, StorageError)) and any(t.lower() in str(exc).lower() for t in _TRANSIENT)


def default_root() -> str:
    """The storage root: ``$VITRINE_STORAGE`` or ``./.vitrine`` in the current directory."""
    return os.environ.get(STORAGE_ENV) or os.path.abspath(DEFAULT_ROOT)


def is_remote(uri: str) -> bool:
    # A prefix test, not urlparse: this runs once per catalogue item (60k+ per nightly run).
    head = str(uri)[:6].lower()
    return head.startswith("s3://") or head.startswith("s3a://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI or a local path, keeping the scheme."""
    uri = str(uri)
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *[p.strip("/") for p in parts])
    return os.path.join(uri, *parts)


def s3_endpoint() -> str | None:
    return os.environ.get("VITRINE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem honouring a custom endpoint (MinIO, moto, a loopback server)."""
    endpoint = s3_endpoint()
    kwargs: dict = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
        # Self-hosted endpoints rarely support virtual-host addressing.
        kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a URI; the path is what the filesystem's methods take."""
    uri = str(uri)
    parsed = urlparse(uri)
    if parsed.scheme in ("s3", "s3a"):
        return s3_filesystem(), (parsed.netloc + parsed.path).rstrip("/")
    if parsed.scheme == "file":
        return pafs.LocalFileSystem(), os.path.abspath(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise StorageError(f"unsupported storage scheme {parsed.scheme!r} in {uri!r}: use a path or s3://")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        # compression=None: pyarrow would otherwise gunzip *.gz files behind our back.
        with fs.open_input_stream(path, compression=None) as f:
            return f.read()
    except FileNotFoundError as exc:
        raise StorageError(f"not found: {uri}") from exc
    except OSError as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from exc


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object. Locally through a temporary file and a rename, so readers never
    see a partial file; S3 PUTs are atomic already."""
    fs, path = resolve(uri)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            with fs.open_output_stream(path, compression=None) as f:
                f.write(data)
    except OSError as exc:
        raise StorageError(f"cannot write {uri}: {exc}") from exc


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


class PreconditionFailed(StorageError):
    """A conditional write lost: the object changed (or appeared) after it was read."""


def _s3_client():
    import boto3
    from botocore.config import Config

    endpoint = s3_endpoint()
    # Path-style for custom endpoints, as s3_filesystem does: self-hosted stores rarely do virtual hosts.
    return boto3.client("s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                        config=Config(s3={"addressing_style": "path"} if endpoint else {}))


def _bucket_key(uri: str) -> tuple[str, str]:
    parsed = urlparse(str(uri))
    return parsed.netloc, parsed.path.lstrip("/")


def read_tagged(uri: str) -> tuple[bytes | None, str | None]:
    """An object's bytes and the tag to write against with :func:`write_bytes_if`.

    ``(None, None)`` when it does not exist. On S3 the tag is the ETag from the same GET as the
    bytes, so the pair is consistent; locally it is None (local writers serialise with a lock).
    """
    if not is_remote(uri):
        return (read_bytes(uri) if exists(uri) else None), None
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = _bucket_key(uri)
    try:
        obj = _s3_client().get_object(Bucket=bucket, Key=key)
        return obj["Body"].read(), obj["ETag"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None, None
        raise StorageError(f"cannot read {uri}: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from exc


def write_bytes_if(uri: str, data: bytes, *, tag: str | None) -> None:
    """Write an object only if it is still what :func:`read_tagged` saw (compare-and-swap).

    On S3: a PUT with ``If-Match: tag``, or ``If-None-Match: *`` when ``tag`` is None (it did not
    exist); a lost race raises :class:`PreconditionFailed`. A store that answers
    ``NotImplemented`` to conditional PUTs gets a plain PUT (the race stays open there, nothing
    else changes). Locally a plain atomic write: callers hold a lock.
    """
    if not is_remote(uri):
        write_bytes(uri, data)
        return
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = _bucket_key(uri)
    condition = {"IfMatch": tag} if tag is not None else {"IfNoneMatch": "*"}
    client = _s3_client()
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        # 409 ConditionalRequestConflict: another conditional write to the key was in flight.
        # NoSuchKey under If-Match: the object was deleted since it was read.
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or (tag is not None and code == "NoSuchKey"):
            raise PreconditionFailed(f"{uri} changed since it was read ({code})") from exc
        if code in ("NotImplemented", "501"):
            write_bytes(uri, data)
            return
        raise StorageError(f"cannot write {uri}: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"cannot write {uri}: {exc}") from exc


def list_dir(uri: str) -> list[str]:
    """Names (not paths) directly under a directory URI; empty when it does not exist."""
    fs, path = resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as exc:
        raise StorageError(f"cannot list {uri}: {exc}") from exc
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


def delete_dir(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def worker_env(environ=None) -> dict:
    """The storage settings (endpoint, region, profile) of ``environ`` (default: this process's)
    that Ray Data tasks get in their runtime_env: never a key value (:mod:`artifacts.secrets`),
    since runtime_envs show in the dashboard and the job's metadata; nodes have credentials of
    their own (a role, a named secret, the environment Ray started with)."""
    from .secrets import without_secrets

    environ = os.environ if environ is None else environ
    return without_secrets({k: environ[k] for k in ENV_VARS if environ.get(k)})


def delete_file(uri: str) -> None:
    """Remove one file; a file already gone is fine."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_file(path)


def copy_file(src: str, dst: str) -> None:
    """Copy one file without passing its bytes through this process where the storage can: a
    server-side copy within S3, a file copy on a local disk; across the two, read and write."""
    src_fs, src_path = resolve(src)
    dst_fs, dst_path = resolve(dst)
    try:
        if type(src_fs) is type(dst_fs) and (isinstance(src_fs, pafs.LocalFileSystem) or src_fs == dst_fs):
            if isinstance(dst_fs, pafs.LocalFileSystem):
                os.makedirs(os.path.dirname(dst_path), exist_ok=True)
            src_fs.copy_file(src_path, dst_path)
            return
    except FileNotFoundError as exc:
        raise StorageError(f"not found: {src}") from exc
    except OSError as exc:
        raise StorageError(f"cannot copy {src} to {dst}: {exc}") from exc
    write_bytes(dst, read_bytes(src))


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copy a local directory tree to a URI (a plain copy when the URI is local)."""
    fs, path = resolve(uri)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            shutil.copytree(local_dir, path, dirs_exist_ok=True)
        else:
            pafs.copy_files(str(local_dir), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    except OSError as exc:
        raise StorageError(f"cannot upload {local_dir} to {uri}: {exc}") from exc


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy a directory URI into ``local_dir`` and return it."""
    fs, path = resolve(uri)
    local_dir = Path(local_dir)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise StorageError(f"not a directory: {uri}")
    try:
        pafs.copy_files(path, str(local_dir), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except OSError as exc:
        raise StorageError(f"cannot download {uri}: {exc}") from exc
    return local_dir


class local_copy:
    """Context manager: a local directory holding the contents of ``uri``.

    Local URIs are used in place; remote ones are downloaded into a temporary directory that is
    removed on exit. Keras and hnswlib need real files, so readers of remote artifacts go
    through this.
    """

    def __init__(self, uri: str):
        self.uri = str(uri)
        self._tmp: str | None = None

    def __enter__(self) -> Path:
        if not is_remote(self.uri):
            path = resolve(self.uri)[1]
            if not os.path.isdir(path):
                raise StorageError(f"not a directory: {self.uri}")
            return Path(path)
        self._tmp = tempfile.mkdtemp(prefix="vitrine-")
        return download_dir(self.uri, self._tmp)

    def __exit__(self, *exc) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
