"""Pretrained weight files: which file each (model, weights) pair loads, where the library that
publishes it caches it, fetching it (the sweep's driver, once, before any trial) and reading it
(trials, from the local file only).

- torchvision (`imagenet` for resnet18/50, densenet121): the DEFAULT weights' URL, downloaded by
  `torch.hub.load_state_dict_from_url(..., check_hash=True)` into
  `torch.hub.get_dir()/checkpoints` (TORCH_HOME). The file name carries the first hex digits of
  the file's SHA-256 (torch.hub's convention); `check_file` compares them on every fetch and
  read, so a corrupted or truncated file is refused, never loaded.
- torchxrayvision (`cxr` for densenet121 and resnet50, the optional extra `cxr`): its own
  `utils.download` into its own cache (`~/.torchxrayvision/models_data`); read back through its
  own model constructors. torchxrayvision publishes no hashes: a fetched file is checked by
  loading it, and its SHA-256 is recorded in the experiment record.
- timm (`imagenet` for `timm:NAME`, the optional extra `timm`): `timm.create_model(name,
  pretrained=True)` downloads into the Hugging Face cache (HF_HOME); trials load that file with
  `pretrained_cfg_overlay={"file": path}`, which never touches the network.

`CXR_TUNE_WEIGHT_URLS` (a JSON object `{"MODEL/WEIGHTS": URL}`) replaces a file's download URL,
for a mirror inside a network without internet access; the file keeps the name the URL gives
it (for torchvision, that name's hash prefix is checked).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from trainables.vocab import CXR_WEIGHTS, TIMM_PREFIX

URLS_ENV = "CXR_TUNE_WEIGHT_URLS"
HF_URL = "https://huggingface.co/"
# torch.hub's check_hash convention (torch/hub.py HASH_REGEX, torch 2.x): NAME-<hex>.EXT
_HASH_PREFIX = re.compile(r"-([a-f0-9]{8,})\.")
_CHUNK = 1 << 20  # bytes read at a time while hashing
DOWNLOAD_TIMEOUT = 60.0  # seconds without a byte before a download counts as failed


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file: where it comes from and where its library keeps it."""

    model: str
    weights: str
    library: str  # torchvision | torchxrayvision | timm
    url: str
    path: Path  # the file in the library's cache

    @property
    def key(self) -> str:
        return f"{self.model}/{self.weights}"

    def place_hint(self) -> str:
        return f"download {self.url} and place it at {self.path}"


def weight_file(model: str, weights: str) -> WeightFile:
    """The file `weights` of `model` loads (ValueError for a pair without one)."""
    if weights == "imagenet" and model.startswith(TIMM_PREFIX):
        return _timm_file(model)
    if weights == "imagenet" and model in _TORCHVISION:
        url = _url(model, weights, _TORCHVISION[model]().DEFAULT.url)
        return WeightFile(model, weights, "torchvision", url, _hub_checkpoints() / _name(url))
    if weights == "cxr" and model in CXR_WEIGHTS:
        own = _xrv_url(CXR_WEIGHTS[model][0])
        # torchxrayvision finds its file by the name its own URL gives it, mirror or not
        path = xrv_cache() / _name(own)
        return WeightFile(model, weights, "torchxrayvision", _url(model, weights, own), path)
    raise ValueError(f"model {model!r} has no weights {weights!r} to fetch")


def _torchvision_enum(name: str) -> Any:
    """torchvision's weights enum `name`, imported when asked for: torchvision's import pulls in
    torch._dynamo (about a second of CPU), which a trial without its backbones should not pay."""

    def enum() -> Any:
        import torchvision

        return getattr(torchvision.models, name)

    return enum


_TORCHVISION = {
    "resnet18": _torchvision_enum("ResNet18_Weights"),
    "resnet50": _torchvision_enum("ResNet50_Weights"),
    "densenet121": _torchvision_enum("DenseNet121_Weights"),
}


