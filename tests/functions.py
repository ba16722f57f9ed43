"""Load a function's handler the way SCF does (by file), and build SCF HTTP events."""

from __future__ import annotations

import base64
import importlib.util
import itertools
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()


def load_function(name: str):
    """functions/<name>/index.py as a fresh module; returns its main_handler."""
    path = ROOT / "functions" / name / "index.py"
    spec = importlib.util.spec_from_file_location(f"scf_{name}_{next(_counter)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main_handler


def http_event(method: str, path: str, *, body: bytes | str | dict | None = None,
               headers: dict | None = None, shape: str = "url") -> dict:
    """An SCF HTTP event in Function URL shape, or API Gateway shape (base64 body)."""
    if isinstance(body, dict):
        body = json.dumps(body)
        headers = {"Content-Type": "application/json", **(headers or {})}
    raw = body.encode() if isinstance(body, str) else (body or b"")
    if shape == "url":
        return {"httpMethod": method, "path": path, "queryString": {},
                "headers": {k.lower(): v for k, v in (headers or {}).items()} | {"x-scf-remote-addr": "127.0.0.1"},
                "body": raw.decode("utf-8")}
    return {"httpMethod": method, "path": "/release" + path, "queryString": {},
            "headers": dict(headers or {}), "body": base64.b64encode(raw).decode(), "isBase64Encoded": True,
            "requestContext": {"sourceIp": "127.0.0.1", "stage": "release", "httpMethod": method,
                               "path": path, "requestId": "req-1"}}


def reply_json(reply: dict):
    return json.loads(reply["body"]) if reply.get("body") else None
