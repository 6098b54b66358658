"""deploy/compose.yaml: no Docker engine runs here, so check what can be checked without one.

The file is YAML that compose would read (anchors resolved); Redis keeps an AOF and never evicts; the API node is
`ltxserve serve --workers 0` and the workers `ltxserve worker`, with arguments our CLI accepts and environment
variables that are real settings; everyone shares the Redis URL and the files volume at the path LTXSERVE_FILES names;
each worker reserves its own GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ltxserve.cli import build_parser
from ltxserve.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose.yaml"
ENTRYPOINT = ["ltxserve", "serve"]  # Dockerfile.cuda's (tests/test_dockerfile.py checks it there)


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _ltxserve(services: dict) -> dict[str, dict]:
    return {name: s for name, s in services.items() if s.get("image") == "ltxserve:cuda"}


def _argv(service: dict) -> list[str]:
    return list(service.get("entrypoint") or ENTRYPOINT) + list(service.get("command") or [])


def test_redis_keeps_an_append_only_file_and_never_evicts(services):
    command = services["redis"]["command"]
    flags = dict(zip(command[1::2], command[2::2]))
    assert command[0] == "redis-server"
    assert flags["--appendonly"] == "yes" and flags["--appendfsync"] in ("everysec", "always")
    assert flags["--maxmemory-policy"] == "noeviction"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])  # the AOF outlives the container


def test_one_api_node_and_workers_with_arguments_the_cli_accepts(services):
    nodes = _ltxserve(services)
    roles = {name: _argv(s)[1] for name, s in nodes.items()}
    assert list(roles.values()).count("serve") == 1 and list(roles.values()).count("worker") >= 2
    parser = build_parser()
    for name, service in nodes.items():
        args = parser.parse_args(_argv(service)[1:])  # exits (fails the test) on an unknown flag
        if roles[name] == "serve":
            assert args.workers == 0, "the API node runs no workers of its own"
            assert service["ports"] and service.get("healthcheck", {}).get("disable") is not True
        else:
            assert service["healthcheck"]["disable"] is True  # the image's check curls an HTTP port workers lack


def test_environment_is_real_settings_and_shared_store_and_files(services):
    fields = {f"LTXSERVE_{name.upper()}" for name in Settings.model_fields}
    stores, files = set(), set()
    for name, service in _ltxserve(services).items():
        env = service["environment"]
        unknown = {k for k in env if k.startswith("LTXSERVE_")} - fields
        assert not unknown, f"{name}: not settings: {unknown}"
        stores.add(env["LTXSERVE_STORE"])
        files.add(env["LTXSERVE_FILES"])
        mounts = dict(v.split(":", 1)[::-1] for v in service["volumes"])
        assert mounts.get(env["LTXSERVE_FILES"]) == "files", f"{name} does not mount the shared files volume"
        assert env["LTXSERVE_STORE"].startswith("redis://redis:")
    assert len(stores) == 1 and len(files) == 1


def test_each_worker_reserves_its_own_gpu(services):
    device_ids = []
    for name, service in _ltxserve(services).items():
        if _argv(service)[1] != "worker":
            continue
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        device_ids += device["device_ids"]
    assert len(device_ids) == len(set(device_ids)) >= 2
