"""Shared fixtures: the tiny-model factory (fixtures_models) and the live-server fixtures (fixtures_server)."""

pytest_plugins = ["tests.fixtures_models", "tests.fixtures_server"]
