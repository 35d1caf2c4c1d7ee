"""Where zarr stores live: local paths and URLs read through fsspec.

A location is a local path (a ``file://`` URL is one too) or a URL
(``s3://``, ``gs://``, ``https://``, any fsspec scheme): :func:`open_store`
gives zarr's ``LocalStore`` or ``FsspecStore`` for it, :func:`open_node` the
array or group there, read-only, after checking that the URL's bucket
answers (:func:`check_reachable`). Credentials and endpoints come from the
environment (for ``s3://``: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``, read by botocore) or from the
fsspec options a pipeline sets with :func:`storage_options`. Every failure to
reach a store is a ValueError that names the fix (:func:`remote_errors`).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from urllib.parse import urlparse

import fsspec
import zarr

#: fsspec URL schemes that can only be read.
READ_ONLY_SCHEMES = ("http", "https")
#: The package fsspec needs for a scheme, for the error when it is missing.
SCHEME_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp",
                   "https": "aiohttp", "az": "adlfs", "abfs": "adlfs"}  # fmt: skip
#: Seconds to wait for an endpoint when a store is first reached, so an
#: unreachable one fails at once instead of after minutes of retries.
CONNECT_SECONDS = 5
#: fsspec options making that first call fail fast, per scheme (s3fs: botocore's config).
FAIL_FAST = {"s3": {"connect_timeout": CONNECT_SECONDS, "retries": {"total_max_attempts": 1}}}

#: fsspec options per URL prefix, set by :func:`storage_options` (longest prefix wins).
_OPTIONS: dict[str, dict] = {}


def is_url(location) -> bool:
    """Whether ``location`` is a URL read through fsspec (``s3://``, ``gs://``, ``https://``).

    A ``file://`` URL is a local path (:func:`normalize_location`).
    """
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def normalize_location(location: str | os.PathLike) -> str:
    """A URL without trailing slashes, or a local path (``file://`` URLs unwrapped)."""
    location = os.fspath(location)
    if location.startswith("file://"):
        return urlparse(location).path
    return location.rstrip("/") if is_url(location) else location


def url_scheme(url: str) -> str:
    """``s3`` for ``s3://bucket/key``."""
    return url.split("://", 1)[0].lower()


@contextlib.contextmanager
def storage_options(options: dict[str, dict | None]) -> Iterator[None]:
    """Use fsspec ``options[prefix]`` for every URL under ``prefix`` while the body runs.

    A pipeline's ``[input]`` and ``[output]`` ``storage_options`` tables are
    set here, keyed by their locations; anything else (``KMeans().fit(url)``)
    gets fsspec's defaults, which read credentials and endpoint from the
    environment (for ``s3://``: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``).
    """
    previous = dict(_OPTIONS)
    _OPTIONS.update({normalize_location(k): v for k, v in options.items() if v and is_url(k)})
    try:
        yield
    finally:
        _OPTIONS.clear()
        _OPTIONS.update(previous)


def options_for(url: str) -> dict:
    """The fsspec options of ``url``: those of the longest prefix set, else none."""
    prefixes = [p for p in _OPTIONS if url == p or url.startswith((p + "/", p + "."))]
    return copy.deepcopy(_OPTIONS[max(prefixes, key=len)]) if prefixes else {}


def filesystem(url: str, *, fail_fast: bool = False) -> tuple[fsspec.AbstractFileSystem, str]:
    """The synchronous fsspec file system of ``url`` and the path in it.

    ``fail_fast`` gives one that waits :data:`CONNECT_SECONDS` for the
    endpoint and does not retry, for the first call to a store. Listing
    caches are dropped, so what it reports is what the store holds now.

    Raises
    ------
    ValueError
        The scheme's package (e.g. gcsfs for ``gs://``) is not installed.
    """
    options = options_for(url)
    scheme = url_scheme(url)
    if fail_fast and scheme in FAIL_FAST:
        config = {**options.get("config_kwargs", {}), **FAIL_FAST[scheme]}
        options = {**options, "config_kwargs": config}
    try:
        fs, path = fsspec.url_to_fs(url, **options)
    except ImportError:
        package = SCHEME_PACKAGES.get(scheme, f"the fsspec implementation of {scheme}://")
        raise ValueError(
            f"{scheme}:// URLs need the package {package}: pip install {package}."
        ) from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot open {url}: {' '.join(str(exc).split())}; check the URL "
                         "and its storage_options.") from None  # fmt: skip
    fs.invalidate_cache()
    return fs, path


def bucket_of(url: str) -> str:
    """The bucket (or host) part of an object-store URL: ``s3://bucket``."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def check_reachable(url: str) -> None:
    """Raise a ValueError naming the fix unless ``url``'s bucket answers.

    One call, with a short timeout: a wrong bucket, missing credentials or an
    unreachable endpoint is reported before any work starts.
    """
    if url_scheme(url) in READ_ONLY_SCHEMES:
        return  # no bucket to ask (a prefix is no object there): the first read reports
    fs, _ = filesystem(url, fail_fast=True)
    probed = bucket_of(url)
    with remote_errors(url, probed):
        fs.info(probed)


@contextlib.contextmanager
def remote_errors(url: str, probed: str | None = None) -> Iterator[None]:
    """Turn a failure to reach ``url`` (at ``probed``, e.g. its bucket) into a ValueError
    that names the fix."""
    try:
        yield
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(_remote_failure(url, exc, probed or url)) from None


def endpoint_of(url: str) -> tuple[str | None, str]:
    """The endpoint that serves ``url`` and where it was set: for ``s3://`` the
    ``endpoint_url`` of its storage_options, else ``AWS_ENDPOINT_URL``, else
    (None, "") for AWS itself; for other schemes the URL's host."""
    if url_scheme(url) != "s3":
        return bucket_of(url), "the URL"
    options = options_for(url)
    given = options.get("endpoint_url") or options.get("client_kwargs", {}).get("endpoint_url")
    if given:
        return given, "storage_options"
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    return (endpoint, "AWS_ENDPOINT_URL") if endpoint else (None, "")


def connection_failure(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain that says an endpoint did not answer (refused,
    reset, unreachable, timed out: botocore's, aiohttp's or Python's), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        names = [k.__name__ for k in type(exc).__mro__]
        if isinstance(exc, (ConnectionError, TimeoutError)) or any(
            "Connect" in name or "Timeout" in name for name in names
        ):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _remote_failure(url: str, exc: Exception, probed: str) -> str:
    """What went wrong reaching ``url`` and what to do, from fsspec's (or botocore's) error."""
    name, detail = type(exc).__name__, " ".join(str(exc).split())
    endpoint, source = endpoint_of(url) if url_scheme(url) == "s3" else (None, "")
    at = f" at {endpoint} ({source})" if endpoint else ""
    if isinstance(exc, FileNotFoundError):
        what = "bucket" if probed != url else "path"
        return (f"{probed} does not exist{at} (no such {what}, or these credentials cannot "
                "see it); check the URL.")  # fmt: skip
    if isinstance(exc, PermissionError):
        return f"access to {url} is denied ({detail}); check the credentials' permissions."
    if "Credentials" in name or "credentials" in detail.lower():
        hint = ("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" if url_scheme(url) == "s3"
                else "the credentials")  # fmt: skip
        return (f"no credentials to access {url}; set {hint} in the environment "
                "(or a pipeline's storage_options).")  # fmt: skip
    if connection_failure(exc) is not None:
        return (f"cannot reach the storage endpoint of {url}{at} ({detail}); check the "
                "endpoint and the network.")  # fmt: skip
    return f"cannot access {url} ({name}: {detail}); check the URL and the credentials."


def open_store(location: str | os.PathLike, *, read_only: bool = True) -> zarr.abc.store.Store:
    """The zarr store at a local path or URL: a ``LocalStore`` or an ``FsspecStore``."""
    location = normalize_location(location)
    if not is_url(location):
        return zarr.storage.LocalStore(os.path.abspath(location), read_only=read_only)
    filesystem(location)  # a missing package is a clear error
    return zarr.storage.FsspecStore.from_url(
        location, storage_options=options_for(location), read_only=read_only
    )


def open_node(location: str | os.PathLike) -> zarr.Array | zarr.Group:
    """The zarr array or group at a local path or URL, read-only.

    A URL's bucket is reached first (:func:`check_reachable`).

    Raises
    ------
    ValueError
        Nothing there, not a zarr store, or (URL) unreachable.
    """
    location = normalize_location(location)
    if is_url(location):
        check_reachable(location)
    elif not os.path.exists(location):
        raise ValueError(f"zarr store {location!r} does not exist; check the path.")
    try:
        return zarr.open(store=open_store(location), mode="r")
    except Exception as exc:  # zarr raises several types for what is not a store
        if isinstance(exc, FileNotFoundError) and not location_exists(location):
            raise ValueError(f"zarr store {location!r} does not exist; check the path.") from None
        if is_url(location) and not isinstance(exc, zarr.errors.BaseZarrError):
            raise ValueError(_remote_failure(location, exc, location)) from None
        raise ValueError(f"{location!r} is not a readable zarr store: {exc}") from None


def location_exists(location: str | os.PathLike) -> bool:
    """Whether a local path, or an object or prefix at a URL, exists."""
    location = normalize_location(location)
    if not is_url(location):
        return os.path.lexists(location)
    fs, path = filesystem(location)
    with remote_errors(location):
        return fs.exists(path)


def read_location(location: str | os.PathLike, size: int | None = None) -> bytes | None:
    """The bytes (the first ``size`` if given) of a local file or an object; None if none."""
    location = normalize_location(location)
    if not is_url(location):
        try:
            with open(location, "rb") as f:
                return f.read(-1 if size is None else size)
        except (FileNotFoundError, IsADirectoryError):
            return None
    fs, path = filesystem(location)
    with remote_errors(location):
        try:
            return fs.cat_file(path, start=0, end=size)
        except FileNotFoundError:
            return None
