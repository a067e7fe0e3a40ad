"""module_utils/http_api.py against a tiny throwaway HTTP(S) server that
answers what each test scripts (a fault injector, not a model of any API):
error bodies, 500s, malformed JSON, 503 then success, slow answers, closed
ports, self-signed certificates."""
import datetime
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ansible_collections.manta.ops.plugins.module_utils import http_api as H
from ansible_collections.manta.ops.plugins.module_utils.sapi import SapiClient


class FaultServer:
    """Answers each request with ``script(method, path, headers, body)`` ->
    ``(status, body, headers)``; ``body`` is bytes, str, or JSON-able. Records
    every request in ``requests``. Use as a context manager."""

    def __init__(self, script, tls_context=None):
        self.script = script
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                outer.requests.append({"method": self.command, "path": self.path,
                                       "headers": dict(self.headers), "body": body})
                status, out, hdrs = outer.script(self.command, self.path, self.headers, body)
                if out is None:
                    data = b""
                elif isinstance(out, bytes):
                    data = out
                elif isinstance(out, str):
                    data = out.encode()
                else:
                    data = json.dumps(out).encode()
                self.send_response(status)
                for k, v in (hdrs or {}).items():
                    self.send_header(k, v)
                if "Content-Type" not in (hdrs or {}):
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls_context is not None:
            self.httpd.socket = tls_context.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls_context else "http"
        host = "localhost" if tls_context else "127.0.0.1"
        self.url = f"{scheme}://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def const(status, body=None, headers=None):
    return lambda m, p, h, b: (status, body, headers)


def sequence(*answers):
    answers = list(answers)

    def script(m, p, h, b):
        return answers.pop(0) if len(answers) > 1 else answers[0]
    return script


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def client(url, **kw):
    kw.setdefault("retry_delay", 0.01)
    return H.ApiClient(url, service="TESTAPI", **kw)


def test_json_answer_and_204():
    with FaultServer(sequence((200, {"a": 1}, None), (204, None, None))) as srv:
        c = client(srv.url)
        assert c.get("/x") == {"a": 1}
        assert c.request("DELETE", "/x") is None


def test_restify_error_body_becomes_apierror_with_code_message_request_id():
    body = {"code": "InternalError", "message": "moray is down"}
    with FaultServer(const(500, body, {"x-request-id": "req-42"})) as srv:
        with pytest.raises(H.ApiError) as exc:
            client(srv.url).get("/applications", params={"name": "manta"}, expect=(200,))
    e = exc.value
    assert (e.status, e.code, e.api_message, e.request_id) == (500, "InternalError", "moray is down", "req-42")
    assert str(e) == ("TESTAPI GET /applications?name=manta: expected HTTP 200, got HTTP 500 "
                      "InternalError: moray is down [x-request-id req-42]")
    assert e.to_result()["api_code"] == "InternalError"


def test_validation_errors_are_listed():
    body = {"code": "ValidationFailed", "message": "Invalid Parameters",
            "errors": [{"field": "alias", "code": "Duplicate", "message": "Already exists"}]}
    with FaultServer(const(409, body)) as srv:
        with pytest.raises(H.ApiError) as exc:
            client(srv.url).request("POST", "/vms/x", params={"action": "update"}, body={"alias": "a"})
    assert exc.value.has_field_error("alias", "Duplicate")
    assert not exc.value.has_field_error("alias", "Invalid")
    assert "alias Duplicate: Already exists" in str(exc.value)


def test_non_json_error_body_is_quoted():
    with FaultServer(const(502, "<html>Bad Gateway</html>", {"Content-Type": "text/html"})) as srv:
        with pytest.raises(H.ApiError) as exc:
            client(srv.url).get("/x")
    assert exc.value.status == 502 and "Bad Gateway" in str(exc.value)


def test_malformed_json_success_body():
    with FaultServer(const(200, b'{"uuid": "abc", ')) as srv:
        with pytest.raises(H.ApiError) as exc:
            client(srv.url).get("/applications/abc")
    e = exc.value
    assert e.code == "MalformedResponse" and e.status == 200
    assert "response body is not JSON" in str(e) and '{"uuid": "abc",' in str(e)


def test_get_retries_503_then_succeeds():
    with FaultServer(sequence((503, {"code": "ServiceUnavailable", "message": "busy"}, None),
                              (503, {"code": "ServiceUnavailable", "message": "busy"}, None),
                              (200, [1], None))) as srv:
        assert client(srv.url, retries=3).get("/x") == [1]
        assert len(srv.requests) == 3


