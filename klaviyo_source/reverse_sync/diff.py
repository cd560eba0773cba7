"""Local validation, hashing and change detection, vectorised in an in-memory DuckDB over Arrow.

``prepare`` turns audience rows into Klaviyo fields (normalised identifiers, mapped
attributes and properties), an identity key, a content hash, the set of non-null
fields and a rejection reason. ``diff`` joins that with the sync's state and says,
per identity, what has to happen: upsert, clear, add to list, subscribe, remove.
A million rows take seconds: everything is one SQL pass over Arrow buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import orjson
import pyarrow as pa

from .mapping import IDENTIFIERS, ReverseSyncConfig

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s.]+$"
E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
MAX_PROFILE_BYTES = 100_000  # spec bulk_import_profiles: 100KB per profile
STATE_COLUMNS = {
    "sync_name": pa.string(), "identity_key": pa.string(), "profile_hash": pa.string(),
    "present_fields": pa.string(), "profile_id": pa.string(), "list_id": pa.string(),
    "list_name": pa.string(), "in_list": pa.bool_(), "consent_hash": pa.string(),
    "job_id": pa.string(), "synced_at": pa.timestamp("us", tz="UTC"),
}


def q(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def empty_state() -> pa.Table:
    return pa.table({k: pa.array([], t) for k, t in STATE_COLUMNS.items()})


@dataclass
class Plan:
    """What a run has to do, as Arrow tables (one row per identity)."""

    read: int
    rejected: pa.Table  # identity_key, reason, row_json (the source row)
    upserts: pa.Table  # prepared rows to send through bulk import (+ __body, __is_new, __cleared, __needs_list...)
    clears: int
    consents: pa.Table  # prepared rows whose explicit consent is new
    departed: pa.Table  # state rows of members no longer in the audience (mirror mode)
    unchanged: int
    fields: list[str]  # prepared Klaviyo field columns (email, location.city, properties.x ...)


def _value_sql(target: str, column: str, arrow_type: pa.DataType) -> str:
    col = q(column)
    if target == "email":
        return f"nullif(lower(trim(CAST({col} AS VARCHAR))), '')"
    if target == "phone_number":
        return f"nullif(regexp_replace(trim(CAST({col} AS VARCHAR)), '[\\s().-]', '', 'g'), '')"
    if target == "external_id":
        return f"nullif(trim(CAST({col} AS VARCHAR)), '')"
    if target in ("location.latitude", "location.longitude"):
        return f"TRY_CAST({col} AS DOUBLE)"
    if target.startswith("properties."):
        if pa.types.is_decimal(arrow_type):
            return f"CAST({col} AS DOUBLE)"
        if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
            return f"base64({col})"
        return col
    return f"CAST({col} AS VARCHAR)"


def prepare_sql(config: ReverseSyncConfig, schema: pa.Schema) -> tuple[str, list[str]]:
    """SQL over the registered view ``src`` producing the prepared rows; returns (sql, field columns)."""
    fields = list(config.columns)
    selects = [f"{_value_sql(t, c, schema.field(c).type)} AS {q(t)}" for t, c in config.columns.items()]
    if config.properties_json:
        col = q(config.properties_json)
        json_type = schema.field(config.properties_json).type
        as_text = f"to_json({col})" if pa.types.is_struct(json_type) or pa.types.is_map(json_type) else f"CAST({col} AS VARCHAR)"
        selects.append(f"nullif(trim({as_text}), '') AS __props_json")
    else:
        selects.append("CAST(NULL AS VARCHAR) AS __props_json")
    consent_parts = []
    for consent in config.consent:
        flag = f"__consent_{consent.channel}"
        at = f"__consent_{consent.channel}_at"
        selects.append(f"coalesce(TRY_CAST({q(consent.column)} AS BOOLEAN), false) AS {flag}")
        selects.append(f"TRY_CAST({q(consent.consented_at)} AS TIMESTAMPTZ) AS {at}" if consent.consented_at
                       else f"CAST(NULL AS TIMESTAMPTZ) AS {at}")
        consent_parts.append(f"CASE WHEN {flag} THEN '{consent.channel}@' || coalesce(CAST({at} AS VARCHAR), '') END")
    identity_parts = [f"'{k}:' || {q(k)}" for k in IDENTIFIERS if k in config.identifiers]
    non_identifiers = [f for f in fields if f not in IDENTIFIERS]
    present = ", ".join(f"CASE WHEN {q(f)} IS NOT NULL THEN {_lit(f)} END" for f in non_identifiers)
    props_keys = ("list_transform(json_keys(CAST(__props_json AS JSON)), lambda k: 'json.' || k)"
                  if config.properties_json else "[]")
    checks = [
        f"WHEN __identity IS NULL THEN 'no identifier: needs one of {', '.join(config.identifiers)}'",
    ]
    if "email" in config.identifiers:
        checks.append(f"WHEN email IS NOT NULL AND NOT regexp_full_match(email, {_lit(EMAIL_PATTERN)}) "
                      "THEN 'invalid email: ' || email")
    if "phone_number" in config.identifiers:
        checks.append(f"WHEN phone_number IS NOT NULL AND NOT regexp_full_match(phone_number, {_lit(E164_PATTERN)}) "
                      "THEN 'invalid phone_number (E.164 needed, like +14155550100): ' || phone_number")
    for axis, bound in (("latitude", 90), ("longitude", 180)):
        target = f"location.{axis}"
        if target in config.columns:
            raw = q(f"__raw_{axis}")
            selects.append(f"CAST({q(config.columns[target])} AS VARCHAR) AS {raw}")
            checks.append(f"WHEN ({raw} IS NOT NULL AND {q(target)} IS NULL) OR abs({q(target)}) > {bound} "
                          f"THEN 'invalid {target}: ' || {raw}")
    for target, column in config.columns.items():
        arrow_type = schema.field(column).type
        if target.startswith("properties.") and pa.types.is_floating(arrow_type):
            checks.append(f"WHEN isnan({q(target)}) OR isinf({q(target)}) "
                          f"THEN '{target[11:]}: ' || CAST({q(target)} AS VARCHAR) || ' is not a number Klaviyo accepts'")
    if config.properties_json:
        checks.append("WHEN __props_json IS NOT NULL AND (NOT json_valid(__props_json) "
                      "OR json_type(CAST(__props_json AS JSON)) <> 'OBJECT') "
                      f"THEN '{config.properties_json}: not a JSON object'")
        checks.append("WHEN __props_json IS NOT NULL AND len(list_filter(json_keys(CAST(__props_json AS JSON)), "
                      "lambda k: k = '' OR starts_with(k, '$'))) > 0 "
                      f"THEN '{config.properties_json}: property names must not be empty or start with $'")
    for consent in config.consent:
        if consent.consented_at:  # bulk_subscribe_profiles: historical consent must be in the past
            at = f"__consent_{consent.channel}_at"
            checks.append(f"WHEN {at} > now() THEN '{consent.consented_at}: consent time ' || CAST({at} AS VARCHAR) "
                          "|| ' is in the future'")
            raw = f"__raw_{consent.channel}_at"
            selects.append(f"CAST({q(consent.consented_at)} AS VARCHAR) AS {raw}")
            checks.append(f"WHEN {raw} IS NOT NULL AND {at} IS NULL "
                          f"THEN '{consent.consented_at}: not a timestamp: ' || {raw}")
    checks.append(f"WHEN strlen(__payload) > {MAX_PROFILE_BYTES} "
                  f"THEN 'profile payload is ' || strlen(__payload) || ' bytes; Klaviyo accepts up to {MAX_PROFILE_BYTES}'")
    raw_excluded = "".join(f", __raw_{a}" for a in ("latitude", "longitude") if f"location.{a}" in config.columns)
    raw_excluded += "".join(f", __raw_{c.channel}_at" for c in config.consent if c.consented_at)
    struct = ", ".join(f"{q(f)} := {q(f)}" for f in fields)
    consent_key = "concat_ws(',', " + ", ".join(consent_parts) + ")" if consent_parts else "CAST(NULL AS VARCHAR)"
    # nested subqueries, not CTEs: DuckDB pipelines them without materialising wide intermediates
    sql = f"""
    SELECT * EXCLUDE (__payload, __present_named, __consent_key{raw_excluded}),
        md5(__payload) AS __hash,
        CASE WHEN __reason IS NULL AND __props_json IS NOT NULL
             THEN concat_ws(',', nullif(__present_named, ''), nullif(array_to_string({props_keys}, ','), ''))
             ELSE __present_named END AS __present,
        CASE WHEN nullif(__consent_key, '') IS NOT NULL THEN md5(__consent_key) END AS __consent_hash
    FROM (
        SELECT *, CASE {' '.join(checks)} END AS __reason
        FROM (
            SELECT *,
                coalesce({', '.join(identity_parts)}) AS __identity,
                CAST(to_json(struct_pack({struct}, __json := __props_json)) AS VARCHAR) AS __payload,
                concat_ws(',', {present or "NULL"}) AS __present_named,
                {consent_key} AS __consent_key
            FROM (SELECT __row, {', '.join(selects)} FROM src) AS mapped
        ) AS keyed
    ) AS checked
    """
    return sql, fields


def _jsonable(expr: str, arrow_type: pa.DataType, depth: int = 0) -> str:
    """SQL for a prepared value whose ``to_json`` is what Python's JSON encoders write: datetimes
    in ISO 8601, inside lists and structs too."""
    if pa.types.is_timestamp(arrow_type):
        local = f"timezone('UTC', CAST({expr} AS TIMESTAMPTZ))" if arrow_type.tz else f"CAST({expr} AS TIMESTAMP)"
        micros = f"microsecond({local}) % 1000000"
        iso = (f"strftime({local}, '%Y-%m-%dT%H:%M:%S') || CASE WHEN {micros} <> 0 "
               f"THEN '.' || lpad(CAST({micros} AS VARCHAR), 6, '0') ELSE '' END")
        return f"({iso} || '+00:00')" if arrow_type.tz else f"({iso})"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        item = _jsonable(f"x{depth}", arrow_type.value_type, depth + 1)
        return expr if item == f"x{depth}" else f"list_transform({expr}, lambda x{depth}: {item})"
    if pa.types.is_struct(arrow_type):
        fields = [(f.name, _jsonable(f"struct_extract({expr}, {_lit(f.name)})", f.type, depth + 1)) for f in arrow_type]
        if all(value == f"struct_extract({expr}, {_lit(name)})" for name, value in fields):
            return expr
        packed = ", ".join(f"{q(name)} := {value}" for name, value in fields)
        return f"CASE WHEN {expr} IS NOT NULL THEN struct_pack({packed}) END"
    return expr


def _object_sql(members: list[str]) -> str:
    """SQL for a JSON object's text from ``"key":value`` member expressions (NULL members left out)."""
    return "'{' || concat_ws(',', " + ", ".join(members) + ") || '}'" if members else "'{}'"


