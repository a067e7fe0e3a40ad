# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""A small JSON HTTP client for the Triton internal APIs (SAPI, IMGAPI, VMAPI).

One concept: talk HTTP+JSON to a restify service and turn every way that can
go wrong into one exception type, :class:`ApiError`, whose text says what was
expected and what was found:

* the API answered with an error status: ``code``/``message`` from the
  restify error body ``{"code", "message", "errors"?}``, plus the HTTP status
  and ``x-request-id``;
* the API answered with a body that is not JSON (``code="MalformedResponse"``);
* the API could not be reached or timed out (``code="ConnectionError"`` /
  ``"Timeout"``, ``status=None``).

Every call has a timeout (connect, read). Idempotent calls (GET, HEAD, PUT,
DELETE, or any call made with ``idempotent=True``) are retried on HTTP 503
and on connection errors, with a short exponential back-off. Other calls are
sent once: a POST that timed out may have been applied.

Only the standard library, ``ansible.module_utils`` and ``requests`` (an
optional import, see ``HAS_REQUESTS``) are used, so AnsiballZ can ship this.
"""
from __future__ import annotations

import json
import re
import time
import traceback

REQUESTS_IMP_ERR = None
try:
    import requests
    HAS_REQUESTS = True
except ImportError:  # pragma: no cover - exercised only without requests
    requests = None
    REQUESTS_IMP_ERR = traceback.format_exc()
    HAS_REQUESTS = False

IDEMPOTENT_METHODS = frozenset(("GET", "HEAD", "PUT", "DELETE", "OPTIONS"))
DEFAULT_TIMEOUT = 30
DEFAULT_RETRIES = 3
DEFAULT_RETRY_DELAY = 0.5
USER_AGENT = "manta.ops/0.1 (python-requests)"


class ApiError(Exception):
    """A failed API call.

    ``status`` is the HTTP status (None when no answer arrived), ``code`` and
    ``api_message`` come from the error body (or describe the transport
    failure), ``expected`` says what the caller wanted.
    """

    def __init__(self, service, method, path, message=None, status=None, code=None,
                 api_message=None, request_id=None, body=None, errors=None, expected=None):
        self.service = service
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.api_message = api_message
        self.request_id = request_id
        self.body = body
        self.errors = errors or []
        self.expected = expected
        super().__init__(message or self._compose())

    def _compose(self):
        where = f"{self.service} {self.method} {self.path}"
        if self.status is None:
            found = f"{self.code or 'error'}: {self.api_message}"
        else:
            found = f"HTTP {self.status}"
            if self.code:
                found += f" {self.code}"
            if self.api_message:
                found += f": {self.api_message}"
        if self.errors:
            found += " (errors: " + "; ".join(_fmt_field_error(e) for e in self.errors) + ")"
        text = f"{where}: expected {self.expected or 'success'}, got {found}"
        if self.request_id:
            text += f" [x-request-id {self.request_id}]"
        return text

    @property
    def not_found(self):
        return self.status == 404 or self.code == "ResourceNotFound"

    def has_field_error(self, field, code):
        """True when the restify ``errors`` list names ``field`` with ``code``."""
        return any(isinstance(e, dict) and e.get("field") == field and e.get("code") == code
                   for e in self.errors)

    def to_result(self):
        """The error as plain data for ``fail_json(**err.to_result())``."""
        return {
            "api_status": self.status,
            "api_code": self.code,
            "api_message": self.api_message,
            "api_errors": self.errors,
            "request_id": self.request_id,
        }


def _fmt_field_error(e):
    if isinstance(e, dict):
        msg = (": " + e["message"]) if e.get("message") else ""
        return "{0} {1}{2}".format(e.get("field", "?"), e.get("code", "?"), msg)
    return str(e)


class ApiClient:
    """JSON client for one API endpoint (``base_url``)."""

    service = "API"
    extra_headers = {}

    def __init__(self, base_url, token=None, validate_certs=True, ca_path=None,
                 timeout=DEFAULT_TIMEOUT, retries=DEFAULT_RETRIES,
                 retry_delay=DEFAULT_RETRY_DELAY, service=None, session=None):
        if not HAS_REQUESTS:
            raise RuntimeError("the python 'requests' library is required")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"API URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.retry_delay = retry_delay
        if service:
            self.service = service
        self.session = session or requests.Session()
        self.session.headers.update({
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        })
        self.session.headers.update(self.extra_headers)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        # Passed on every request, not only set on the session: requests lets
        # REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE from the environment override a
        # session-level verify (so ca_path and validate_certs=false would be
        # ignored wherever those variables are set, e.g. in many EEs).
        if not validate_certs:
            self.verify = False
            try:  # the module warns once instead of urllib3 on every call
                import urllib3
                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            except (ImportError, AttributeError):  # pragma: no cover
                pass
        elif ca_path:
            self.verify = ca_path
        else:
            self.verify = True
        self.session.verify = self.verify

    # ------------------------------------------------------------------ core
    def _url(self, path):
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def request(self, method, path, params=None, body=None, data=None, headers=None,
                expect=(200, 201, 202, 204), idempotent=None, timeout=None, raw=False,
                stream=False):
        """Send one request and return the decoded JSON (or the response when
        ``raw``). Raises :class:`ApiError` for anything other than ``expect``.
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        attempts = 1 + (self.retries if idempotent else 0)
        shown = path
        if params:
            shown += "?" + "&".join(f"{k}={v}" for k, v in params.items())
        hdrs = dict(headers or {})
        kwargs = {}
        if body is not None:
            kwargs["data"] = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        elif data is not None:
            kwargs["data"] = data
        to = timeout if timeout is not None else self.timeout
        if not isinstance(to, tuple):
            to = (min(float(to), float(self.timeout) if self.timeout else float(to)), float(to))
        expected = "HTTP " + "/".join(str(s) for s in expect)
        last = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.retry_delay * (2 ** (attempt - 1)))
                if hasattr(data, "seek"):
                    data.seek(0)
            try:
                resp = self.session.request(method, self._url(path), params=params,
                                            headers=hdrs, timeout=to, stream=stream, verify=self.verify,
                                            **kwargs)
            except requests.exceptions.Timeout as exc:
                last = ApiError(self.service, method, shown, status=None, code="Timeout",
                                api_message=f"no answer within {to[1]:g}s ({exc})",
                                expected=expected)
                continue
            except requests.exceptions.SSLError as exc:
                # Certificate problems do not heal by retrying.
                raise ApiError(self.service, method, shown, status=None, code="SSLError",
                               api_message=str(exc), expected=expected) from None
            except requests.exceptions.RequestException as exc:
                last = ApiError(self.service, method, shown, status=None, code="ConnectionError",
                                api_message=f"cannot reach {self.base_url} ({_short(exc)})",
                                expected=expected)
                continue
            if resp.status_code == 503 and attempt + 1 < attempts:
                last = self._error(resp, method, shown, expected)
                resp.close()
                continue
            if resp.status_code not in expect:
                raise self._error(resp, method, shown, expected)
            if raw:
                return resp
            return self._decode(resp, method, shown, expected)
        raise last

    def _decode(self, resp, method, shown, expected):
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ApiError(self.service, method, shown, status=resp.status_code,
                           code="MalformedResponse",
                           api_message="response body is not JSON: " + _snippet(resp.content),
                           request_id=resp.headers.get("x-request-id"),
                           expected=expected + " with a JSON body") from None

    def _error(self, resp, method, shown, expected):
        code = msg = None
        errors = []
        body = None
        try:
            body = resp.json()
        except ValueError:
            msg = "(non-JSON error body) " + _snippet(resp.content)
        if isinstance(body, dict):
            code = body.get("code")
            msg = body.get("message")
            errors = body.get("errors") or []
        elif body is not None:
            msg = "(unexpected error body) " + _snippet(resp.content)
        return ApiError(self.service, method, shown, status=resp.status_code, code=code,
                        api_message=msg, request_id=resp.headers.get("x-request-id"),
                        body=body, errors=errors, expected=expected)

    # --------------------------------------------------------------- helpers
    def get(self, path, params=None, **kw):
        kw.setdefault("expect", (200,))
        return self.request("GET", path, params=params, **kw)

    def get_or_none(self, path, params=None, **kw):
        """GET that returns None on 404 / ResourceNotFound."""
        try:
            return self.get(path, params=params, **kw)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    def get_list(self, path, params=None, **kw):
        """GET a list endpoint; a 404 is treated as an empty list (SAPI docs)."""
        try:
            res = self.get(path, params=params, **kw)
        except ApiError as exc:
            if exc.status == 404:
                return []
            raise
        if res is None:
            return []
        if not isinstance(res, list):
            raise ApiError(self.service, "GET", path, status=200, code="MalformedResponse",
                           api_message="expected a JSON array, got " + type(res).__name__,
                           expected="a JSON array")
        return res

    def ping(self):
        self.request("GET", "/ping", expect=(200,))
        return True


