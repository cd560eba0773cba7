"""The bundled spec is Klaviyo's 2026-07-15 revision and its index reads the rules the sandbox enforces."""

import gzip
import hashlib
import json


from klaviyo_sandbox.spec import SPEC_PATH, load_spec, parse_filter_description, parse_rate_limits

# SHA-256 of Klaviyo's published OpenAPI file (stable.json) of revision 2026-07-15, byte for byte:
# the bundled copy must be exactly that file (checked against the reference when it was bundled)
REFERENCE_SHA256 = "deb88f1dfad82fd530433555d3180fdc29633143d21e7347a9726cbea3fae2a9"


def test_bundled_spec_is_the_reference_revision():
    raw = gzip.decompress(SPEC_PATH.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == REFERENCE_SHA256
    assert json.loads(raw)["info"]["version"] == "2026-07-15"


def test_rate_limits_parsed_including_additional_fields_buckets():
    spec = load_spec()
    profiles = spec.operation("GET", "/api/profiles")
    assert (profiles.rate_limit.burst_per_second, profiles.rate_limit.steady_per_minute) == (75, 750)
    slow = profiles.extra_rate_limits[("additional-fields[profile]", "predictive_analytics")]
    assert (slow.burst_per_second, slow.steady_per_minute) == (10, 150)
    report = spec.operation("POST", "/api/campaign-values-reports").rate_limit
    assert (report.burst_per_second, report.steady_per_minute, report.daily) == (1, 2, 225)
    assert all(op.rate_limit for op in spec.operations.values()), "every operation states its limits"


def test_filters_sorts_and_page_sizes_per_endpoint():
    spec = load_spec()
    profiles = spec.operation("GET", "/api/profiles")
    assert profiles.filters["updated"] == ("greater-than", "less-than")
    assert profiles.page_size.maximum == 100 and "updated" in profiles.sorts
    lists = spec.operation("GET", "/api/lists")
    assert lists.filters["updated"] == ("greater-than",) and lists.page_size.maximum == 10
    assert "created" not in spec.operation("GET", "/api/metrics").filters
    campaigns = spec.operation("GET", "/api/campaigns")
    assert campaigns.filter_required and campaigns.filters["messages.channel"] == ("equals",)
    assert spec.operation("GET", "/api/events").page_size.maximum == 1000


def test_match_resolves_path_parameters():
    operation, params = load_spec().match("DELETE", "/api/lists/Xy12/relationships/profiles")
    assert operation.operation_id == "remove_profiles_from_list" and params == {"id": "Xy12"}
    assert load_spec().match("GET", "/api/nope") is None


def test_parsers_on_raw_descriptions():
    main, extra = parse_rate_limits("*Rate limits*:<br>Burst: `3/s`<br>Steady: `60/m`")
    assert (main.burst_per_second, main.steady_per_minute, extra) == (3, 60, {})
    allowed = parse_filter_description("x<br>Allowed field(s)/operator(s):<br>`a.b`: `equals`, `any`<br>`c`: `has`")
    assert allowed == {"a.b": ("equals", "any"), "c": ("has",)}