def _url(model: str, weights: str, default: str) -> str:
    """The URL the library downloads from, or the one `CXR_TUNE_WEIGHT_URLS` maps it to."""
    text = os.environ.get(URLS_ENV, "")
    if not text:
        return default
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{URLS_ENV} is not a JSON object: {err}") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"{URLS_ENV} must be a JSON object {{'MODEL/WEIGHTS': URL}}")
    return str(mapping.get(f"{model}/{weights}", default))


def _name(url: str) -> str:
    return Path(urlparse(url).path).name


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def xrv_cache() -> Path:
    """torchxrayvision's weights folder (its `utils.get_cache_dir()`, spelled out so the path is
    known without importing it)."""
    return Path(os.path.expanduser(os.path.join("~", ".torchxrayvision", "models_data")))


def _xrv_url(name: str) -> str:
    try:
        import torchxrayvision as xrv
    except ImportError:
        # The URL torchxrayvision 1.5.7 lists for the name (its models.model_urls).
        return _XRV_URLS[name]
    return xrv.models.model_urls[name]["weights_url"]


_XRV_BASE = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
_XRV_URLS = {
    "densenet121-res224-all": _XRV_BASE + "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-"
    "d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
    "resnet50-res512-all": _XRV_BASE + "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt",
}


def _timm_file(model: str) -> WeightFile:
    timm = import_timm(model)
    name = model[len(TIMM_PREFIX) :]
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception as err:  # timm raises RuntimeError for an unknown name
        raise ValueError(f"model {model!r}: timm knows no such model ({err})") from None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ValueError(f"model {model!r}: timm lists no pretrained weights for it")
    hub_id = cfg.hf_hub_id
    mirror = _url(model, "imagenet", "")
    if hub_id and not mirror:
        from huggingface_hub.constants import HF_HUB_CACHE

        filename = cfg.hf_hub_filename or "model.safetensors"
        url = f"{HF_URL}{hub_id}/resolve/main/{filename}"
        cached = _hf_cached(hub_id, filename)
        return WeightFile(model, "imagenet", "timm", url, cached or Path(HF_HUB_CACHE))
    # a URL source (timm's own url, or a mirror): torch.hub's download, as timm does for it
    url = mirror or cfg.url
    return WeightFile(model, "imagenet", "timm", url, _hub_checkpoints() / _name(url))


