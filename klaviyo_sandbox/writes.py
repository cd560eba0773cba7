"""Write endpoints the reverse sync needs, registered on the sandbox app (same auth, revision, limits, faults).

Profiles: ``create_or_update_profile`` (POST /api/profile-import: 201 created / 200 updated),
``create_profile`` (POST /api/profiles: 409 ``duplicate_profile`` when an identifier exists),
``update_profile`` (PATCH /api/profiles/{id}).  Bulk: ``bulk_import_profiles`` and its job
reads (see ``jobs.py``), ``bulk_create_events``, ``bulk_subscribe_profiles``.  Lists:
``create_list``, ``update_list``, ``delete_list``, ``add_profiles_to_list`` /
``remove_profiles_from_list`` (at most 1000 per call).  Events: ``create_event`` (202).

Request bodies are checked against the operation's spec request schema first (400 with the
JSON pointer of the first problem); identity and merge rules live in ``identity.py``.
"""

from __future__ import annotations

from typing import Any

import orjson
from werkzeug.wrappers import Response

from .app import RequestContext
from .conformance import default_validator, request_problems
from .envelopes import Serializer, collection_body, decode_cursor, encode_cursor, jstr, page_url, pick_fields
from .errors import ApiError, invalid, not_found
from .filters import parse_filter, validate
from .identity import check_profile_attributes, duplicate, normalise, resolve_target, upsert_profile, write_profile
from .ingest import bulk_create_events, create_event, subscribe_profiles
from .jobs import MAX_PAYLOAD_BYTES, MAX_PROFILES, ImportJob, ImportJobs
from .reads import base_source, collection_response, fetch_rows, ReadOptions, page_size, single_response, Source
from .store import KINDS

MAX_LIST_MEMBERS_PER_CALL = 1000
MAX_EVENT_ENTRIES = 1000
MAX_SUBSCRIBE_PROFILES = 1000
MAX_PROFILE_PAYLOAD_BYTES = 100 * 1024


def too_large(limit: int, what: str) -> ApiError:
    return ApiError(413, "request_too_large", "Request entity too large.",
                    f"The request body is larger than the {limit // 1024} KB allowed for {what}.", pointer="/data")


def body_of(ctx: RequestContext, max_bytes: int | None = None) -> dict[str, Any]:
    """The parsed body, checked against the size limit and the spec request schema."""
    raw = ctx.request.get_data(cache=True)
    if max_bytes is not None and len(raw) > max_bytes:
        raise too_large(max_bytes, ctx.op.operation_id)
    body = ctx.json_body()
    problems = request_problems(ctx.op, body)
    if problems:
        pointer, message = problems[0]
        raise invalid(f"Invalid request body at {pointer}: {message}", pointer=pointer if pointer != "/" else "/data")
    return body


def shaped(ctx: RequestContext, response: Response, status: int | None = None) -> Response:
    """The read engine's response trimmed to this operation's resource shape (e.g. profile write
    responses have no ``conversations`` relationship), with ``status`` set."""
    status = status or response.status_code
    shape = default_validator().resource_shape(ctx.op, status) if response.status_code < 300 else None
    if shape is not None:
        attrs_allowed, rels_allowed = shape
        body = orjson.loads(response.get_data())
        items = body["data"] if isinstance(body.get("data"), list) else [body.get("data")]
        for item in items:
            if not isinstance(item, dict):
                continue
            if isinstance(item.get("attributes"), dict):
                item["attributes"] = {k: v for k, v in item["attributes"].items() if k in attrs_allowed}
            if isinstance(item.get("relationships"), dict):
                item["relationships"] = {k: v for k, v in item["relationships"].items() if k in rels_allowed}
        response.set_data(orjson.dumps(body))
    response.status_code = status
    return response


def _respond_profile(ctx: RequestContext, profile_id: str, status: int):
    return shaped(ctx, single_response(ctx, KINDS["profile"], profile_id), status)


