"""Property-based fuzzing of every API operation in the app's own OpenAPI schema, over real HTTP.

Schemathesis reads ``/openapi.json`` from the live server and, per operation, generates valid and
invalid requests (paths, queries, multipart uploads, JSON bodies) with Hypothesis. Every response
must be: no 5xx; a status the schema documents for that operation; the documented content type;
a body matching the documented schema (the error shape `ErrorBody` for every error); and schema-
invalid requests must be refused with a 4xx.

Random bytes rarely make a PNG or a .latentz file, and random names rarely name a model, so the
generated values are mixed with real ones: installed model names, served file names, real digit
PNGs, real .latentz files (whole, truncated or with a flipped byte) and latents of the right size.
That takes the fuzzing past the 404s and 415s into the decoders and the models.

Not checked: `positive_data_acceptance` (a schema-valid upload may still be refused: the schema
cannot say "the bytes must be a PNG"; those refusals are documented 400/413/415 statuses).
Bounded for CI by ``max_examples`` per operation (about 20 s on the 2-core machine).
"""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import schemathesis
from bombs import declared_size_bomb
from conftest import WEB_TEST_LIMITS, LiveServer, make_digits
from fastapi.routing import iter_route_contexts
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import load_all_checks
from schemathesis.specs.openapi import checks

from latentz import imaging, runtime
from latentz.bundle import read_bundle
from latentz.server.registry import SERVED_FILES

load_all_checks()
MAX_EXAMPLES = 25
FUZZ_SETTINGS = hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,  # the same cases every run: a failure reproduces
    database=None,
)
UPLOAD_SUFFIXES = ("encode", "decode", "read", "latent", "reconstruct")
CHECKS = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.negative_data_rejection,
]
"""With schemathesis' own not_a_server_error, which always runs."""


def real_uploads(web_model: str) -> tuple[list[bytes], list[bytes]]:
    """(images, .latentz files): real digits, their real encodings, and damaged versions of both."""
    model = runtime.load(web_model)
    digits = make_digits(4, seed=7)[0]
    pngs = [imaging.png_bytes(digit[:, :, None]) for digit in digits]
    files = [
        model.compress(model.prepare(png).image, quality=quality)
        for png, quality in zip(pngs, (0, 50, 90, 100), strict=True)
    ]
    damaged_pngs = [pngs[0][: len(pngs[0]) // 2], pngs[1][:40]]
    damaged_files = [files[0][:-3], files[1][:12]]
    return pngs + damaged_pngs, files + damaged_files + declared_size_bombs(web_model)


def declared_size_bombs(web_model: str) -> list[bytes]:
    """Tiny valid files that declare huge images: a digit file saying 610x65535, and photo files
    saying 5792x5792 and 65535x510 (the server must refuse them from the header, not allocate)."""
    from latentz.bundle import list_bundles

    bombs = [declared_size_bomb(web_model, 610, 65535)]
    photo_models = [path.name for path in list_bundles() if read_bundle(path).config.fully_convolutional]
    for name in photo_models[:1]:
        bombs += [declared_size_bomb(name, 5792, 5792), declared_size_bomb(name, 65535, 510)]
    return bombs


def flip_a_byte(data: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(0, len(data) - 1).map(lambda at: data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :])


def install_realistic_values(schema: schemathesis.BaseSchema, web_model: str, max_steps: int) -> None:
    """Mix real model names, files and latents into what schemathesis generates."""
    models = installed_models(web_model)
    latent_sizes = sorted({int(read_bundle(name).config.latent_dim) for name in models})

    def latents_strategy() -> st.SearchStrategy:
        return st.sampled_from(latent_sizes).flatmap(
            lambda size: st.tuples(*[st.lists(st.floats(-4, 4), min_size=size, max_size=size)] * 2)
        )

    @schema.hook
    def flatmap_case(context: Any, case: schemathesis.Case) -> st.SearchStrategy:
        """Schema-valid cases only: an invalid case must stay invalid."""
        if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
            return st.just(case)
        draws: dict[str, st.SearchStrategy] = {}
        if "name" in (case.path_parameters or {}):
            draws["name"] = st.sampled_from([*models, case.path_parameters["name"]])
        if "filename" in (case.path_parameters or {}):
            draws["filename"] = st.sampled_from([*SERVED_FILES, case.path_parameters["filename"]])
        if isinstance(case.query, dict) and "model" in case.query:
            draws["model"] = st.sampled_from([*models, case.query["model"]])
        if isinstance(case.body, dict) and {"start", "end"} <= set(case.body):
            draws["latents"] = st.one_of(st.just((case.body["start"], case.body["end"])), latents_strategy())
            draws["steps"] = st.one_of(st.just(case.body.get("steps")), st.integers(2, max_steps))

        def with_values(values: dict[str, Any]) -> schemathesis.Case:
            for key in ("name", "filename"):
                if key in values:
                    case.path_parameters = {**case.path_parameters, key: values[key]}
            if "model" in values:
                case.query = {**case.query, "model": values["model"]}
            if "latents" in values:
                case.body = {**case.body, "start": values["latents"][0], "end": values["latents"][1]}
            if values.get("steps") is not None:
                case.body = {**case.body, "steps": values["steps"]}
            return case

        return st.fixed_dictionaries(draws).map(with_values)


def installed_models(web_model: str) -> list[str]:
    """The exported vector-latent models the fuzzer names: the web tests' model and the other digit one."""
    from latentz.bundle import list_bundles

    return sorted({web_model, "mnist-z10", "mnist-z32"} & {path.name for path in list_bundles()})


def _api_operations() -> list[tuple[str, str]]:
    """(method, path) of every operation in the app's OpenAPI schema, known when tests are collected."""
    from latentz.server import create_app

    paths = create_app(preload=False).openapi()["paths"]
    return [(method.upper(), path) for path, operations in paths.items() for method in operations]


API_OPERATIONS = _api_operations()


@pytest.fixture(scope="module")
def api_schema(live_server: LiveServer, web_model: str) -> schemathesis.BaseSchema:
    """The schema as the live server serves it, with real values mixed into generation."""
    config = schemathesis.Config.from_dict({"request-timeout": 60})
    schema = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json", config=config)
    install_realistic_values(schema, web_model, WEB_TEST_LIMITS["max_interpolation_steps"])
    return schema


@pytest.mark.parametrize(("method", "path"), API_OPERATIONS, ids=[f"{m} {p}" for m, p in API_OPERATIONS])
def test_every_operation_answers_as_documented(
    api_schema: schemathesis.BaseSchema, method: str, path: str
) -> None:
    operation = api_schema[path][method]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
    )

    @hypothesis.given(case=cases)
    @FUZZ_SETTINGS
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS)

    fuzz()


