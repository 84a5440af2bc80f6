"""W&B's mode rule (`wandb_mode`, W&B's own, for the sweep and the report alike) and where an
experiment's W&B runs are (`NAME/wandb/`, one `wandb sync` for them all)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlsplit

WANDB_SUBDIR = "wandb"  # wandb.init(dir=D) writes its runs to D/wandb/
DEFAULT_WANDB_PROJECT = "cxr-tune"  # search.run's --wandb-project
WANDB_MODES = ("online", "offline", "disabled")
_WANDB_MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # W&B's older spellings
WANDB_DEFAULT_HOST = "https://api.wandb.ai"


def wandb_key_configured() -> bool:
    """Whether W&B has a key here, where W&B looks for one: WANDB_API_KEY, else `wandb login`'s
    netrc entry for the W&B host ($NETRC or ~/.netrc). The key itself is never returned."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or WANDB_DEFAULT_HOST).hostname
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host or "")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def wandb_mode(requested: str | None = None) -> str:
    """W&B's own rule: the flag, else WANDB_MODE (WANDB_DISABLED=true: disabled), else online
    when a key is configured, else offline."""
    mode = requested or os.environ.get("WANDB_MODE") or ""
    if not mode and os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes"):
        mode = "disabled"
    if not mode:
        return "online" if wandb_key_configured() else "offline"
    mode = _WANDB_MODE_ALIASES.get(mode, mode)
    if mode not in WANDB_MODES:
        where = "--wandb-mode" if requested else "WANDB_MODE"
        raise ValueError(f"{where}: unknown W&B mode {mode!r}; expected one of {list(WANDB_MODES)}")
    return mode


def wandb_runs_dir(wandb_dir: str | Path) -> Path:
    """Where wandb.init(dir=wandb_dir) puts its runs: every run of an experiment (trials, the
    export, the report) goes there, so one `wandb sync` finds them all."""
    return Path(wandb_dir) / WANDB_SUBDIR


def wandb_sync_command(wandb_dir: str | Path) -> str:
    return f"wandb sync {wandb_runs_dir(wandb_dir)}/offline-run-*"
