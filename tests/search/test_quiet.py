"""Ray's own output is hidden unless --verbose (search.cluster.quiet_ray); the sweep test checks
the real output, this one the switch."""

from __future__ import annotations

import logging
import os

from search.cli import build_parser
from search.cluster import quiet_ray, ray_logging_level

ENV = ("RAY_AIR_NEW_OUTPUT", "RAY_BACKEND_LOG_LEVEL")


def test_verbose_leaves_rays_output_alone(monkeypatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(["--space", "spaces/smoke.py", "--verbose"])
    quiet_ray(args.verbose)
    assert all(name not in os.environ for name in ENV)
    assert ray_logging_level(True) == logging.INFO


def test_quiet_by_default_without_overriding_the_users_choice(monkeypatch) -> None:

    from ray.tune.experimental.output import get_air_verbosity

    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    monkeypatch.setenv("RAY_BACKEND_LOG_LEVEL", "warning")  # the user's own setting wins
    args = build_parser().parse_args(["--space", "spaces/smoke.py"])
    quiet_ray(args.verbose)
    assert os.environ["RAY_BACKEND_LOG_LEVEL"] == "warning"
    # Ray's own switch: no new-output reporter, so no config box or TensorBoard hint.
    assert get_air_verbosity(0) is None
    assert ray_logging_level(False) == logging.WARNING
