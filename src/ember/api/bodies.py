"""Request bodies and the error body as pydantic models: what routes validate a body against
(`parse_body`, or the `ObjectBody` dependency) and what the OpenAPI document declares (`body_doc`,
`finish_openapi`).

Bodies are read by `deps.read_json` (strict JSON: no NaN, no lone surrogates, bounded depth and time),
then checked here for shape and types; the domain rules (names, handler paths, money, scaling) stay in
`core` and run after. A failed check is an `InvalidInput` (400) with one problem per error. Models that
mirror RunPod's REST bodies allow fields Ember does not know (RunPod's clients send more than Ember
reads), except where the route already refused unknown fields."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ember.api.deps import read_json
from ember.core.errors import InvalidInput, Problem
from ember.core.json_body import JsonObject

T = TypeVar("T")

Name = Annotated[str, Field(min_length=1, max_length=128)]
MODELS: dict[str, type[BaseModel]] = {}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


# ---- errors --------------------------------------------------------------------------------------------
class ProblemBody(BaseModel):
    field: str = Field(description="the field at fault, dotted (`policy.ttl`), or `body`")
    message: str
    value: object = Field(None, description="the bad value, when short enough to show")


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer of the API."""

    error: str = Field(description="what went wrong, for people")
    code: str = Field(description="a stable machine-readable code, e.g. invalid_input, not_found")
    problems: list[ProblemBody] | None = Field(None, description="one entry per bad field (400)")
    log: str | None = Field(None, description="the end of a failed build's log")


# ---- management bodies ---------------------------------------------------------------------------------
class AccountCreate(_Open):
    name: Name


class HostCreate(_Open):
    name: str = Field(description="1-63 letters, digits, '.', '_' or '-'", min_length=1, max_length=63)


class Credits(_Open):
    amount: str | int | float = Field(
        description='dollars: a number or a string of ASCII digits, e.g. "12.50"'
    )


class Rollback(_Open):
    release: int | None = Field(None, description="the release number; the previous good one when absent")


class Exec(_Open):
    command: list[str] = Field(min_length=1)
    timeoutS: float = Field(60.0, gt=0, le=3600)  # noqa: N815 - the wire name


class TemplateBody(_Open):
    """RunPod's template fields that Ember uses; others are accepted and kept."""

    name: Name
    imageName: str = ""  # noqa: N815
    env: dict[str, str] = Field(default_factory=dict)
    dockerStartCmd: str | None = None  # noqa: N815
    containerDiskInGb: int | None = None  # noqa: N815
    containerRegistryAuthId: str | None = None  # noqa: N815
    handler: str | None = None


class TemplatePatch(TemplateBody):
    name: Name = None  # type: ignore[assignment]


class GitSource(_Strict):
    url: str = Field(min_length=1)
    branch: str | None = Field(None, min_length=1)
    dockerfile: str | None = Field(None, min_length=1)
    context: str | None = Field(None, min_length=1)
    webhookSecret: str | None = Field(None, min_length=1)  # noqa: N815


