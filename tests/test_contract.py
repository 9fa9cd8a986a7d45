"""One contract for every backend (tests/contract.py): the model in this process and our server."""

from __future__ import annotations

import json

import pytest
from conftest import SERVER_BATCH, SERVER_KEY
from contract import matrix_row, problems, run_contract

from omni_app.engine.local import LocalBackend
from omni_app.serve.remote import RemoteBackend


@pytest.fixture(scope="module")
def local(service):
    return LocalBackend(service)


def test_the_model_in_this_process_keeps_the_contract(local):
    report = run_contract(local, batch=local.info.max_batch)
    print("\nin process:", json.dumps(matrix_row(report)))
    assert problems(report) == []
    status = local.status()
    assert status.busy is False and status.waiting == 0  # every cancelled request let the model go


def test_our_server_keeps_the_contract(live_server):
    backend = RemoteBackend(live_server.url, api_key=SERVER_KEY)
    report = run_contract(backend, batch=SERVER_BATCH)
    print("\nremote:", json.dumps(matrix_row(report)))
    assert problems(report) == []