def _snippet(content, limit=200):
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    content = content.strip()
    return repr(content[:limit] + ("..." if len(content) > limit else ""))


def _short(exc):
    """The innermost reason of a requests/urllib3 connection error."""
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] [^'\"\])]+", text)
    if m:
        return m.group(0).strip()
    for marker in ("Name or service not known", "timed out", "Connection refused", "Connection reset"):
        if marker in text:
            return marker
    return text[:200]


# ------------------------------------------------------------ module glue
# Connection options shared by every module (documented in the doc fragment
# manta.ops.triton_api). Each service URL has its own env fallback so that an
# AWX credential type can inject them.
ENV = {
    "sapi_url": "MANTA_SAPI_URL",
    "imgapi_url": "MANTA_IMGAPI_URL",
    "vmapi_url": "MANTA_VMAPI_URL",
    "api_token": "MANTA_API_TOKEN",
}


def triton_argument_spec(*services):
    """A fresh argument_spec dict for the connection options of ``services``
    (any of ``'sapi'``, ``'imgapi'``, ``'vmapi'``) plus the common options."""
    from ansible.module_utils.basic import env_fallback

    spec = {
        "api_token": dict(type="str", no_log=True, fallback=(env_fallback, [ENV["api_token"]])),
        "validate_certs": dict(type="bool", default=True),
        "ca_path": dict(type="path"),
        "api_timeout": dict(type="float", default=DEFAULT_TIMEOUT),
        "api_retries": dict(type="int", default=DEFAULT_RETRIES),
    }
    for svc in services:
        key = f"{svc}_url"
        spec[key] = dict(type="str", fallback=(env_fallback, [ENV[key]]))
    return spec


def require_url(module, svc, why=None):
    """The ``<svc>_url`` option, or fail naming the option and its env var."""
    key = f"{svc}_url"
    url = module.params.get(key)
    if not url:
        module.fail_json(msg="{0} is required{1}: set the option {0} or the environment variable {2}"
                         .format(key, f" ({why})" if why else "", ENV[key]))
    if not url.startswith(("http://", "https://")):
        module.fail_json(msg=f"{key} must be an http:// or https:// URL, got {url!r}")
    return url


def client_kwargs(module):
    p = module.params
    if p["api_timeout"] <= 0:
        module.fail_json(msg=f"api_timeout must be a positive number of seconds, got {p['api_timeout']}")
    if p["api_retries"] < 0:
        module.fail_json(msg=f"api_retries must be >= 0, got {p['api_retries']}")
    if not p["validate_certs"]:
        module.warn("validate_certs=false: HTTPS certificates of the Triton APIs are not verified")
    return dict(token=p.get("api_token"), validate_certs=p["validate_certs"],
                ca_path=p.get("ca_path"), timeout=p["api_timeout"], retries=p["api_retries"])


def check_requests(module):
    if not HAS_REQUESTS:
        from ansible.module_utils.basic import missing_required_lib
        module.fail_json(msg=missing_required_lib("requests"), exception=REQUESTS_IMP_ERR)


def fail_api(module, exc, msg_prefix=None, **result):
    """fail_json for an ApiError (or another exception), keeping the API's
    code and message in the result."""
    if isinstance(exc, ApiError):
        result.update(exc.to_result())
    msg = str(exc)
    if msg_prefix:
        msg = f"{msg_prefix}: {msg}"
    result.setdefault("changed", False)
    module.fail_json(msg=msg, **result)
