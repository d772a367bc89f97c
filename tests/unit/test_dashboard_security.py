"""The dashboard's gate: who is served without credentials, tokens, basic auth, CSRF on every
action, and the headers. Starlette's test client, no server: these are the app's own rules."""

from __future__ import annotations

import base64
import re

import pytest
from click.testing import CliRunner
from pydantic import BaseModel
from starlette.testclient import TestClient

from unified_jobs import Jobs, Worker
from unified_jobs.config import Config
from unified_jobs.dashboard import Credentials, create_app
from unified_jobs.errors import ConfigError

LOCAL = ("127.0.0.1", 40000)
REMOTE = ("203.0.113.9", 40000)
TOKEN = "t0ken-for-the-dashboard-tests"


class Args(BaseModel):
    n: int


@pytest.fixture
def jobs() -> Jobs:
    app = Jobs(Config.from_dict({"workers": {"mode": "ForegroundBlocking"}}))

    @app.register
    class Fails(Worker[Args]):
        name = "tests.Fails"

        def perform(self, args: Args) -> None:
            raise RuntimeError(f"no {args.n}")

    return app


def _failed_job(jobs: Jobs, n: int) -> str:
    """A failed job's id (ForegroundBlocking raises its error to the caller)."""
    with pytest.raises(RuntimeError):
        jobs.perform_later(jobs.worker("tests.Fails"), {"n": n})
    (info,) = [i for i in jobs.failed() if i.args == {"n": n}]
    return info.id


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the confirmation page carries the CSRF token"
    return found.group(1)


def test_without_credentials_only_this_machine_is_served(jobs: Jobs) -> None:
    app = create_app(jobs, credentials=Credentials())
    assert TestClient(app, client=LOCAL).get("/queues").status_code == 200
    refused = TestClient(app, client=REMOTE).get("/queues")
    assert refused.status_code == 403
    assert "UNIFIED_JOBS_DASHBOARD_TOKEN" in refused.text


def test_a_token_is_a_bearer_header_or_a_cookie_set_from_the_url_once(jobs: Jobs) -> None:
    app = create_app(jobs, credentials=Credentials(token=TOKEN))
    remote = TestClient(app, client=REMOTE, follow_redirects=False)
    assert remote.get("/queues").status_code == 401
    wrong = {"Authorization": "Bearer wrong-token-wrong-token"}
    assert remote.get("/queues", headers=wrong).status_code == 401
    assert remote.get("/queues", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    # Loopback is not enough once credentials are set.
    assert TestClient(app, client=LOCAL).get("/queues").status_code == 401
    hop = remote.get(f"/jobs?token={TOKEN}&status=failed")
    assert hop.status_code == 303
    assert hop.headers["location"] == "/jobs?status=failed"  # the token leaves the URL
    assert TOKEN not in hop.headers["set-cookie"]  # the cookie holds a digest, not the token
    assert remote.get("/jobs?status=failed").status_code == 200  # the cookie now lets it in


def test_basic_auth(jobs: Jobs) -> None:
    app = create_app(jobs, credentials=Credentials(username="ops", password="correct horse"))
    client = TestClient(app, client=REMOTE)
    refused = client.get("/workers")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Basic ")
    wrong = base64.b64encode(b"ops:wrong password").decode()
    assert client.get("/workers", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    right = base64.b64encode(b"ops:correct horse").decode()
    assert client.get("/workers", headers={"Authorization": f"Basic {right}"}).status_code == 200


def test_credentials_come_from_the_environment_over_the_config() -> None:
    config = Config.from_dict({"dashboard": {"token": "from-the-config-file"}}).dashboard
    assert Credentials.from_config(config, {}).token == "from-the-config-file"
    env = {"UNIFIED_JOBS_DASHBOARD_TOKEN": TOKEN}
    assert Credentials.from_config(config, env).token == TOKEN
    with pytest.raises(ConfigError, match="16 characters"):
        Credentials.from_config(config, {"UNIFIED_JOBS_DASHBOARD_TOKEN": "short"})
    with pytest.raises(ConfigError, match="username and a password"):
        Credentials.from_config(config, {"UNIFIED_JOBS_DASHBOARD_USERNAME": "ops"})


def test_every_action_needs_the_pages_csrf_token_and_a_same_site_origin(jobs: Jobs) -> None:
    job_id = _failed_job(jobs, 1)
    client = TestClient(create_app(jobs, credentials=Credentials()), client=LOCAL)
    page = client.get(f"/confirm/discard/{job_id}")
    assert page.status_code == 200
    token = _csrf(page.text)
    url = f"/jobs/{job_id}/discard"
    assert client.post(url, data={}).status_code == 403  # no token
    assert client.post(url, data={"csrf": "x" * 43}).status_code == 403  # not the cookie's
    cross = client.post(url, data={"csrf": token}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and "cross-site" in cross.text
    fetch = client.post(url, data={"csrf": token}, headers={"Sec-Fetch-Site": "cross-site"})
    assert fetch.status_code == 403
    assert jobs.status(job_id) == "failed", "no refused request changed the job"
    done = client.post(url, data={"csrf": token}, headers={"Origin": "http://testserver"})
    assert done.status_code == 200  # redirected to the job's page, which is now gone
    assert "discarded" in done.text
    assert jobs.job(job_id) is None


def test_read_only_offers_and_accepts_no_action(jobs: Jobs) -> None:
    job_id = _failed_job(jobs, 2)
    client = TestClient(create_app(jobs, credentials=Credentials(), read_only=True), client=LOCAL)
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200 and "action-retry" not in page.text
    token = _csrf(client.get(f"/confirm/retry/{job_id}").text)
    refused = client.post(f"/jobs/{job_id}/retry", data={"csrf": token})
    assert refused.status_code == 403 and "read-only" in refused.text
    assert jobs.status(job_id) == "failed"


def test_pages_carry_a_strict_content_security_policy_and_no_inline_script(jobs: Jobs) -> None:
    client = TestClient(create_app(jobs, credentials=Credentials()), client=LOCAL)
    for path in ("/queues", "/jobs", "/failed", "/scheduled", "/workers"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert "<script>" not in response.text and " style=" not in response.text, path
    assert client.get("/static/dashboard.js").status_code == 200


def test_the_command_refuses_a_public_address_without_credentials(
    jobs: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    from unified_jobs.cli import cli

    for var in ("TOKEN", "USERNAME", "PASSWORD"):
        monkeypatch.delenv(f"UNIFIED_JOBS_DASHBOARD_{var}", raising=False)
    monkeypatch.setattr("unified_jobs.cli.Context.jobs", lambda self: jobs)
    result = CliRunner().invoke(cli, ["dashboard", "--binding", "0.0.0.0", "--port", "0"])
    assert result.exit_code != 0
    assert "refusing to serve the dashboard on 0.0.0.0 without credentials" in str(result.exception)
