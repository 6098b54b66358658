"""Shared fixtures: the tiny-model factory (fixtures_models), the live-server fixtures (fixtures_server) and a real
redis-server (jobs/redis_server)."""

pytest_plugins = ["tests.fixtures_models", "tests.fixtures_server", "tests.jobs.redis_server"]