def test_get_gives_up_after_retries_with_the_last_503():
    with FaultServer(const(503, {"code": "ServiceUnavailable", "message": "not yet"})) as srv:
        with pytest.raises(H.ApiError) as exc:
            client(srv.url, retries=2).get("/x")
        assert len(srv.requests) == 3
    assert exc.value.status == 503 and exc.value.code == "ServiceUnavailable"


def test_post_is_not_retried():
    with FaultServer(const(503, {"code": "ServiceUnavailable", "message": "busy"})) as srv:
        with pytest.raises(H.ApiError):
            client(srv.url, retries=3).request("POST", "/instances", body={})
        assert len(srv.requests) == 1


def test_unreachable_is_connection_error_after_retries():
    c = client(f"http://127.0.0.1:{closed_port()}", retries=2)
    t0 = time.monotonic()
    with pytest.raises(H.ApiError) as exc:
        c.get("/ping")
    assert exc.value.code == "ConnectionError" and exc.value.status is None
    assert "cannot reach http://127.0.0.1:" in str(exc.value)
    assert time.monotonic() - t0 < 5


def test_slow_answer_times_out():
    def slow(m, p, h, b):
        time.sleep(1.5)
        return 200, {}, None
    with FaultServer(slow) as srv:
        with pytest.raises(H.ApiError) as exc:
            client(srv.url, timeout=0.3, retries=0).get("/x")
    assert exc.value.code == "Timeout" and "no answer within 0.3s" in str(exc.value)


def test_headers_token_and_sapi_accept_version():
    with FaultServer(const(200, [])) as srv:
        SapiClient(srv.url, token="s3cret", retry_delay=0.01).list_applications(name="manta")
        req = srv.requests[0]
    assert req["headers"]["Accept-Version"] == "~2"
    assert req["headers"]["Authorization"] == "Bearer s3cret"
    assert req["headers"]["Accept"] == "application/json"
    assert "name=manta" in req["path"] and "include_master=true" in req["path"]


def test_json_body_is_sent_as_json():
    with FaultServer(const(200, {})) as srv:
        client(srv.url).request("PUT", "/applications/u", body={"metadata": {"A": [1, {"b": None}]}})
        req = srv.requests[0]
    assert req["headers"]["Content-Type"] == "application/json"
    assert json.loads(req["body"]) == {"metadata": {"A": [1, {"b": None}]}}


def test_get_list_404_is_empty_and_non_list_is_malformed():
    with FaultServer(sequence((404, {"code": "ResourceNotFound", "message": "none"}, None),
                              (200, {"not": "a list"}, None))) as srv:
        c = client(srv.url)
        assert c.get_list("/instances") == []
        with pytest.raises(H.ApiError) as exc:
            c.get_list("/instances")
    assert exc.value.code == "MalformedResponse"


def test_get_or_none():
    with FaultServer(sequence((404, {"code": "ResourceNotFound", "message": "no such application: x"}, None),
                              (500, {"code": "InternalError", "message": "x"}, None))) as srv:
        c = client(srv.url, retries=0)
        assert c.get_or_none("/applications/x") is None
        with pytest.raises(H.ApiError):
            c.get_or_none("/applications/x")


def test_bad_url_is_rejected():
    with pytest.raises(ValueError):
        H.ApiClient("sapi.example.com")


# ------------------------------------------------------------------ TLS
@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    return ctx, str(d / "cert.pem")


def test_https_certificate_verified_by_default(self_signed):
    ctx, _ = self_signed
    with FaultServer(const(200, {"ok": True}), tls_context=ctx) as srv:
        with pytest.raises(H.ApiError) as exc:
            client(srv.url, retries=3).get("/ping")
        assert exc.value.code == "SSLError"
        assert "CERTIFICATE_VERIFY_FAILED" in str(exc.value) or "certificate" in str(exc.value).lower()


def test_https_with_ca_path_or_validate_certs_false(self_signed):
    ctx, ca = self_signed
    with FaultServer(const(200, {"ok": True}), tls_context=ctx) as srv:
        assert client(srv.url, ca_path=ca).get("/ping") == {"ok": True}
        assert client(srv.url, validate_certs=False).get("/ping") == {"ok": True}
