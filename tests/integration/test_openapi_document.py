"""The OpenAPI document (`api.bodies.finish_openapi`): every body a route reads is declared with its
model, every operation documents the error body for its 4xx, the bearer scheme covers every operation
but the signed git webhook, and no 422 appears (Ember answers 400); the models are what the routes
validate with (`api.bodies.check`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ember.api import bodies as B
from ember.core.errors import InvalidInput
from ember.core.specs import IGNORED_WIRE_FIELDS, WIRE_FIELDS
from tests.support.harness import build

METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture
def document(tmp_path: Path) -> dict[str, Any]:
    return build(tmp_path).app.openapi()  # type: ignore[no-any-return]


def test_every_operation_documents_its_errors_and_security(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearer"] == {
        **document["components"]["securitySchemes"]["bearer"],
        "type": "http",
        "scheme": "bearer",
    }
    assert document["security"] == [{"bearer": []}]
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    seen = 0
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            if method not in METHODS:
                continue
            seen += 1
            responses = op["responses"]
            assert "422" not in responses or "build" in responses["422"]["description"], (method, path)
            assert responses["400"]["content"]["application/json"]["schema"] == error_ref, (method, path)
            assert "404" in responses, (method, path)
            if path == "/v1/git/webhook":
                assert op["security"] == [] and "401" in responses
            else:
                assert "security" not in op and "401" in responses, (method, path)
            if "requestBody" in op:
                assert {"408", "413"} <= set(responses), (method, path)
    assert seen > 40
    assert "HTTPValidationError" not in document["components"]["schemas"]


@pytest.mark.parametrize(
    ("method", "path", "model"),
    [
        ("post", "/v1/accounts", "AccountCreate"),
        ("post", "/v1/accounts/{account_id}/credits", "Credits"),
        ("post", "/v1/templates", "TemplateBody"),
        ("patch", "/v1/templates/{template_id}", "TemplatePatch"),
        ("post", "/v1/endpoints", "EndpointBody"),
        ("patch", "/v1/endpoints/{ref}", "EndpointPatch"),
        ("post", "/v1/endpoints/{ref}/rollback", "Rollback"),
        ("post", "/v1/workers/{worker_id}/exec", "Exec"),
        ("post", "/v1/networkvolumes", "VolumeCreate"),
        ("patch", "/v1/networkvolumes/{volume_id}", "VolumePatch"),
        ("post", "/v1/models/pull", "ModelPull"),
        ("put", "/v1/accounts/me/secrets", "Secrets"),
        ("post", "/v1/containerregistryauth", "RegistryAuthCreate"),
        ("post", "/v2/{endpoint_id}/run", "JobRequest"),
        ("post", "/v2/{endpoint_id}/runsync", "JobRequest"),
    ],
)
def test_each_body_is_declared_with_its_model(
    document: dict[str, Any], method: str, path: str, model: str
) -> None:
    body = document["paths"][path][method]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
    assert model in document["components"]["schemas"]


def test_the_endpoint_model_knows_exactly_the_wire_fields() -> None:
    assert set(B.EndpointBody.model_fields) == set(WIRE_FIELDS) | IGNORED_WIRE_FIELDS


def test_a_bad_body_is_one_problem_per_error_and_never_echoes_long_values() -> None:
    with pytest.raises(InvalidInput) as caught:
        B.check(B.VolumeCreate, {"name": "x" * 500, "size": "12"})
    problems = {p.field: p for p in caught.value.problems}
    assert set(problems) == {"name", "size"}
    assert problems["name"].value is None or len(str(problems["name"].value)) <= 64
    assert problems["size"].value == "12"


def test_whole_number_floats_count_as_integers() -> None:
    assert B.integers(B.VolumeCreate, {"name": "v", "size": 5.0}) == {"name": "v", "size": 5}
    assert B.integers(B.VolumeCreate, {"size": 5.5}) == {"size": 5.5}
    assert B.integers(B.EndpointBody, {"idleTimeout": 5.0}) == {"idleTimeout": 5}  # RunPod: an integer
    assert B.integers(B.Exec, {"timeoutS": 5.0}) == {"timeoutS": 5.0}  # a number field
    assert B.check(B.VolumeCreate, B.integers(B.VolumeCreate, {"name": "v", "size": 5.0}))["size"] == 5
