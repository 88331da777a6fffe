"""/docs works with no network beyond this server; every field of the contract is described."""

import re

import pytest

pytestmark = pytest.mark.anyio


async def test_docs_load_their_assets_from_this_server(client):
    page = await client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(r"url: *'([^']+)'", page.text)
    assets = [u for u in urls if u.endswith((".js", ".css", ".png"))]
    assert len(assets) >= 2  # the Swagger UI bundle and its stylesheet
    for url in urls:
        assert url.startswith("/"), f"{url} would need the network"
    for url in assets:
        r = await client.get(url)
        assert r.status_code == 200, url
        assert len(r.content) > 1000, url
    assert "//cdn" not in page.text
    assert "https://" not in page.text


async def test_every_schema_property_is_described_and_bearer_is_declared(client):
    doc = (await client.get("/openapi.json")).json()
    missing = [f"{name}.{prop}" for name, schema in doc["components"]["schemas"].items()
               for prop, sub in (schema.get("properties") or {}).items() if not sub.get("description")]
    assert missing == []
    assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"],
                                                              "type": "http", "scheme": "bearer"}
    assert doc["paths"]["/v1/check"]["post"]["security"] == [{}, {"bearer": []}]  # only with BNCHECK_TOKEN
    assert "security" not in doc["paths"]["/livez"]["get"]


async def test_the_response_example_is_a_real_answer_the_schema_allows(client, openapi):
    import httpx

    doc = (await client.get("/openapi.json")).json()
    example = doc["paths"]["/v1/check"]["post"]["responses"]["200"]["content"]["application/json"]["examples"]
    answer = example["small"]["value"]
    assert answer["passed"] is True
    openapi.validate("/v1/check", "post", httpx.Response(200, json=answer))