def body_sql(config: ReverseSyncConfig, schema: pa.Schema) -> tuple[dict[str, str], str]:
    """SQL over prepared rows for each one's bulk-import ``profile`` resource as JSON text:
    non-null values only (null cannot clear there), ``location.*`` and ``properties.*`` nested,
    named properties over the JSON column's keys (which are sent as they are, nulls included).

    Returns (helper columns, name -> SQL, to select first; the body expression over them): each
    helper is written and computed once, not at every place the body uses it."""
    def member(key: str, target: str) -> str:
        value = f"CAST(to_json({_jsonable(q(target), schema.field(config.columns[target]).type)}) AS VARCHAR)"
        return f"CASE WHEN {q(target)} IS NOT NULL THEN {_lit(orjson.dumps(key).decode() + ':')} || {value} END"

    top = [t for t in config.columns if not t.startswith(("location.", "properties."))]
    location = [t for t in config.columns if t.startswith("location.")]
    named = [t for t in config.columns if t.startswith("properties.")]
    parts = [member(t, t) for t in top]
    if location:
        present = " OR ".join(f"{q(t)} IS NOT NULL" for t in location)
        parts.append(f"""CASE WHEN {present} THEN '"location":' || {_object_sql([member(t[9:], t) for t in location])} END""")
    helpers = {"__named_props": _object_sql([member(t[11:], t) for t in named])}
    if config.properties_json:
        # the JSON column's keys, less those a named property sets, then the named ones appended
        dropped = _object_sql([f"CASE WHEN {q(t)} IS NOT NULL THEN {_lit(orjson.dumps(t[11:]).decode() + ':null')} END"
                               for t in named])
        helpers["__kept_props"] = f"json_merge_patch(coalesce(__props_json, '{{}}'), {dropped})"
        helpers["__props"] = ("CASE WHEN __kept_props = '{}' THEN __named_props WHEN __named_props = '{}' "
                              "THEN __kept_props ELSE substr(__kept_props, 1, length(__kept_props) - 1) || ',' "
                              "|| substr(__named_props, 2) END")
    else:
        helpers["__props"] = "__named_props"
    parts.append("""CASE WHEN __props <> '{}' THEN '"properties":' || __props END""")
    return helpers, """'{"type":"profile","attributes":{' || concat_ws(',', """ + ", ".join(parts) + ") || '}}'"