# -- profiles --------------------------------------------------------------------------------
def create_or_update_profile(ctx: RequestContext):
    """POST /api/profile-import: upsert by id/identifiers; ``null`` clears; 201 created, 200 updated."""
    data = body_of(ctx, MAX_PROFILE_PAYLOAD_BYTES)["data"]
    attrs = check_profile_attributes(data["attributes"])
    meta = data.get("meta") or {}
    profile_id, created = upsert_profile(ctx.store, ctx.account, attrs, profile_id=data.get("id") or None,
                                         nulls_clear=True, patch_properties=meta.get("patch_properties"))
    return _respond_profile(ctx, profile_id, 201 if created else 200)


def create_profile(ctx: RequestContext):
    """POST /api/profiles: 201, or 409 duplicate_profile when any identifier already exists."""
    data = body_of(ctx, MAX_PROFILE_PAYLOAD_BYTES)["data"]
    attrs = normalise(check_profile_attributes(data["attributes"]))
    with ctx.store.lock:
        existing = resolve_target(ctx.store, ctx.account, attrs)
        if existing is not None:
            raise duplicate(existing)
        if not any(attrs.get(k) for k in ("email", "phone_number", "external_id", "anonymous_id")):
            raise invalid("One of email, phone_number or external_id is required to create a profile.",
                          pointer="/data/attributes")
        profile_id, _ = write_profile(ctx.store, ctx.account, None, attrs, nulls_clear=False)
    return _respond_profile(ctx, profile_id, 201)


def update_profile(ctx: RequestContext):
    """PATCH /api/profiles/{id}: ``null`` clears, absent fields stay; 409 when an identifier belongs to another profile."""
    profile_id = ctx.path_params["id"]
    data = body_of(ctx, MAX_PROFILE_PAYLOAD_BYTES)["data"]
    if data.get("id") != profile_id:
        raise ApiError(409, "conflict", "Conflict.", f"The id in the body ({data.get('id')}) does not match the URL ({profile_id}).",
                       pointer="/data/id")
    attrs = normalise(check_profile_attributes(data["attributes"]))
    meta = data.get("meta") or {}
    with ctx.store.lock:
        resolve_target(ctx.store, ctx.account, attrs, profile_id)
        write_profile(ctx.store, ctx.account, profile_id, attrs, nulls_clear=True,
                      patch_properties=meta.get("patch_properties"))
    return _respond_profile(ctx, profile_id, 200)


# -- lists -----------------------------------------------------------------------------------
def create_list(ctx: RequestContext):
    attrs = body_of(ctx)["data"]["attributes"]
    name = attrs["name"].strip()
    if not name:
        raise invalid("A list name is required.", pointer="/data/attributes/name")
    list_id = ctx.store.insert(ctx.account, "list", {"name": name, "opt_in_process": attrs.get("opt_in_process") or "single_opt_in"})
    return shaped(ctx, single_response(ctx, KINDS["list"], list_id), 201)


def update_list(ctx: RequestContext):
    list_id = ctx.path_params["id"]
    data = body_of(ctx)["data"]
    if not ctx.store.exists(ctx.account, "list", list_id):
        raise not_found(f"A list with id {list_id} does not exist.")
    changes = {k: v for k, v in data["attributes"].items() if v is not None}
    ctx.store.update(ctx.account, "list", list_id, changes)
    return shaped(ctx, single_response(ctx, KINDS["list"], list_id))


def delete_list(ctx: RequestContext):
    if not ctx.store.delete(ctx.account, "list", ctx.path_params["id"]):
        raise not_found(f"A list with id {ctx.path_params['id']} does not exist.")
    return ctx.respond(None, 204)