def test_every_api_route_is_fuzzed(live_server: LiveServer) -> None:
    """The operations fuzzed are every /api route of the app (a new route cannot slip past)."""
    routes: set[tuple[str, str]] = set()
    for route in iter_route_contexts(live_server.app.routes):  # through the included routers
        if getattr(route, "include_in_schema", False) and route.path.startswith("/api/"):
            routes |= {(method, route.path) for method in route.methods - {"HEAD"}}
    assert routes == set(API_OPERATIONS)
    assert len(API_OPERATIONS) == 14


UPLOAD_OPERATIONS = [(method, path) for method, path in API_OPERATIONS if path.endswith(UPLOAD_SUFFIXES)]


@pytest.mark.parametrize(("method", "path"), UPLOAD_OPERATIONS, ids=[p for _, p in UPLOAD_OPERATIONS])
def test_real_and_damaged_uploads_answer_as_documented(
    api_schema: schemathesis.BaseSchema, web_model: str, method: str, path: str
) -> None:
    """Real images and .latentz files, whole, truncated, with a flipped byte, or sent to the wrong
    endpoint, with random qualities and formats: every answer as documented, never a 5xx.

    Built as explicit cases: schemathesis would judge raw bytes to violate ``type: string`` and
    call these schema-valid uploads negative."""
    operation = api_schema[path][method]
    images, files = real_uploads(web_model)
    own, other = (files, images) if path.endswith(("decode", "read")) else (images, files)
    uploads = st.one_of(
        st.sampled_from(own), st.sampled_from(own[:2]).flatmap(flip_a_byte), st.sampled_from(other)
    )
    models = st.sampled_from(installed_models(web_model))
    form = {"quality": st.integers(0, 100)} if path.endswith("encode") else {}
    formats = [None, *_formats(operation)]

    @hypothesis.given(
        upload=uploads, name=models, form=st.fixed_dictionaries(form), output=st.sampled_from(formats)
    )
    @FUZZ_SETTINGS
    def fuzz(upload: bytes, name: str, form: dict[str, Any], output: str | None) -> None:
        case = operation.Case(
            path_parameters={"name": name} if "{name}" in path else {},
            query={"format": output} if output else {},
            body={"file": upload, **form},
            media_type="multipart/form-data",
        )
        case.call_and_validate(checks=CHECKS[:-1])

    fuzz()


def _formats(operation: Any) -> list[str]:
    """The values of an operation's ``format`` query parameter, from the schema."""
    for parameter in operation.definition.raw.get("parameters", []):
        if parameter["name"] == "format":
            return list(parameter["schema"]["enum"])
    return []