class EndpointBody(_Strict):
    """RunPod's endpoint fields (`computeType`, `dataCenterIds`, `allowedCudaVersions`, `instanceIds`,
    `vcpuCount` are accepted and ignored); unknown fields are refused so that typos do not pass."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[\w.\-]+$")
    sourceDir: str | None = Field(None, description="a directory on the server (admin only)")  # noqa: N815
    sourceId: str | None = Field(  # noqa: N815
        None, description="an uploaded source (`POST /v1/sources`) of the caller's account"
    )
    handler: str | None = None
    imageName: str | None = None  # noqa: N815
    git: GitSource | None = None
    dockerStartCmd: str | None = None  # noqa: N815
    env: dict[str, str] | None = None
    modelName: str | None = None  # noqa: N815
    modelRevision: str | None = None  # noqa: N815
    templateId: str | None = None  # noqa: N815
    containerRegistryAuthId: str | None = None  # noqa: N815
    gpuTypeIds: list[str] | None = None  # noqa: N815
    gpuCount: int | None = Field(None, ge=1, le=8)  # noqa: N815
    networkVolumeId: str | None = None  # noqa: N815
    executionTimeoutMs: int | None = Field(None, ge=5_000, le=604_800_000)  # noqa: N815
    flashboot: bool | None = None
    containerDiskInGb: int | None = None  # noqa: N815
    workersMin: int | None = Field(None, ge=0, le=1000)  # noqa: N815
    workersMax: int | None = Field(None, ge=0, le=1000)  # noqa: N815
    idleTimeout: int | None = Field(None, ge=0, description="whole seconds")  # noqa: N815
    scalerType: Literal["QUEUE_DELAY", "REQUEST_COUNT", "PREDICTIVE"] | None = None  # noqa: N815
    scalerValue: int | None = Field(  # noqa: N815
        None,
        gt=0,
        description="QUEUE_DELAY: whole seconds; REQUEST_COUNT: requests per worker; "
        "PREDICTIVE: whole seconds to clear a backlog in once new workers are ready",
    )
    computeType: object = None  # noqa: N815
    dataCenterIds: object = None  # noqa: N815
    allowedCudaVersions: object = None  # noqa: N815
    instanceIds: object = None  # noqa: N815
    vcpuCount: object = None  # noqa: N815


class EndpointPatch(EndpointBody):
    name: str = Field(None, min_length=1, max_length=64, pattern=r"^[\w.\-]+$")  # type: ignore[assignment]


class VolumeCreate(_Open):
    name: Name
    size: int = Field(ge=1, le=4096, description="GB")


class VolumePatch(_Open):
    name: Name | None = None
    size: int | None = Field(None, ge=1, le=4096)


class ModelPull(_Open):
    name: str = Field(min_length=1, description="a Hugging Face repo id like org/name")
    revision: str | None = Field(None, min_length=1)


class RegistryAuthCreate(_Strict):
    name: Name
    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=8192)


# ---- job bodies ----------------------------------------------------------------------------------------
class Policy(_Open):
    executionTimeout: int | None = Field(None, description="milliseconds")  # noqa: N815
    ttl: int | None = Field(None, description="milliseconds")
    lowPriority: bool | None = None  # noqa: N815


class JobRequest(_Open):
    input: object = Field(description="the handler's input (any JSON)")
    webhook: str | None = Field(None, description="an http(s) URL that gets the result")
    policy: Policy | None = None
    s3Config: dict[str, object] | None = None  # noqa: N815


# ---- worker protocol bodies (worker keys; the RunPod SDK sends them) --------------------------------------
class WorkerResult(_Open):
    """A job's result (`output` or `error`), or progress (`status: IN_PROGRESS`)."""

    output: object = None
    error: object = Field(None, description="a failure: a string, or any JSON (kept as text)")
    status: str | None = Field(None, description="IN_PROGRESS for a progress update")
    stopPod: bool | None = None  # noqa: N815


class StreamChunk(_Open):
    output: object = Field(None, description="the chunk, any JSON")
    error: object = None


def integers(model: type[BaseModel], body: JsonObject) -> JsonObject:
    """A copy of `body` with whole-number floats (`5.0`) made ints in the model's integer fields: JSON
    Schema's `integer` includes them, and the domain checks want ints."""
    out = dict(body)
    for name, info in model.model_fields.items():
        value = out.get(name)
        if (
            isinstance(value, float)
            and value.is_integer()
            and abs(value) < 2**63
            and _is_int(info.annotation)
        ):
            out[name] = int(value)
    return out


def _is_int(annotation: object) -> bool:
    args = getattr(annotation, "__args__", ())
    return annotation is int or (int in args and float not in args)


def _shown(value: object) -> str | int | float | None:
    if isinstance(value, str):
        return value[:64] if value.isprintable() else None
    if isinstance(value, bool | int | float) or value is None:
        return value
    return None


def check(model: type[BaseModel], body: T) -> T:
    """`body` when it fits `model`; InvalidInput with one problem per error otherwise."""
    try:
        model.model_validate(body)
    except ValidationError as exc:
        problems = [
            Problem(".".join(str(p) for p in err["loc"]) or "body", err["msg"], _shown(err.get("input")))
            for err in exc.errors()[:20]
        ]
        raise InvalidInput(
            "invalid request body: " + "; ".join(f"{p.field} {p.message}" for p in problems), problems
        ) from None
    return body


async def json_object(request: Request, limit_bytes: int, *, empty: JsonObject | None = None) -> JsonObject:
    """The body read as strict JSON (`read_json`: 408, 413, 400), which must be an object (400). An
    empty body reads as `empty` when given."""
    body = await read_json(request, limit_bytes)
    if body is None and empty is not None:
        body = empty
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", [Problem("body", "must be a JSON object")])
    return body


async def parse_body(
    request: Request, model: type[BaseModel], limit_bytes: int, *, empty: JsonObject | None = None
) -> JsonObject:
    """The body read as a JSON object (`json_object`: 408, 413, 400) and checked against `model` (400).
    An empty body reads as `empty` when given."""
    return check(model, integers(model, await json_object(request, limit_bytes, empty=empty)))