def _member_ids(ctx: RequestContext) -> list[str]:
    data = body_of(ctx)["data"]
    if len(data) > MAX_LIST_MEMBERS_PER_CALL:
        raise invalid(f"At most {MAX_LIST_MEMBERS_PER_CALL} profiles can be sent per call; got {len(data)}.", pointer="/data")
    list_id = ctx.path_params["id"]
    if not ctx.store.exists(ctx.account, "list", list_id):
        raise not_found(f"A list with id {list_id} does not exist.")
    ids = [item["id"] for item in data]
    missing = [i for i in ids if not ctx.store.exists(ctx.account, "profile", i)]
    if missing:
        index = ids.index(missing[0])
        raise invalid(f"Profile {missing[0]} does not exist.", pointer=f"/data/{index}/id")
    return ids


def add_profiles_to_list(ctx: RequestContext):
    ids = _member_ids(ctx)
    with ctx.store.lock:
        if ctx.store.add_members(ctx.account, "list", ctx.path_params["id"], ids):
            ctx.store.update(ctx.account, "list", ctx.path_params["id"], {})
    return ctx.respond(None, 204)


def remove_profiles_from_list(ctx: RequestContext):
    ids = _member_ids(ctx)
    with ctx.store.lock:
        if ctx.store.remove_members(ctx.account, "list", ctx.path_params["id"], ids):
            ctx.store.update(ctx.account, "list", ctx.path_params["id"], {})
    return ctx.respond(None, 204)


# -- events and consent ------------------------------------------------------------------------
def post_event(ctx: RequestContext):
    create_event(ctx.store, ctx.account, body_of(ctx, MAX_PROFILE_PAYLOAD_BYTES))
    return ctx.respond(None, 202)


def post_event_bulk(ctx: RequestContext):
    entries = body_of(ctx, MAX_PAYLOAD_BYTES)["data"]["attributes"]["events-bulk-create"]["data"]
    if len(entries) > MAX_EVENT_ENTRIES:
        raise invalid(f"At most {MAX_EVENT_ENTRIES} entries per request; got {len(entries)}.",
                      pointer="/data/attributes/events-bulk-create/data")
    bulk_create_events(ctx.store, ctx.account, entries)
    return ctx.respond(None, 202)


def post_subscriptions(ctx: RequestContext):
    data = body_of(ctx, MAX_PAYLOAD_BYTES)["data"]
    entries = data["attributes"]["profiles"]["data"]
    if len(entries) > MAX_SUBSCRIBE_PROFILES:
        raise invalid(f"At most {MAX_SUBSCRIBE_PROFILES} profiles per request; got {len(entries)}.",
                      pointer="/data/attributes/profiles/data")
    list_id = (((data.get("relationships") or {}).get("list") or {}).get("data") or {}).get("id")
    subscribe_profiles(ctx.store, ctx.account, entries, list_id)
    return ctx.respond(None, 202)


# -- bulk profile import jobs ------------------------------------------------------------------
JOB_TYPE = "profile-bulk-import-job"


def _jobs(ctx: RequestContext) -> ImportJobs:
    return ctx.app.import_jobs  # attached by attach()


def job_resource(ctx: RequestContext, job: ImportJob) -> dict[str, Any]:
    root = f"{ctx.link_base}/api/profile-bulk-import-jobs/{job.id}"
    attributes = job.attributes()
    fields = ctx.args.get(f"fields[{JOB_TYPE}]")
    if fields:
        attributes = pick_fields(attributes, [f.strip() for f in fields.split(",") if f.strip()])
    return {
        "type": JOB_TYPE, "id": job.id, "attributes": attributes,
        "relationships": {
            "lists": {"data": [{"type": "list", "id": i} for i in job.list_ids],
                      "links": {"self": f"{root}/relationships/lists/", "related": f"{root}/lists/"}},
            "profiles": {"links": {"self": f"{root}/relationships/profiles/", "related": f"{root}/profiles/"}},
            "import-errors": {"links": {"related": f"{root}/import-errors/"}},
        },
        "links": {"self": f"{root}/"},
    }


