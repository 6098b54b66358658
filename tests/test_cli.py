"""The command-line surface: one flag -> Settings mapping for every command, one-line errors, --help naming defaults
and LTXSERVE_* variables, --version, and the logging set-up (levels, JSON lines, request ids, library noise)."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ltxserve import __version__
from ltxserve.cli import SERVE_SETTINGS, build_parser, main
from ltxserve.cli_flags import SettingsError, flag_for, settings_from_args
from ltxserve.config import Settings
from ltxserve.logs import JsonFormatter, TextFormatter, configure_logging, request_context

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ltxserve.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_every_serve_flag_reaches_settings():
    args = _parse("serve", "--host", "0.0.0.0", "--port", "9001", "--workers", "3", "--dtype", "bf16", "--memory",
                  "offload", "--api-key", "a", "--api-key", "b", "--endpoint", "m:SPEC", "--access-log",
                  "--log-format", "json", "--worker-max-failed-starts", "5", "--allow-unauthenticated-public")
    s = settings_from_args(args)
    assert (s.host, s.port, s.workers, s.dtype, s.memory) == ("0.0.0.0", 9001, 3, "bf16", "offload")
    assert s.api_keys == ["a", "b"] and s.endpoints == ["m:SPEC"] and s.access_log and s.log_format == "json"
    assert s.worker_max_failed_starts == 5 and s.allow_unauthenticated_public


def test_worker_and_node_flags_reach_settings(tmp_path):
    w = settings_from_args(_parse("worker", "--store", "redis://127.0.0.1:6379/2", "--files", str(tmp_path),
                                  "--gpu", "1", "--model", "tiny", "--public-url", "http://api:8000"))
    assert (w.store, w.files, w.files_dir, w.gpu, w.model) == (
        "redis://127.0.0.1:6379/2", tmp_path, tmp_path, 1, "tiny")
    assert w.base_url() == "http://api:8000"
    s = settings_from_args(_parse("serve", "--workers", "0", "--store", "sqlite", "--worker-lost-after-seconds", "5"))
    assert (s.workers, s.store, s.worker_lost_after_seconds) == (0, "sqlite", 5.0)
    assert s.files_dir == s.data_dir / "files"  # the default folder


def test_flags_override_the_environment_and_unset_flags_do_not(monkeypatch):
    monkeypatch.setenv("LTXSERVE_PORT", "7000")
    monkeypatch.setenv("LTXSERVE_MODEL", "tiny")
    s = settings_from_args(_parse("serve", "--port", "7100"))
    assert s.port == 7100 and s.model == "tiny"


def test_weights_and_doctor_commands_share_the_mapping(tmp_path):
    s = settings_from_args(_parse("weights", "pull", "--weights-dir", str(tmp_path), "--lock", str(tmp_path / "l"),
                                  "--base-url", "http://127.0.0.1:1", "--workers", "2"))
    assert (s.weights_dir, s.weights_lock, s.weights_base_url, s.weights_pull_workers) == (
        tmp_path, tmp_path / "l", "http://127.0.0.1:1", 2)
    d = settings_from_args(_parse("doctor", "--memory", "sequential", "--dtype", "fp8"))
    assert (d.memory, d.dtype) == ("sequential", "fp8")
    g = settings_from_args(_parse("generate", "--model", "tiny", "--dtype", "fp32", "--log-level", "debug"))
    assert (g.model, g.dtype, g.log_level) == ("tiny", "fp32", "debug")


def test_help_names_defaults_and_environment_variables():
    text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for field in SERVE_SETTINGS:
        assert flag_for(field) in text, field
        assert f"LTXSERVE_{field.upper()}" in text.replace("\n", " ").replace("  ", ""), field
    assert "Default 8000" in text and "{auto,bf16,fp16,fp32,fp8}" in text


def test_a_bad_choice_is_one_line_without_traceback():
    r = _cli("generate", "--dtype", "bogus")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "invalid choice: 'bogus'" in r.stderr


def test_a_bad_environment_value_is_one_line_naming_flag_and_variable(monkeypatch, capsys):
    monkeypatch.setenv("LTXSERVE_DTYPE", "bogus")
    assert main(["doctor"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("ltxserve: invalid dtype (--dtype / LTXSERVE_DTYPE): Input should be 'auto', 'bf16', "
                           "'fp16', 'fp32' or 'fp8', got 'bogus'")
    with pytest.raises(SettingsError, match="LTXSERVE_DEVICE"):
        settings_from_args(argparse.Namespace(device="gpu0"))


def test_version():
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"ltxserve {__version__}"


def _record(message: str, name: str = "ltxserve.worker", level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_json_log_lines_carry_the_request_id_while_a_job_runs():
    stream = io.StringIO()
    configure_logging("info", "json", "worker[w0]")
    root = logging.getLogger()
    ours = next(h for h in root.handlers if getattr(h, "_ltxserve", False))
    ours.setStream(stream)
    try:
        log = logging.getLogger("ltxserve.worker")
        with request_context("req-123"):
            log.info("job finished in %.1f s: ok", 1.25)
        log.info("idle")
        logging.getLogger("ltxserve.debugging").debug("hidden at info")
    finally:
        root.removeHandler(ours)
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["request_id"] == "req-123" and first["message"] == "job finished in 1.2 s: ok"
    assert first["process"] == "worker[w0]" and first["level"] == "INFO" and "time" in first
    assert "request_id" not in second and second["message"] == "idle"


def test_text_log_lines_show_the_request_id():
    record = _record("job finished")
    record.request_id, record.label = "req-9", "worker[w1]"
    line = TextFormatter().format(record)
    assert "worker[w1] INFO ltxserve.worker [req-9]: job finished" in line
    assert "request_id" in JsonFormatter().format(record)


def test_diffusers_empty_fp32_warning_is_dropped_and_real_ones_kept():
    configure_logging("info", "text", "test")
    stream = io.StringIO()
    diffusers_log = logging.getLogger("diffusers.models.modeling_utils")
    handler = logging.StreamHandler(stream)
    diffusers_log.addHandler(handler)
    try:
        diffusers_log.warning("There are modules in X that should be kept in float32: []. Casting directly ...")
        diffusers_log.warning("There are modules in X that should be kept in float32: ['norm']. Casting ...")
    finally:
        diffusers_log.removeHandler(handler)
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, "_ltxserve", False)]:
            root.removeHandler(h)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "['norm']" in lines[0]


def test_settings_reject_unknown_literals():
    with pytest.raises(Exception):
        Settings(memory="everywhere")


@pytest.mark.timeout(180)
def test_live_server_logs_json_with_access_lines_and_one_line_per_finished_job(live_server_factory):
    from tests.api.helpers import submit, wait_completed

    server = live_server_factory(endpoints=["tests.endpoints_for_tests:STEPS"],
                                 extra_args=["--log-format", "json", "--access-log"])
    with server.client() as c:
        sub = submit(c, "test/steps", {"text": "hello", "steps": 2})
        wait_completed(c, sub["status_url"])
    rid = sub["request_id"]
    server.stop()
    records = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    finished = [r for r in records if r["message"].startswith("job finished")]
    assert len(finished) == 1 and finished[0]["request_id"] == rid and finished[0]["message"].endswith(": ok")
    assert finished[0]["process"].startswith("worker[")
    assert any(r["logger"] == "uvicorn.access" and f"/requests/{rid}/status" in r["message"] for r in records)


def test_generate_with_a_missing_model_says_why_in_one_line(tmp_path):
    missing = tmp_path / "no-model"
    image = REPO / "tests" / "fixtures" / "reference" / "image_odd.png"
    r = _cli("generate", "--model", str(missing), "--image", str(image), "--prompt", "x", "-o", str(tmp_path / "o.mp4"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"cannot load the model: CheckpointError: model path {missing} does not exist" in r.stderr
