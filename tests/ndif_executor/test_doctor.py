"""`futurelens doctor`: every remote check through NDIF's own executor, as a table with request counts and bytes."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from futurelens import doctor
from futurelens.cli import app


@pytest.mark.parametrize("kind", ["llama", "mamba"])
def test_doctor_passes_every_check_and_counts_requests(ndif_pair, ndif_server, kind):
    remote, _ = ndif_pair(kind)  # under NDIF's production whitelist, as every executor test
    results = doctor.run(remote)
    assert [r.name for r in results] == list(doctor._checks(remote))
    failed = [(r.name, r.detail) for r in results if not r.ok]
    assert not failed
    assert all(r.requests >= 1 and r.sent > 1000 for r in results)
    # One request per operation (the lens grid included); greedy is one per length group of its one row.
    assert sum(r.requests for r in results) == len(ndif_server.requests)
    assert {r.name: r.requests for r in results}["lens grid"] == 1


def test_doctor_cli_prints_the_table(ndif_pair, checkpoints):
    ndif_pair("gptj")
    result = CliRunner().invoke(app, ["doctor", checkpoints("gptj"), "--remote", "--only", "decode", "--only", "lens grid"])
    assert result.exit_code == 0, result.output
    assert "futurelens doctor" in result.output and "lens grid" in result.output and "pass" in result.output
    assert "All 3 remote checks passed" in result.output  # cache_ahead always runs: the others use its states


def test_doctor_without_remote_says_how_to_run_it():
    result = CliRunner().invoke(app, ["doctor", "gpt2"])
    assert result.exit_code == 1 and "--remote" in result.output and "Traceback" not in result.output