def post_import_job(ctx: RequestContext):
    data = body_of(ctx, MAX_PAYLOAD_BYTES)["data"]
    profiles = data["attributes"]["profiles"]["data"]
    if not profiles:
        raise invalid("At least one profile is required.", pointer="/data/attributes/profiles/data")
    if len(profiles) > MAX_PROFILES:
        raise invalid(f"At most {MAX_PROFILES} profiles per job; got {len(profiles)}.",
                      pointer="/data/attributes/profiles/data")
    list_ids = [item["id"] for item in ((data.get("relationships") or {}).get("lists") or {}).get("data") or []]
    for list_id in list_ids:
        if not ctx.store.exists(ctx.account, "list", list_id):
            raise not_found(f"A list with id {list_id} does not exist.")
    jobs = _jobs(ctx)
    job = jobs.submit(ctx.account, profiles, list_ids)
    body = {"data": job_resource(ctx, job), "links": {"self": f"{ctx.link_base}/api/profile-bulk-import-jobs/"}}
    jobs.schedule(job)
    return ctx.respond(body, 202)


def _job(ctx: RequestContext, poll: bool = False) -> ImportJob:
    job_id = ctx.path_params.get("job_id") or ctx.path_params["id"]
    job = _jobs(ctx).get(ctx.account, job_id, poll=poll)
    if job is None:
        raise not_found(f"A profile bulk import job with id {job_id} does not exist.")
    return job


def _self_links(ctx: RequestContext, next_cursor: str | None = None) -> dict[str, str]:
    args = list(ctx.args.items(multi=True))
    links = {"self": page_url(ctx.link_base, ctx.request.path, args, ctx.args.get("page[cursor]"))}
    if next_cursor is not None:
        links["next"] = page_url(ctx.link_base, ctx.request.path, args, next_cursor)
    return links


def _page(ctx: RequestContext, items: list[Any]) -> tuple[list[Any], str | None]:
    """Offset paging over an in-memory list with Klaviyo-style opaque cursors."""
    size = page_size(ctx) or 20
    cursor = ctx.args.get("page[cursor]")
    start = int(decode_cursor(cursor)[0]) if cursor else 0
    chunk = items[start:start + size]
    return chunk, encode_cursor([start + size]) if start + size < len(items) else None


def get_import_job(ctx: RequestContext):
    job = _job(ctx, poll=True)
    body: dict[str, Any] = {"data": job_resource(ctx, job), "links": _self_links(ctx)}
    include = ctx.args.get("include")
    if include is not None:
        if include != "lists":
            raise invalid(f"Invalid include {include!r}; allowed: lists.", parameter="include")
        ser = Serializer(ctx.spec, ctx.link_base)
        body["included"] = []
        for list_id in job.list_ids:
            record = ctx.store.get(ctx.account, "list", list_id)
            if record is not None:
                item = ser.resource(KINDS["list"], list_id, orjson.dumps(record.attributes).decode(),
                                    fields=_fields(ctx, "list"))
                body["included"].append(orjson.loads(item))
    return ctx.respond(body)


def _fields(ctx: RequestContext, type_: str) -> tuple[str, ...] | None:
    raw = ctx.args.get(f"fields[{type_}]")
    return tuple(f.strip() for f in raw.split(",") if f.strip()) if raw else None


def list_import_jobs(ctx: RequestContext):
    jobs = _jobs(ctx).list(ctx.account)
    raw = ctx.args.get("filter")
    if raw:
        conditions = parse_filter(raw)
        validate(conditions, ctx.op.filters, ctx.now())
        for cond in conditions:
            wanted = cond.value if isinstance(cond.value, (list, tuple)) else [cond.value]
            jobs = [j for j in jobs if j.status in wanted]
    sort = ctx.args.get("sort")
    if sort is not None:
        if sort not in ctx.op.sorts:
            raise invalid(f"Invalid sort {sort!r}; allowed: {', '.join(ctx.op.sorts)}.", parameter="sort")
        jobs = sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=sort.startswith("-"))
    chunk, next_cursor = _page(ctx, jobs)
    return ctx.respond({"data": [job_resource(ctx, j) for j in chunk], "links": _self_links(ctx, next_cursor)})


