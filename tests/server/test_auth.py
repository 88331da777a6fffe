"""Optional bearer-token auth (BNCHECK_TOKEN)."""

import pytest

from bncheck.server.openapi import EXAMPLE

pytestmark = pytest.mark.anyio

PROTECTED = [("POST", "/v1/check"), ("GET", "/v1/variants"), ("GET", "/metrics")]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_missing_or_wrong_token_is_401(make_client, method, path):
    async with make_client(token="s3cret") as c:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"},
                        {"authorization": "Bearer s3cret "}):
            r = await c.request(method, path, json=EXAMPLE if method == "POST" else None, headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"] == 'Bearer realm="bncheck"'
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"] == "/problems/unauthorized"


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_right_token_passes(make_client, method, path):
    async with make_client(token="s3cret") as c:
        r = await c.request(method, path, json=EXAMPLE if method == "POST" else None,
                            headers={"authorization": "Bearer s3cret"})
    assert r.status_code == 200


async def test_health_stays_open(make_client):
    async with make_client(token="s3cret") as c:
        assert (await c.get("/livez")).status_code == 200
        assert (await c.get("/readyz")).status_code == 200


async def test_off_by_default(client):
    assert (await client.get("/v1/variants")).status_code == 200


def test_client_and_cli_send_the_token(tmp_path, capsys, monkeypatch):
    import numpy as np

    from bncheck.cli import main
    from bncheck.client import Client, Unauthorized

    from ..conftest import LiveServer

    x = np.random.default_rng(0).standard_normal((8, 2))
    np.save(tmp_path / "x.npy", x)
    with LiveServer(token="s3cret") as server:
        with Client(base_url=server.url, token="s3cret") as bn:
            assert bn.check(x, x).passed
        with Client(base_url=server.url) as bn, pytest.raises(Unauthorized):
            bn.check(x, x)
        args = ["check", "--x", str(tmp_path / "x.npy"), "--dy", str(tmp_path / "x.npy"), "--server", server.url]
        assert main([*args, "--token", "s3cret"]) == 0
        monkeypatch.setenv("BNCHECK_TOKEN", "s3cret")
        assert main(args) == 0
        monkeypatch.setenv("BNCHECK_TOKEN", "nope")
        assert main(args) == 2
    assert "401" in capsys.readouterr().err