def plan(config: ReverseSyncConfig, rows: pa.Table, state: pa.Table, list_id: str | None = None) -> Plan:
    """Validate, hash and diff the audience against the sync's state (in-memory DuckDB over Arrow)."""
    con = duckdb.connect()
    try:
        con.register("src", rows.append_column("__row", pa.array(range(rows.num_rows), pa.int64())))
        con.register("state", state if state.num_rows or state.column_names else empty_state())
        sql, fields = prepare_sql(config, rows.schema)
        con.execute(f"CREATE TEMP TABLE prep AS {sql}")
        duplicates = con.sql("SELECT count(*) FROM (SELECT __identity FROM prep WHERE __reason IS NULL "
                             "GROUP BY 1 HAVING count(*) > 1)").fetchall()[0][0]
        if duplicates:
            # a second row with the same identity would overwrite the first in Klaviyo: reject it
            con.execute("""
                UPDATE prep SET __reason = 'duplicate identity ' || __identity || ' (first seen at row ' || d.first_row + 1 || ')'
                FROM (SELECT __identity AS ident, min(__row) AS first_row FROM prep
                      WHERE __reason IS NULL GROUP BY 1 HAVING count(*) > 1) d
                WHERE prep.__identity = d.ident AND prep.__row > d.first_row AND prep.__reason IS NULL
            """).fetchall()
        target = config.list
        if target is None:
            member = "false"
            needs_list = "false"
        else:
            same_list = (f"s.list_id = {_lit(list_id)}" if list_id else
                         f"s.list_id = {_lit(target.id)}" if target.id else f"s.list_name = {_lit(target.name)}")
            member = f"coalesce(s.in_list AND ({same_list}), false)"
            needs_list = f"NOT {member}"
        con.execute(f"""
            CREATE TEMP VIEW diffed AS
            SELECT p.*,
                s.identity_key IS NULL AS __is_new,
                s.profile_hash IS DISTINCT FROM p.__hash AS __changed,
                CASE WHEN coalesce(s.present_fields, '') NOT IN ('', coalesce(p.__present, ''))
                     THEN list_filter(string_split(s.present_fields, ','),
                                      lambda f: f <> '' AND NOT list_contains(string_split(coalesce(p.__present, ''), ','), f))
                     ELSE []::VARCHAR[] END AS __cleared,
                {needs_list} AS __needs_list,
                p.__consent_hash IS NOT NULL AND p.__consent_hash IS DISTINCT FROM s.consent_hash AS __needs_consent,
                s.profile_id AS __profile_id, s.profile_hash AS __prev_hash, s.present_fields AS __prev_present,
                s.consent_hash AS __prev_consent_hash, s.in_list AS __prev_in_list,
                s.list_id AS __prev_list_id, s.list_name AS __prev_list_name
            FROM prep p LEFT JOIN state s ON s.identity_key = p.__identity
            WHERE p.__reason IS NULL
        """).fetchall()
        rejected_rows = con.sql("SELECT __row, __identity, __reason FROM prep WHERE __reason IS NOT NULL "
                                "ORDER BY __row").fetchall()
        source_rows = rows.take(pa.array([r[0] for r in rejected_rows], pa.int64())).to_pylist() if rejected_rows else []
        rejected = pa.table({
            "identity_key": pa.array([r[1] for r in rejected_rows], pa.string()),
            "reason": pa.array([r[2] for r in rejected_rows], pa.string()),
            "row_json": pa.array([orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
                                  for row in source_rows], pa.string()),
        })
        con.execute("CREATE TEMP TABLE decided AS SELECT * FROM diffed "
                    "WHERE __changed OR __needs_list OR __needs_consent").fetchall()
        helpers, body = body_sql(config, rows.schema)  # helper columns may use earlier ones (DuckDB aliases)
        upserts = con.sql(f"SELECT * EXCLUDE ({', '.join(helpers)}), {body} AS __body FROM ("
                          f"SELECT *, {', '.join(f'{sql} AS {name}' for name, sql in helpers.items())} FROM decided "
                          "WHERE __changed OR __needs_list) ORDER BY __row").to_arrow_table()
        consents = con.sql("SELECT * FROM decided WHERE __needs_consent ORDER BY __row").to_arrow_table()
        clears, decided = con.sql("SELECT count(*) FILTER (WHERE len(__cleared) > 0), count(*) FROM decided"
                                  ).fetchall()[0]
        valid = con.sql("SELECT count(*) FROM prep WHERE __reason IS NULL").fetchall()[0][0]
        departed = empty_state()
        if target is not None and target.mode == "mirror":
            departed = con.sql(f"""
                SELECT s.* FROM state s
                WHERE {member}
                  AND NOT EXISTS (SELECT 1 FROM prep p WHERE p.__identity = s.identity_key)
                ORDER BY s.identity_key
            """).to_arrow_table()
        return Plan(read=rows.num_rows, rejected=rejected, upserts=upserts, clears=clears, consents=consents,
                    departed=departed, unchanged=valid - decided, fields=fields)
    finally:
        con.close()
