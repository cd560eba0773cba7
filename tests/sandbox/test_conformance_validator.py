"""The spec validator itself: accepts spec-shaped bodies, catches drift and names the JSON path."""

from __future__ import annotations

import copy

import pytest

from klaviyo_sandbox.conformance import (
    ConformanceError,
    ConformanceMiddleware,
    DriftCollector,
    UnknownOperation,
    validate_response,
)

PROFILE_PAGE = {
    "data": [
        {
            "type": "profile",
            "id": "01GDDKASAP8TKDDA2GRZDSVP4H",
            "attributes": {
                "email": "sarah.mason@klaviyo-demo.com",
                "phone_number": None,
                "external_id": None,
                "first_name": "Sarah",
                "created": "2022-11-08T00:00:00+00:00",
                "updated": "2022-11-08T00:00:00+00:00",
                "location": {"city": "Boston", "latitude": 42.3, "longitude": "-71.0"},
                "properties": {"anything": {"nested": [1, 2]}},
            },
            "links": {"self": "https://a.klaviyo.com/api/profiles/01GDDKASAP8TKDDA2GRZDSVP4H/"},
        }
    ],
    "links": {"self": "https://a.klaviyo.com/api/profiles/", "next": "https://a.klaviyo.com/api/profiles/?page%5Bcursor%5D=x"},
}
CLIENT_ERROR = {"errors": [{"id": "e1", "code": "invalid", "title": "Invalid input.", "detail": "bad", "source": {"pointer": "/data"}}]}


def test_accepts_spec_shaped_bodies():
    validate_response("GET", "/api/profiles", 200, PROFILE_PAGE)
    validate_response("GET", "/api/profiles/", 200, PROFILE_PAGE)  # trailing slash, as Klaviyo links use
    validate_response("GET", "/klaviyo/api/profiles", 200, PROFILE_PAGE)  # through the Maton gateway prefix
    validate_response("GET", "/api/profiles", 400, CLIENT_ERROR)
    validate_response("GET", "/api/profiles", 503, CLIENT_ERROR)
    validate_response("DELETE", "/api/lists/Y6nRLr", 204, b"")
    validate_response("POST", "/api/events", 202, None)


@pytest.mark.parametrize(
    ("mutate", "path_fragment", "reason"),
    [
        (lambda b: b["data"][0]["attributes"].__setitem__("email", 42), "$.data[0].attributes.email", "is not of type"),
        (lambda b: b["data"][0].__setitem__("type", "profiles"), "$.data[0].type", "is not one of"),
        (lambda b: b["data"][0]["attributes"].__setitem__("created", "2022-11-08 00:00"), "$.data[0].attributes.created", "date-time"),
        (lambda b: b["data"][0]["attributes"].__setitem__("updated", "2022-11-08T00:00:00"), "$.data[0].attributes.updated", "date-time"),
        (lambda b: b["data"][0]["attributes"].__setitem__("favourite_colour", "red"), "$.data[0].attributes", "favourite_colour"),
        (lambda b: b["data"][0].pop("id") and b["data"][0].__setitem__("uuid", "x"), "$.data[0]", "uuid"),
        (lambda b: b["links"].pop("self"), "$.links", "'self' is a required property"),
        (lambda b: b["links"].__setitem__("next", "not a uri"), "$.links.next", "uri"),
        (lambda b: b["data"][0]["attributes"]["location"].__setitem__("latitude", [1]), "$.data[0].attributes.location.latitude", ""),
        (lambda b: b.__setitem__("data", {"type": "profile"}), "$.data", "is not of type 'array'"),
    ],
)
def test_catches_drift_and_names_the_json_path(mutate, path_fragment, reason):
    body = copy.deepcopy(PROFILE_PAGE)
    mutate(body)
    with pytest.raises(ConformanceError) as caught:
        validate_response("GET", "/api/profiles", 200, body)
    message = str(caught.value)
    assert "get_profiles" in message and f"at {path_fragment}" in message and reason in message


def test_error_bodies_validate_against_client_and_server_error():
    with pytest.raises(ConformanceError, match=r"\$\.errors\[0\]: 'detail' is a required property"):
        validate_response("GET", "/api/lists", 404, {"errors": [{"id": "x", "code": "not_found", "title": "Not found"}]})
    with pytest.raises(ConformanceError, match="ServerError"):
        validate_response("GET", "/api/lists", 500, {"message": "boom"})


