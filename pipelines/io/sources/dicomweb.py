"""DICOMweb (QIDO-RS search, WADO-RS retrieve) with retries, timeouts and bounded concurrency.

References: `{base}/studies/{S}`, `{base}/studies/{S}/series/{SE}`, `…/series/{SE}/instances/{I}`
(parsed by medprep.transforms.dicomweb_ref.parse_ref).
Authentication: Google Cloud Healthcare API stores (host healthcare.googleapis.com) use
Application Default Credentials with the cloud-healthcare scope (tokens refreshed by
google-auth, never logged); other servers take basic auth from MEDPREP_DICOMWEB_USER /
MEDPREP_DICOMWEB_PASSWORD or a bearer token from MEDPREP_DICOMWEB_TOKEN.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from dataclasses import dataclass

import requests

from medprep.transforms.dicomweb_ref import DicomWebRef
from medprep.transforms.errors import ItemError

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter on 429/5xx, timeouts and connection errors."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 20.0
    timeout: float = 60.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """MEDPREP_DICOMWEB_ATTEMPTS, _BASE_DELAY, _TIMEOUT override the defaults (workers inherit them)."""
        env = os.environ.get
        return cls(
            int(env("MEDPREP_DICOMWEB_ATTEMPTS", cls.attempts)),
            float(env("MEDPREP_DICOMWEB_BASE_DELAY", cls.base_delay)),
            cls.max_delay,
            float(env("MEDPREP_DICOMWEB_TIMEOUT", cls.timeout)),
        )


def _session(base: str) -> requests.Session:
    if "healthcare.googleapis.com" in base:
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-healthcare"])
        return AuthorizedSession(credentials)
    session = requests.Session()
    user, password = os.environ.get("MEDPREP_DICOMWEB_USER"), os.environ.get("MEDPREP_DICOMWEB_PASSWORD")
    token = os.environ.get("MEDPREP_DICOMWEB_TOKEN")
    if user:
        session.auth = (user, password or "")
    elif token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


_retried = [0]  # requests retried in this process (all servers), read by the DoFns for Beam metrics


def retries_so_far() -> int:
    """Requests retried so far in this process (throttling and transient failures)."""
    return _retried[0]


class DicomWebClient:
    """One server's client: a pooled session, at most `concurrency` requests in flight, retries."""

    def __init__(self, base: str, policy: RetryPolicy = RetryPolicy(), concurrency: int = 4):
        self.base, self.policy = base, policy
        self._session = _session(base)
        self._slots = threading.BoundedSemaphore(concurrency)
        self.retries = 0  # requests retried (throttling and transient failures), for metrics

    def _get(self, url: str, accept: str, limit: int | None = None) -> requests.Response:
        last = ""
        for attempt in range(self.policy.attempts):
            try:
                with self._slots:
                    response = self._session.get(
                        url, headers={"Accept": accept}, timeout=self.policy.timeout, stream=limit is not None
                    )
                    if limit is not None and response.status_code < 400:
                        _read_body(response, limit, url)
                if response.status_code not in RETRY_STATUS:
                    if response.status_code == 404:
                        raise ItemError("read", f"not found on the DICOMweb server: {url}")
                    if response.status_code >= 400:
                        raise ItemError("read", f"DICOMweb server answered HTTP {response.status_code} for {url}")
                    return response
                last = f"HTTP {response.status_code}"
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = type(exc).__name__
            self.retries += 1
            _retried[0] += 1
            if attempt + 1 < self.policy.attempts:
                time.sleep(random.uniform(0, min(self.policy.max_delay, self.policy.base_delay * 2**attempt)))
        raise ItemError("read", f"DICOMweb request failed after {self.policy.attempts} attempts ({last}): {url}")

    def probe(self, timeout: float = 15.0) -> str:
        """'' when the server answers a one-study QIDO search, else why not, in one line (start-up check)."""
        url = f"{self.base}/studies?limit=1"
        try:  # streamed and closed unread: a server ignoring `limit` may answer with every study it has
            response = self._session.get(
                url, headers={"Accept": "application/dicom+json"}, timeout=timeout, stream=True
            )
            response.close()
        except requests.Timeout:
            return f"no answer within {timeout:g} s"
        except requests.ConnectionError as exc:
            reason = str(exc.args[0] if exc.args else exc)
            return "connection refused" if "refused" in reason.lower() else f"cannot connect ({type(exc).__name__})"
        except Exception as exc:  # bad URL, redirects, credentials that cannot be found (Google ADC)...
            return f"{type(exc).__name__}: {exc}"
        if response.status_code in (401, 403):
            return f"HTTP {response.status_code}: the server refused the credentials (check the user/password or token)"
        if response.status_code == 404:
            return f"HTTP 404 for a QIDO-RS search ({url.split('?')[0]}): is this a DICOMweb root?"
        return ""  # it answers; throttling and server errors are retried per request later

    def search_instances(self, ref: DicomWebRef) -> list[DicomWebRef]:
        """QIDO-RS: the instances of a study or series, as instance references (sorted by UID)."""
        url = ref.url() + "/instances"
        items = self._get(url, "application/dicom+json").json() or []
        out = []
        for item in items:
            series = (item.get("0020000E", {}).get("Value") or [ref.series])[0]
            sop = (item.get("00080018", {}).get("Value") or [None])[0]
            if sop:
                out.append(DicomWebRef(ref.base, ref.study, series, sop))
        return sorted(out, key=lambda r: (r.series or "", r.instance or ""))

    def search(self, level: str, query: dict) -> list[dict]:
        """QIDO-RS search at 'studies', 'series' or 'instances' level with attribute filters."""
        params = "&".join(f"{k}={requests.utils.quote(str(v))}" for k, v in sorted(query.items()))
        url = f"{self.base}/{level}" + (f"?{params}" if params else "")
        return self._get(url, "application/dicom+json").json() or []

    def metadata(self, ref: DicomWebRef) -> list[dict]:
        """WADO-RS metadata (DICOM JSON, no pixels) of a study, series or instance."""
        return self._get(ref.url() + "/metadata", "application/dicom+json").json() or []

    def retrieve_instance(self, ref: DicomWebRef, limit: int | None = None) -> bytes:
        """WADO-RS: one instance as a DICOM Part 10 file, in its stored transfer syntax (at most `limit` bytes)."""
        response = self._get(ref.url(), 'multipart/related; type="application/dicom"; transfer-syntax=*', limit)
        return _first_part(response)


