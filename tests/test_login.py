"""shared.login against a loopback fake of WeChat's /sns/jscode2session.

Every test also asserts that no access token is ever fetched (/cgi-bin/token): code2Session
needs none.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from shared import login
from shared.errors import ConfigError, LoginFailed, LoginUnavailable
from tests.keys import APPID, APPSECRET, make_config

SESSION_KEY = "tiihtNczf5v6AKRyjwEUhQ=="


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as WeChat's servers

    def log_message(self, *args):
        pass

    def handle(self):  # once per connection
        self.server.fake.connections += 1  # type: ignore[attr-defined]
        super().handle()

    def do_GET(self):  # noqa: N802 - http.server's naming
        fake = self.server.fake  # type: ignore[attr-defined]
        fake.paths.append(self.path)
        status, body, delay = fake.reply(self.path)
        if delay:
            time.sleep(delay)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


class FakeWeChat:
    def __init__(self):
        self.paths: list[str] = []
        self.connections = 0
        default = json.dumps({"openid": "oUser1", "session_key": SESSION_KEY}).encode()
        self.reply = lambda path: (200, default, 0)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.fake = self  # type: ignore[attr-defined]
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def answer(self, payload, status=200, delay=0.0):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.reply = lambda path: (status, body, delay)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = FakeWeChat()
    yield server
    assert not any(p.startswith("/cgi-bin/token") for p in server.paths)
    server.stop()


@pytest.fixture
def config(fake):
    return make_config("prepare", WECHAT_API_BASE=fake.base)



def test_valid_code_returns_openid(fake, config, logs):
    assert login.WeChatLogin(config).openid("081aBc2w3Kl_-9") == "oUser1"
    [path] = fake.paths
    parts = urlsplit(path)
    assert parts.path == "/sns/jscode2session"
    query = parse_qs(parts.query)
    assert query["appid"] == [APPID] and query["secret"] == [APPSECRET]
    assert query["js_code"] == ["081aBc2w3Kl_-9"] and query["grant_type"] == ["authorization_code"]
    assert SESSION_KEY not in logs.getvalue() and APPSECRET not in logs.getvalue()


def test_login_returns_unionid_and_never_the_session_key(fake, config):
    fake.answer({"openid": "oUser2", "unionid": "uUnion2", "session_key": SESSION_KEY})
    session = login.WeChatLogin(config).login("code2")
    assert session == login.LoginSession(openid="oUser2", unionid="uUnion2")
    assert SESSION_KEY not in repr(session) and not hasattr(session, "session_key")


def test_wechat_api_base_with_trailing_slash(fake):
    config = make_config(WECHAT_API_BASE=fake.base + "/")
    assert login.WeChatLogin(config).openid("code3") == "oUser1"
    assert fake.paths[0].startswith("/sns/jscode2session?")


@pytest.mark.parametrize("errcode,cls", [
    (40029, LoginFailed), (40163, LoginFailed), (40226, LoginFailed), (40099, LoginFailed),
    (45011, LoginUnavailable), (-1, LoginUnavailable),
    (40125, LoginUnavailable), (40013, LoginUnavailable), (40001, LoginUnavailable)])
def test_errcodes_map_to_login_errors(fake, config, logs, errcode, cls):
    fake.answer({"errcode": errcode, "errmsg": "invalid code, rid: 6634a1b2"})
    with pytest.raises(cls) as info:
        login.WeChatLogin(config).openid("badcode")
    assert info.value.details["errcode"] == errcode
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)
    assert APPSECRET not in str(info.value) and APPSECRET not in logs.getvalue()
    assert len(fake.paths) == 1  # 40001 included: no token refresh and retry


def test_invalid_code_is_login_failed_with_a_human_message(fake, config):
    fake.answer({"errcode": 40029, "errmsg": "invalid code"})
    with pytest.raises(LoginFailed) as info:
        login.WeChatLogin(config).openid("expired")
    assert "wx.login()" in info.value.message and info.value.status == 401


@pytest.mark.parametrize("code", ["", "a" * 129, "has space", "semi;colon", "ü", "a\nb", None, 42])
def test_malformed_code_is_refused_without_a_request(fake, config, code):
    with pytest.raises(LoginFailed):
        login.WeChatLogin(config).openid(code)
    assert fake.paths == []


def test_http_500_is_unavailable(fake, config):
    fake.answer(b"<html>500</html>", status=500)
    with pytest.raises(LoginUnavailable):
        login.WeChatLogin(config).openid("code500")


def test_non_json_200_is_unavailable(fake, config):
    fake.answer(b"<html>hello</html>")
    with pytest.raises(LoginUnavailable):
        login.WeChatLogin(config).openid("codehtml")


def test_answer_without_openid_is_unavailable(fake, config):
    fake.answer({"session_key": SESSION_KEY})
    with pytest.raises(LoginUnavailable) as info:
        login.WeChatLogin(config).openid("codeempty")
    assert SESSION_KEY not in str(info.value)


def test_connection_refused_is_unavailable_and_hides_the_secret():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = make_config(WECHAT_API_BASE=f"http://127.0.0.1:{port}")
    with pytest.raises(LoginUnavailable) as info:
        login.WeChatLogin(config).openid("coderefused")
    # requests' own message quotes the URL (secret included): it must not be attached.
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert APPSECRET not in str(info.value) and APPSECRET not in repr(info.value.details)


def test_timeout_is_unavailable(fake):
    config = make_config(WECHAT_API_BASE=fake.base)
    fake.answer({"openid": "late"}, delay=1.0)
    started = time.monotonic()
    with pytest.raises(LoginUnavailable):
        login.WeChatLogin(config, timeout=0.2).openid("codeslow")
    assert time.monotonic() - started < 1.0


def test_the_login_client_is_built_once_per_instance_and_thread_safe(fake):
    from shared.runtime import Instance
    from tests.keys import make_environ
    from tests.test_runtime import RotatingSecret

    secret = RotatingSecret()
    instance = Instance("prepare", make_environ(WECHAT_API_BASE=fake.base, CLOUDPAY_SSM_SECRET_NAME="s"),
                        secrets=secret)
    results, barrier = [], threading.Barrier(8)

    def run():
        barrier.wait()
        results.append((instance.login.openid("codeparallel"), id(instance.login)))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [openid for openid, _ in results] == ["oUser1"] * 8 and len({built for _, built in results}) == 1
    first = instance.login
    secret.overlay = {"WECHAT_APPSECRET": "b" * 32}  # a rotated secret: the client is rebuilt
    assert instance.login.openid("another") == "oUser1" and instance.login is not first
    assert parse_qs(urlsplit(fake.paths[-1]).query)["secret"] == ["b" * 32]


def test_connections_are_kept_alive_between_logins(fake):
    config = make_config(WECHAT_API_BASE=fake.base)
    client = login.WeChatLogin(config)
    for code in ("c1", "c2", "c3"):
        assert client.openid(code) == "oUser1"
    assert fake.connections == 1


def test_missing_app_secret_is_a_config_error():
    config = make_config("callback", WECHAT_APPSECRET=None)
    with pytest.raises(ConfigError) as info:
        login.WeChatLogin(config).openid("code")
    assert info.value.variable == "WECHAT_APPSECRET"


def test_module_import_is_lean():
    import subprocess

    code = "import sys, shared.login; print(sorted(m for m in ('wechatpy', 'requests', 'urllib3') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.stdout.strip() == "[]"