def _hf_cached(repo_id: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for name in (filename, "model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str):
            return Path(found)
    return None


def import_timm(model: str) -> Any:
    try:
        import timm
    except ImportError:
        raise ValueError(
            f"model {model!r} needs timm: pip install 'cxr-tune[timm]' (timm==1.0.*)"
        ) from None
    return timm


def import_xrv(what: str) -> Any:
    try:
        import torchxrayvision as xrv
    except ImportError:
        raise ValueError(
            f"{what} needs torchxrayvision: pip install 'cxr-tune[cxr]' (torchxrayvision==1.5.7)"
        ) from None
    return xrv


# --- checks -----------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path: Path) -> str:
    """The file's SHA-256; refuses a file whose name's hash prefix (torch.hub's NAME-<hex>.EXT
    convention) it does not match. Names without a prefix are not checked here."""
    digest = sha256_of(path)
    match = _HASH_PREFIX.search(path.name)
    if match and not digest.startswith(match.group(1)):
        raise ValueError(
            f"weights file {path} is corrupted: its SHA-256 {digest[:12]}... does not start with "
            f"{match.group(1)!r} as its name says; delete it and fetch it again"
        )
    return digest


# --- the driver: fetch ------------------------------------------------------------------------


def fetch(wf: WeightFile, progress: bool = True) -> tuple[Path, str]:
    """Make sure `wf` is in its library's cache, downloading it with that library's own
    function; returns (local file, SHA-256). A failed or corrupted download is a one-line
    ValueError naming the file, the URL and where to place it."""
    previous = socket.getdefaulttimeout()
    # torch.hub's urlopen takes no timeout: a network that drops packets would hang the driver
    socket.setdefaulttimeout(previous or DOWNLOAD_TIMEOUT)
    try:
        if wf.library == "torchvision":
            path = _fetch_torchvision(wf, progress)
        elif wf.library == "torchxrayvision":
            path = _fetch_xrv(wf)
        else:
            path = _fetch_timm(wf)
    except ValueError:
        raise
    except Exception as err:  # URLError, HTTPError, OSError, requests' errors, hash mismatch
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ValueError(
            f"cannot fetch {wf.key} weights ({wf.library}) from {wf.url}: {reason}; "
            f"{wf.place_hint()}"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return path, check_file(path)


def _fetch_torchvision(wf: WeightFile, progress: bool) -> Path:
    if not wf.path.is_file():
        # check_hash: torch.hub compares the download against the name's hash prefix and
        # deletes it on a mismatch (RuntimeError 'invalid hash value').
        torch.hub.load_state_dict_from_url(
            wf.url, model_dir=str(wf.path.parent), progress=progress, check_hash=True,
            map_location="cpu", file_name=wf.path.name,
        )  # fmt: skip
    return wf.path


def _fetch_xrv(wf: WeightFile) -> Path:
    xrv = import_xrv(f"weights 'cxr' of {wf.model}")
    if not wf.path.is_file():
        wf.path.parent.mkdir(parents=True, exist_ok=True)
        xrv.utils.download(wf.url, str(wf.path))  # writes NAME.part, renames on success
    read_xrv_state(wf.model, wf.path)  # a damaged file is refused by the driver, not a trial
    return wf.path


def _fetch_timm(wf: WeightFile) -> Path:
    if not wf.url.startswith(HF_URL):
        return _fetch_torchvision(wf, progress=False)  # torch.hub, hash prefix checked
    timm = import_timm(wf.model)
    timm.create_model(wf.model[len(TIMM_PREFIX) :], pretrained=True)  # into the HF cache
    found = _timm_file(wf.model).path
    if not found.is_file():
        raise ValueError(f"timm downloaded {wf.key} but its file is not in {found}")
    return found


# --- trials: read the local file --------------------------------------------------------------


def local_file(model: str, weights: str, weights_path: str) -> Path:
    """The file a trial loads: `weights_path`, else the library's cache. Never downloads: a
    missing file is a ValueError saying how to get it."""
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise ValueError(f"weights_path {path} does not exist (weights {weights!r})")
        return path
    wf = weight_file(model, weights)
    if not wf.path.is_file():
        raise ValueError(
            f"{wf.key} weights are not on this machine: a sweep fetches them before its trials "
            f"start; otherwise {wf.place_hint()} (or set weights_path to a local file)"
        )
    return wf.path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A torchvision-style state dict from a .pth/.safetensors file, hash prefix checked."""
    check_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file gets the same message naming it
        raise ValueError(f"cannot read weights from {path}: {err}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state_dict (got {type(state).__name__})")
    return state


def read_xrv_state(model: str, path: Path) -> dict[str, torch.Tensor]:
    """The backbone state of torchxrayvision's `model` from its local file, read by
    torchxrayvision's own constructor (its DenseNet file is a pickled model); keys as
    torchvision's `model` names them."""
    xrv = import_xrv(f"weights 'cxr' of {model}")
    name = CXR_WEIGHTS[model][0]
    if not path.is_file():
        raise ValueError(f"torchxrayvision weights file {path} is missing")
    try:
        # cache_dir holding the file means torchxrayvision finds it and downloads nothing.
        net = xrv.models.get_model(name, cache_dir=str(path.parent))
    except Exception as err:  # unpickling or shape errors of a damaged file
        reason = " ".join(str(err).split())[:200]
        raise ValueError(f"cannot read torchxrayvision weights {path}: {reason}") from None
    inner = net.model if model.startswith("resnet") else net  # its ResNet wraps torchvision's
    return {k: v for k, v in inner.state_dict().items() if k != "op_threshs"}
