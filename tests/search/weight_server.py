"""A local HTTP server on the loopback address serving weight files the tests build, so the
download code runs for real without the internet; it counts the requests per file."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
import torchvision


class WeightServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: Counter[str] = Counter()
        handler = partial(_Handler, self, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{name}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(SimpleHTTPRequestHandler):
    def __init__(self, server_state: WeightServer, *args, **kwargs) -> None:
        self.state = server_state
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.state.requests[self.path.lstrip("/")] += 1
        super().do_GET()

    def log_message(self, *args) -> None:  # keep test output clean
        pass


def resnet18_file(root: Path, seed: int = 0) -> tuple[Path, torch.Tensor]:
    """A resnet18 ImageNet-shaped state dict saved under torch.hub's hash-prefix name
    (resnet18-<first 10 hex digits of its SHA-256>.pth); returns the file and its conv1."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    tmp = root / "resnet18.tmp"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = root / f"resnet18-{digest[:10]}.pth"
    tmp.rename(path)
    return path, state["conv1.weight"]


def corrupted_copy(good: Path) -> Path:
    """The same name pattern with other bytes: its hash no longer matches its name."""
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = good.with_name(good.name.replace("resnet18-", "resnet18x-"))
    bad.write_bytes(bytes(data))
    return bad