def _read_body(response: requests.Response, limit: int, url: str) -> None:
    """Read a streamed response body, refusing it past `limit` bytes (declared or received)."""
    declared = int(response.headers.get("Content-Length") or 0)
    if declared > limit:
        response.close()
        raise ItemError("read", f"{url} is {declared:,} bytes, above --max_input_bytes ({limit:,}); not read")
    chunks, size = [], 0
    for chunk in response.iter_content(1 << 20):
        size += len(chunk)
        if size > limit:
            response.close()
            raise ItemError("read", f"{url} sent more than --max_input_bytes ({limit:,}); not read")
        chunks.append(chunk)
    response._content = b"".join(chunks)


def _first_part(response: requests.Response) -> bytes:
    ctype = response.headers.get("Content-Type", "")
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    if not m:
        return response.content
    boundary = b"--" + m.group(1).encode()
    body = response.content
    start = body.find(boundary)
    if start < 0:
        raise ItemError("read", "malformed multipart response from the DICOMweb server")
    header_end = body.find(b"\r\n\r\n", start)
    end = body.find(b"\r\n" + boundary, header_end)
    if header_end < 0 or end < 0:
        raise ItemError("read", "truncated multipart response from the DICOMweb server")
    return body[header_end + 4 : end]


def wsi_web_client(base: str):
    """A wsidicom web client over this server with our authenticated session (for DICOM WSI series)."""
    import warnings

    from dicomweb_client.api import DICOMwebClient
    from wsidicom import WsiDicomWebClient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WsiDicomWebClient(DICOMwebClient(url=base, session=_session(base)))


_clients: dict = {}
_clients_lock = threading.Lock()


def client_for(base: str) -> DicomWebClient:
    """The per-process client of a server (sessions are reused, never shared across processes)."""
    key = (os.getpid(), base)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = DicomWebClient(base, RetryPolicy.from_env())
        return _clients[key]
