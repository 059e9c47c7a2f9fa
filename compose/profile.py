"""The `test` profile's selection: the suite against the compose services.

Loaded by the `tests` service (`python -m pytest -p compose.profile`). Tests that need
servers of their own cannot run against the shared compose servers: they pause, restart,
kill, replicate or pool their server, or start it with a password, ACLs or TLS. They are
left out here, by name, and counted in the run's summary. Any other test that skips in
the profile fails instead: there, a skip means a test that lost its server without
saying so, and it belongs either here or fixed.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

# node id prefixes (a file, or a test with all of its parameters) -> why
OWN_SERVERS = {
    "tests/test_redis_faults.py": "pauses and restarts a redis-server of its own",
    "tests/test_pgbouncer.py": "puts PgBouncer in front of a PostgreSQL server of its own",
    "tests/test_promotion.py": "replicates and promotes PostgreSQL servers of its own",
    "tests/test_consul_cluster.py": "kills Consul servers and agents of its own",
    "tests/test_tls.py": "starts every server with TLS and certificates of its own",
    "tests/test_fault_topologies.py::test_short_round_meets_the_bar": (
        "a fault-suite bench on servers of its own (a standby, PgBouncer, TLS)"
    ),
    **{
        f"tests/test_sentinel.py::{name}": "fails over Redis servers and sentinels of its own"
        for name in (
            "test_a_failover_ends_the_lease_taken_on_the_old_primary",
            "test_a_lock_no_replica_acknowledged_does_not_count",
            "test_a_primary_restarted_before_sentinel_noticed_ends_the_lease",
            "test_the_celery_store_works_with_a_sentinel_url",
            "test_the_sentinel_fault_bench_short_round",
            "test_rediss_sentinel_verifies_certificates",
        )
    },
    **{
        f"tests/test_postgres.py::{name}": "restarts or reconfigures a PostgreSQL server of its own"
        for name in (
            "test_crash_failover_is_fast_whatever_the_ttl",
            "test_graceful_handoff_is_immediate",
            "test_terminated_backend_stops_the_old_child_without_overlap",
            "test_immediate_restart_gives_no_overlap_and_recovers",
            "test_different_names_never_block_each_other",
            "test_logs_show_the_lock_key_for_pg_locks",
            "test_address_from_the_environment",
            "test_refused_credentials_are_one_line_and_exit_3",
            "test_server_down_at_start_keeps_standbys_waiting",
            "test_a_crash_never_hands_out_a_fencing_token_twice",
            "test_every_session_of_the_holder_ended_at_once_gives_no_overlap",
            "test_a_sql_ascii_database_works",
            "test_sessions_ended_while_the_child_is_stopping_give_no_overlap",
        )
    },
    **{
        f"tests/test_consul.py::{name}": "restarts or configures a Consul agent of its own"
        for name in (
            "test_agent_restart_gives_no_overlap_and_recovers",
            "test_missing_or_wrong_acl_token_exits_at_once_with_3",
            "test_down_at_start_then_up",
            "test_address_from_consul_http_addr",
            "test_tls_error_is_one_line_and_keeps_waiting",
            "test_fencing_tokens_increase_after_consul_lost_its_data",
        )
    },
    "tests/test_consul.py::test_kill_9_takeover_within_ttl_plus_lock_delay_and_no_leaks": (
        "expects no coordinator's session on its agent but its own (the compose nodes hold some)"
    ),
    "tests/test_consul.py::test_request_budget_of_an_idle_holder_and_standby": (
        "counts requests through a proxy that reaches its server on loopback only"
    ),
    **{
        name: "starts a server of its own with a password, ACLs, or none at first"
        for name in (
            "tests/test_secrets.py::test_postgres_passwords_never_show",
            "tests/test_secrets.py::test_postgres_wrong_password_error_hides_both",
            "tests/test_secrets.py::test_redis_passwords_never_show",
            "tests/test_secrets.py::test_consul_token_never_shows",
            "tests/test_bad_input.py::test_standby_acquires_once_the_server_comes_back",
            "tests/test_bad_input.py::test_wrong_password_is_one_line_and_exit_3",
            "tests/test_bad_input.py::test_acl_user_and_password_in_the_url_work",
            "tests/test_observability.py::test_json_logs_parse_and_hold_no_password",
            "tests/test_status.py::test_wrong_password_exits_3",
            "tests/test_celery.py::test_postgres_privileges",
        )
    },
}

LEFT_OUT = pytest.StashKey[list[str]]()


def why_left_out(nodeid: str) -> str | None:
    for prefix, why in OWN_SERVERS.items():
        if nodeid == prefix or nodeid.startswith((prefix + "::", prefix + "[")):
            return why
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    left_out = [item for item in items if why_left_out(item.nodeid)]
    if left_out:
        items[:] = [item for item in items if not why_left_out(item.nodeid)]
        config.hook.pytest_deselected(items=left_out)
    config.stash[LEFT_OUT] = [item.nodeid for item in left_out]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        reason = str(reason).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = (
            f"skipped in the compose profile: {reason}\n"
            "a test that needs a server of its own belongs in compose/profile.py"
        )
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    left_out = terminalreporter.config.stash.get(LEFT_OUT, [])
    if not left_out:
        return
    terminalreporter.write_line(
        f"compose profile: {len(left_out)} tests left out, each needs servers of its own "
        "(compose/profile.py):"
    )
    by_reason: dict[str, int] = {}
    for nodeid in left_out:
        why = why_left_out(nodeid) or ""
        by_reason[why] = by_reason.get(why, 0) + 1
    for why, count in by_reason.items():
        terminalreporter.write_line(f"  {count:3} {why}")
