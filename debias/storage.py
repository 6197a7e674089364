"""Where artifacts live: a local path or a URI (`s3://`, `gs://`, any scheme pyarrow.fs or fsspec resolves).

Every module that owns an artifact (curated shards, training runs, sweeps, reports) reads and writes
through these functions, so no path a user gives ever meets `pathlib` as a URI. Credentials and endpoints
come from the standard environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`,
`AWS_REGION`, `GOOGLE_APPLICATION_CREDENTIALS`), never from configs: pyarrow's S3 and GCS filesystems read
them. A URI is written as given (`s3://bucket/prefix`); a local path becomes absolute, because Ray's
workers and Tune's trials run in other working directories.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import posixpath
import uuid
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from debias.config import ConfigError

R = TypeVar("R")


def is_uri(path: str) -> bool:
    """True for `scheme://...` other than `file://` (a local path under another name)."""
    return "://" in path and not path.startswith("file://")


def absolute(path: str) -> str:
    """A local path made absolute (`~` expanded, `file://` dropped); a URI unchanged but for a trailing `/`."""
    if is_uri(path):
        return path.rstrip("/")
    if path.startswith("file://"):
        path = path[len("file://"):]
    return os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    """`base/part/...` for a local path or a URI (URIs always join with `/`)."""
    if is_uri(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def name(path: str) -> str:
    """The last component of a path or URI."""
    return posixpath.basename(path.rstrip("/")) if is_uri(path) else os.path.basename(path.rstrip(os.sep))


def parent(path: str) -> str:
    """The folder holding `path` (a URI keeps its scheme and bucket)."""
    return posixpath.dirname(path.rstrip("/")) if is_uri(path) else os.path.dirname(os.path.abspath(path))


@functools.lru_cache(maxsize=32)
def _filesystem_of(scheme_and_host: str) -> pafs.FileSystem:
    try:
        return pafs.FileSystem.from_uri(scheme_and_host)[0]
    except (pa.ArrowInvalid, ValueError, OSError) as arrow_error:  # a scheme pyarrow does not know
        try:
            import fsspec
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            return PyFileSystem(FSSpecHandler(fsspec.filesystem(scheme_and_host.split("://", 1)[0])))
        except (ImportError, ValueError) as e:  # fsspec knows no such protocol either
            raise ValueError(f"{scheme_and_host}: no filesystem for this scheme (pyarrow: {arrow_error}; "
                             f"fsspec: {e})") from None


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem that serves `path`, and the path inside it (what pyarrow and Ray Data take)."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), absolute(path)
    scheme, rest = path.split("://", 1)
    host = rest.split("/", 1)[0]
    fs = _filesystem_of(f"{scheme}://{host}")
    if isinstance(fs, pafs.PyFileSystem):  # fsspec keeps the scheme's own path form
        return fs, rest
    return fs, rest.rstrip("/")


def _info(path: str) -> pafs.FileInfo:
    fs, p = filesystem(path)
    return fs.get_file_info(p)


def exists(path: str) -> bool:
    return _info(path).type != pafs.FileType.NotFound


def is_file(path: str) -> bool:
    return _info(path).type == pafs.FileType.File


def is_dir(path: str) -> bool:
    return _info(path).type == pafs.FileType.Directory


def read_bytes(path: str) -> bytes:
    fs, p = filesystem(path)
    try:
        with fs.open_input_stream(p) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file. Atomic on a local disk (a temporary file renamed over it); on an object store a
    single PUT is atomic by itself (readers see the old object or the new one)."""
    fs, p = filesystem(path)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(p), exist_ok=True)
        tmp = os.path.join(os.path.dirname(p), f".{os.path.basename(p)}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
        return
    with fs.open_output_stream(p) as f:
        f.write(data)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_json(path: str) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1))


def write_record(path: str, record: Any) -> None:
    """A result record (a dataclass of plain data) as JSON, one key per field."""
    write_json(path, dataclasses.asdict(record))


def read_record(cls: type[R], path: str) -> R:
    """The record of type `cls` that `write_record` wrote at `path`. A file without one of its fields
    (written by another version, or not such a record) fails here, naming the file and the fields."""
    data = read_json(path)
    fields = dataclasses.fields(cls)
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path}: not a {cls.__name__} record (missing {missing}); was it written by this "
                         "version of debias?")
    return cls(**{f.name: data[f.name] for f in fields if f.name in data})


def _uri_of(path: str, inner: str) -> str:
    """The user-facing form of a path that `filesystem(path)` returned as `inner`."""
    if not is_uri(path):
        return inner
    scheme = path.split("://", 1)[0]
    return f"{scheme}://{inner}"


def list_dir(path: str) -> list[str]:
    """Sorted names of the files and folders directly in `path` ([] when it does not exist)."""
    fs, p = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def find_files(path: str, suffix: str = "") -> list[str]:
    """Sorted full paths (URIs for a URI) of the files below `path` whose names end in `suffix`."""
    fs, p = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True, allow_not_found=True))
    return sorted(_uri_of(path, i.path) for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))


def makedirs(path: str) -> None:
    fs, p = filesystem(path)
    fs.create_dir(p, recursive=True)


def delete(path: str) -> None:
    """Remove a file or a whole tree; nothing happens when it is not there."""
    fs, p = filesystem(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(p)
    elif info.type == pafs.FileType.File:
        fs.delete_file(p)


def open_input(path: str) -> io.RawIOBase:
    """A seekable binary file object (PyAV, pyarrow and torch read from it)."""
    fs, p = filesystem(path)
    return fs.open_input_file(p)


def download(path: str, local_dir: str) -> None:
    """Copy the tree at `path` into the local folder `local_dir`."""
    fs, p = filesystem(path)
    os.makedirs(local_dir, exist_ok=True)
    pafs.copy_files(p, local_dir, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


def upload(local_dir: str, path: str) -> None:
    """Copy the local folder `local_dir` to `path` (a local path or a URI)."""
    fs, p = filesystem(path)
    fs.create_dir(p, recursive=True)
    pafs.copy_files(local_dir, p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def check_storage(path: str, key: str, write: bool = True) -> None:
    """Fail before any work when `path` cannot be served: an unknown scheme, a missing bucket, no
    credentials, or (with `write`) no permission to write. The error names the config `key`."""
    if not path:
        raise ConfigError(f"{key}: empty path")
    if not is_uri(path):
        return
    try:
        fs, p = filesystem(path)
        bucket = p.split("/", 1)[0]
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise ConfigError(f"{key}: {path}: bucket '{bucket}' does not exist (or these credentials cannot see it)")
        if write:
            probe = join(path, f".debias-write-check-{uuid.uuid4().hex[:8]}")
            write_bytes(probe, b"")
            delete(probe)
    except ConfigError:
        raise
    except Exception as e:  # pyarrow raises OSError subclasses and ArrowInvalid; all mean "cannot serve"
        raise ConfigError(f"{key}: {path} cannot be used: {type(e).__name__}: {str(e).splitlines()[0]}") from None
