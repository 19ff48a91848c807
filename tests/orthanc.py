"""Test helpers: a real Orthanc (Debian's orthanc + orthanc-dicomweb) and a fault-injecting proxy."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
import time

import requests

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available() -> bool:
    return os.path.exists(ORTHANC) and os.path.exists(DICOMWEB_PLUGIN)


class OrthancServer:
    """Orthanc on a free loopback port with its storage in `folder`; users enables basic auth."""

    def __init__(self, folder: str, users: dict | None = None):
        self.port = free_port()
        config = {
            "Name": "medprep-test",
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": users or {},
            "StorageDirectory": os.path.join(folder, "storage"),
            "IndexDirectory": os.path.join(folder, "index"),
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = os.path.join(folder, "orthanc.json")
        with open(path, "w") as fh:
            json.dump(config, fh)
        self.auth = next(iter(users.items())) if users else None
        self.proc = subprocess.Popen([ORTHANC, path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                if requests.get(self.url + "/system", auth=self.auth, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("Orthanc did not start")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"

    def upload(self, path: str) -> dict:
        with open(path, "rb") as fh:
            r = requests.post(self.url + "/instances", data=fh.read(), auth=self.auth, timeout=30)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class FaultProxy:
    """Forwards GETs to `target`; answers 503 to the first `fail_first` requests, or to all when fail_all."""

    def __init__(self, target: str, fail_first: int = 0, fail_all: bool = False, missing: str = ""):
        """missing: answer 404 to paths containing this (a resource that disappeared after being listed)."""
        self.target, self.fail_first, self.fail_all, self.missing = target, fail_first, fail_all, missing
        self.requests = 0
        self.failed = 0
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with lock:
                    proxy.requests += 1
                    fail = proxy.fail_all or proxy.requests <= proxy.fail_first
                    if fail:
                        proxy.failed += 1
                if proxy.missing and proxy.missing in self.path:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                r = requests.get(
                    proxy.target + self.path, headers={"Accept": self.headers.get("Accept", "*/*")}, timeout=30
                )
                body = r.content
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("Content-Type", "application/octet-stream"))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
