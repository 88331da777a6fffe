"""Property-based fuzzing of the whole OpenAPI schema with schemathesis, in-process.

`make test` runs a bounded number of examples per operation; `make fuzz` sets
BNCHECK_FUZZ_EXAMPLES higher. Every response must conform to the schema (status
code documented, body valid), and none may be a server error.
"""

import os

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from bncheck.server import Settings, create_app

EXAMPLES = int(os.environ.get("BNCHECK_FUZZ_EXAMPLES", "60"))
# Small limits keep generated tensors cheap; checks run in threads in this process. System
# shared memory is on, so that its routes and parameters are fuzzed past the 403 they get when off.
app = create_app(Settings(executor="thread", max_elements=4096, max_body_bytes=1 << 20, fd_work=1 << 22,
                          client_shm=True))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
# Both schema-valid bodies and deliberately invalid ones (which must get a 4xx).
schema.config.generation.update(modes=["positive", "negative"])


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_schema_conformance(case):
    response = case.call()
    assert response.status_code < 500, response.text[:500]
    # A schema-valid body may still be refused: shapes must agree, the GPU may be absent.
    # Everything else holds: documented status codes, content types, headers and bodies.
    case.validate_response(response, excluded_checks=[positive_data_acceptance])
