"""Schemathesis fuzzes every operation of the OpenAPI spec: no input gives a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from archwatch.api.app import create_app
from archwatch.api.settings import Settings
from hypothesis import HealthCheck, given, settings

from archwatch.accounts import Accounts, Role
from tests.conftest import workload_store

STATE: dict[str, Any] = {}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    store, _truth = workload_store(tmp_path_factory.mktemp("fuzz"), 200, 41, 0.5)
    _, token = Accounts(store).create("fuzzer", Role.system, system_code="SYS-HZ-CG")
    app = create_app(Settings(rate_per_second=1e6, rate_burst=10**6), store=store)
    app.state.accounts = Accounts(store)
    STATE["headers"] = {"Authorization": f"Bearer {token}"}
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    store.close()


def test_no_operation_answers_5xx(api_schema: Any) -> None:
    headers = STATE["headers"]
    checked = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/v1/alerts/stream":
            continue  # an endless stream: covered by test_alerts

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            response = case.call(headers=headers)
            assert response.status_code < 500, (case.method, case.path, response.text[:300])
            assert "Traceback" not in response.text

        fuzz()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert len(checked) >= 25, checked