def test_body_presence_must_match_the_status():
    with pytest.raises(ConformanceError, match="no body"):
        validate_response("DELETE", "/api/lists/abc", 204, {"data": None})
    with pytest.raises(ConformanceError, match="got none"):
        validate_response("GET", "/api/lists", 200, b"")
    with pytest.raises(ConformanceError, match="not JSON"):
        validate_response("GET", "/api/lists", 200, b"<html>oops</html>")
    with pytest.raises(ConformanceError, match="documents no response status 201"):
        validate_response("GET", "/api/lists", 201, {"data": []})


def test_unknown_paths_are_reported_as_such():
    with pytest.raises(UnknownOperation):
        validate_response("GET", "/api/not-a-thing", 200, {})


def test_middleware_records_drift_without_changing_the_response():
    served = {"body": b'{"data": [{"type": "list", "id": "L1", "attributes": {"name": 5}, "links": {"self": "http://x/api/lists/L1/"}}],'
                      b' "links": {"self": "http://x/api/lists/"}}'}

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/vnd.api+json")])
        return [served["body"]]

    def call(wrapped):
        seen = {}
        result = wrapped({"PATH_INFO": "/api/lists", "REQUEST_METHOD": "GET"},
                         lambda status, headers, exc=None: seen.update(status=status, headers=dict(headers)))
        return seen["status"], b"".join(result), seen["headers"].get("X-Sandbox-Conformance")

    collector = DriftCollector()
    wrapped = ConformanceMiddleware(app, collector=collector)
    assert call(wrapped) == ("200 OK", served["body"], "drift")
    drift = collector.drain()
    assert len(drift) == 1 and "$.data[0].attributes.name" in drift[0]
    assert collector.drain() == []

    served["body"] = b'{"data": [], "links": {"self": "http://x/api/lists/"}}'
    assert call(wrapped) == ("200 OK", served["body"], None) and collector.drain() == []


def test_sparse_fieldsets_may_omit_required_attributes_but_nothing_else():
    sparse = {"data": [{"type": "campaign", "id": "01C", "attributes": {"name": "Spring"},
                        "links": {"self": "https://a.klaviyo.com/api/campaigns/01C/"}}],
              "links": {"self": "https://a.klaviyo.com/api/campaigns/"}}
    with pytest.raises(ConformanceError, match="'status' is a required property"):
        validate_response("GET", "/api/campaigns", 200, sparse)
    validate_response("GET", "/api/campaigns?fields%5Bcampaign%5D=name", 200, sparse)
    sparse["data"][0]["attributes"]["name"] = 7
    with pytest.raises(ConformanceError, match="attributes.name: 7 is not of type"):
        validate_response("GET", "/api/campaigns?fields[campaign]=name", 200, sparse)
    del sparse["data"][0]["id"]
    with pytest.raises(ConformanceError, match="'id' is a required property"):
        validate_response("GET", "/api/campaigns?fields[campaign]=name", 200, sparse)


def test_known_drift_entries_excuse_only_what_they_name(monkeypatch):
    from klaviyo_sandbox import conformance

    monkeypatch.setattr(conformance, "KNOWN_DRIFT", [conformance.KnownDrift(
        r"get_profiles", r"\.attributes$", r"'favourite_colour' was unexpected", "example")])
    body = copy.deepcopy(PROFILE_PAGE)
    body["data"][0]["attributes"]["favourite_colour"] = "red"
    conformance.default_validator().validate("GET", "/api/profiles", 200, body, tolerate=conformance.tolerated)
    body["data"][0]["attributes"]["email"] = 42
    with pytest.raises(ConformanceError, match="attributes.email"):
        conformance.default_validator().validate("GET", "/api/profiles", 200, body, tolerate=conformance.tolerated)
    with pytest.raises(ConformanceError, match="favourite_colour"):  # direct validation stays strict
        validate_response("GET", "/api/profiles", 200, body)
    assert conformance.DRIFT.tolerated.pop("get_profiles example") >= 1