def _ids_source(ctx: RequestContext, type_: str, ids: list[str]) -> Source:
    source = base_source(ctx, KINDS[type_])
    source.where.append("t.id IN (SELECT unnest(?))")
    source.params.append(list(ids) or [""])
    return source


def job_profiles(ctx: RequestContext):
    return shaped(ctx, collection_response(ctx, _ids_source(ctx, "profile", _job(ctx).profile_ids)))


def job_profile_ids(ctx: RequestContext):
    source = _ids_source(ctx, "profile", _job(ctx).profile_ids)
    rows, next_cursor = fetch_rows(ctx, source, ReadOptions({}, (), ()), [], (None, False), page_size(ctx))
    items = [f'{{"type":"profile","id":{jstr(r[1])}}}' for r in rows]
    return ctx.respond(collection_body(items, _self_links(ctx, next_cursor)))


def job_lists(ctx: RequestContext):
    return shaped(ctx, collection_response(ctx, _ids_source(ctx, "list", _job(ctx).list_ids)))


def job_list_ids(ctx: RequestContext):
    items = [f'{{"type":"list","id":{jstr(i)}}}' for i in _job(ctx).list_ids]
    return ctx.respond(collection_body(items, _self_links(ctx)))


def job_import_errors(ctx: RequestContext):
    chunk, next_cursor = _page(ctx, _job(ctx).errors)
    items = [e.resource() for e in chunk]
    fields = _fields(ctx, "import-error")
    if fields:
        for item in items:
            item["attributes"] = pick_fields(item["attributes"], fields)
    return ctx.respond({"data": items, "links": _self_links(ctx, next_cursor)})


ROUTES = {
    ("POST", "/api/profile-import"): create_or_update_profile,
    ("POST", "/api/profiles"): create_profile,
    ("PATCH", "/api/profiles/{id}"): update_profile,
    ("POST", "/api/lists"): create_list,
    ("PATCH", "/api/lists/{id}"): update_list,
    ("DELETE", "/api/lists/{id}"): delete_list,
    ("POST", "/api/lists/{id}/relationships/profiles"): add_profiles_to_list,
    ("DELETE", "/api/lists/{id}/relationships/profiles"): remove_profiles_from_list,
    ("POST", "/api/events"): post_event,
    ("POST", "/api/event-bulk-create-jobs"): post_event_bulk,
    ("POST", "/api/profile-subscription-bulk-create-jobs"): post_subscriptions,
    ("POST", "/api/profile-bulk-import-jobs"): post_import_job,
    ("GET", "/api/profile-bulk-import-jobs"): list_import_jobs,
    ("GET", "/api/profile-bulk-import-jobs/{job_id}"): get_import_job,
    ("GET", "/api/profile-bulk-import-jobs/{id}/profiles"): job_profiles,
    ("GET", "/api/profile-bulk-import-jobs/{id}/relationships/profiles"): job_profile_ids,
    ("GET", "/api/profile-bulk-import-jobs/{id}/lists"): job_lists,
    ("GET", "/api/profile-bulk-import-jobs/{id}/relationships/lists"): job_list_ids,
    ("GET", "/api/profile-bulk-import-jobs/{id}/import-errors"): job_import_errors,
}


def attach(sandbox: Any) -> None:
    """Register the write endpoints on ``sandbox.app`` (called by ``Sandbox`` at construction)."""
    sandbox.app.import_jobs = ImportJobs(sandbox.store)
    sandbox.import_jobs = sandbox.app.import_jobs
    for (method, path), handler in ROUTES.items():
        sandbox.app.route(method, path, handler)