class ObjectBody:
    """A route dependency: the request body as a JSON object of at most `limit_bytes` (`json_object`),
    checked against `model` when one is given (`parse_body`). A route whose look-ups must answer
    before its body is read (404 before 400) reads the body itself instead."""

    def __init__(self, limit_bytes: int, model: type[BaseModel] | None = None) -> None:
        self.limit_bytes = limit_bytes
        self.model = model

    async def __call__(self, request: Request) -> JsonObject:
        if self.model is None:
            return await json_object(request, self.limit_bytes)
        return await parse_body(request, self.model, self.limit_bytes)


# ---- the OpenAPI document ------------------------------------------------------------------------------
def body_doc(model: type[BaseModel] | str, *, required: bool = True) -> dict[str, object]:
    """`openapi_extra` declaring a JSON request body of `model` (registered in components)."""
    name = model if isinstance(model, str) else model.__name__
    if not isinstance(model, str):
        MODELS[name] = model
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    }


ERROR_TEXT = {
    400: "Invalid request: malformed JSON, a bad field or parameter (`problems` lists them)",
    401: "Missing or invalid API key",
    403: "Not allowed for this account (e.g. a tenant naming a directory on the server)",
    402: "Not enough credit",
    404: "Not found (also what a non-admin key gets for an admin route)",
    408: "The request body did not arrive in time",
    409: "Conflicts with the current state",
    413: "The request body is too large",
    422: "The build failed (`log` holds its end)",
    502: "A backend or the model hub failed",
    503: "The store is unavailable",
}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


def error_responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """FastAPI `responses` for these error codes, each with the error body."""
    return {code: {"description": ERROR_TEXT[code], "model": ErrorBody} for code in codes}


SECRETS_SCHEMA: dict[str, object] = {
    "type": "object",
    "description": "UPPER_CASE names to values (null removes one); stored sealed, never returned",
    "minProperties": 1,
    "propertyNames": {"pattern": "^[A-Z][A-Z0-9_]{0,63}$"},
    "additionalProperties": {
        "anyOf": [{"type": "string", "minLength": 1, "maxLength": 8192}, {"type": "null"}]
    },
}


def _member(parent: dict[str, object], key: str) -> dict[str, object]:
    """`parent[key]`, an object of the document, added empty when absent."""
    value = parent.setdefault(key, {})
    if not isinstance(value, dict):
        raise TypeError(f"OpenAPI document: {key!r} is not an object")
    return value


def _objects(value: object) -> dict[str, dict[str, object]]:
    """The members of a document object that are objects themselves (paths, operations)."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(v, dict)}


def finish_openapi(schema: dict[str, object], *, public: tuple[str, ...] = ()) -> dict[str, object]:
    """Complete FastAPI's document: the request body models and the error body in components, the
    bearer security scheme for every operation but `public` paths, the error answers every operation
    can give (400 for bad parameters, 401, 404; 408 and 413 with a body), and no 422 for validation
    (Ember answers 400)."""
    from pydantic.json_schema import models_json_schema

    components = _member(schema, "components")
    schemas = _member(components, "schemas")
    models: list[type[BaseModel]] = [*MODELS.values(), ErrorBody]
    _, defs = models_json_schema(
        [(m, "validation") for m in models],
        ref_template="#/components/schemas/{model}",
    )
    schemas.update(defs.get("$defs", {}))
    schemas["Secrets"] = SECRETS_SCHEMA
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: `Authorization: Bearer <key>` (the bare key is accepted too). "
            "Account and admin keys for /v1 and the job routes; worker keys for the worker protocol.",
        }
    }
    schema["security"] = [{"bearer": []}]
    for path, ops in _objects(schema.get("paths")).items():
        for method, op in _objects(ops).items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses = _member(op, "responses")
            json_422 = _objects(_objects(responses).get("422", {}).get("content")).get("application/json", {})
            if "HTTPValidationError" in str(json_422.get("schema", {})):
                del responses["422"]
            codes = [400, 404] if path in public else [400, 401, 404]
            if "requestBody" in op:
                codes += [408, 413]
            for code in codes:
                responses.setdefault(
                    str(code),
                    {
                        "description": ERROR_TEXT[code],
                        "content": {"application/json": {"schema": _ERROR_REF}},
                    },
                )
            if path in public:
                op["security"] = []
    return schema
