"""Deleted resources and removed members between two runs: ``deleted_at`` / ``removed_at``, nothing lost."""

from __future__ import annotations

from .conftest import truth

SWEPT = {"lists": "list", "segments": "segment", "campaigns": "campaign", "flows": "flow", "templates": "template",
         "tags": "tag", "coupons": "coupon", "catalog_items": "catalog-item"}


def test_deleted_resources_get_deleted_at_and_removed_members_removed_at(runner):
    sb = runner.sb
    resources = [*SWEPT, "list_members", "segment_members"]
    runner.run(resources)
    for table in SWEPT:
        assert runner.count(table) > 0, table
        assert runner.count(table, "deleted_at IS NOT NULL") == 0, table

    # delete one record of every swept kind, and remove two members of a list
    doomed = {table: truth(sb, type_)[-1] for table, type_ in SWEPT.items()}
    doomed_members = {p for p, _ in sb.store.members(sb.account.id, "list", doomed["lists"].id)}
    for table, record in doomed.items():
        assert sb.control.delete(SWEPT[table], record.id)
    kept_list = next(r for r in truth(sb, "list") if len(sb.store.members(sb.account.id, "list", r.id)) >= 3)
    leavers = [p for p, _ in sb.store.members(sb.account.id, "list", kept_list.id)[:2]]
    assert sb.control.remove_members("list", kept_list.id, leavers) == 2
    members_before = runner.count("list_members")

    runner.run(resources)
    for table, record in doomed.items():
        marked = {r[0] for r in runner.rows(f"SELECT id FROM {table} WHERE deleted_at IS NOT NULL")}
        assert marked == {record.id}, table
        assert runner.count(table) == len(truth(sb, SWEPT[table])) + 1, table  # the row is kept
    # soft delete keeps every column of the vanished record
    (name,) = runner.rows(f"SELECT name FROM lists WHERE id = '{doomed['lists'].id}'")[0]
    assert name == doomed["lists"].attributes["name"]
    (subject,) = runner.rows(f"SELECT html FROM templates WHERE id = '{doomed['templates'].id}'")[0]
    assert subject == doomed["templates"].attributes.get("html")

    removed = set(runner.rows("SELECT list_id, profile_id FROM list_members WHERE removed_at IS NOT NULL"))
    # members who left, and every member of the deleted list
    assert removed == {(kept_list.id, p) for p in leavers} | {(doomed["lists"].id, p) for p in doomed_members}
    assert runner.count("list_members") == members_before  # rows kept, not dropped
    (joined,) = runner.rows(f"SELECT count(*) FROM list_members WHERE removed_at IS NOT NULL "
                            f"AND joined_group_at IS NULL")[0]
    assert joined == 0  # the stored joined_group_at survives the removal

    for table in SWEPT:
        assert runner.rows(f"SELECT count(*) - count(DISTINCT id) FROM {table}") == [(0,)], table

    # a third run changes nothing: marks stay as they were (not re-stamped), no duplicates
    stamps = runner.rows("SELECT id, deleted_at FROM lists WHERE deleted_at IS NOT NULL")
    removals = set(runner.rows("SELECT profile_id, removed_at FROM list_members WHERE removed_at IS NOT NULL"))
    runner.run(["lists", "list_members"])
    assert runner.rows("SELECT id, deleted_at FROM lists WHERE deleted_at IS NOT NULL") == stamps
    assert set(runner.rows("SELECT profile_id, removed_at FROM list_members WHERE removed_at IS NOT NULL")) == removals
    assert runner.count("list_members") == members_before


def test_a_member_who_rejoins_is_active_again(runner):
    sb = runner.sb
    group = truth(sb, "segment")[0]
    profile, _ = sb.store.members(sb.account.id, "segment", group.id)[0]
    runner.run(["segment_members"])
    sb.control.remove_members("segment", group.id, [profile])
    runner.run(["segment_members"])
    assert runner.rows(f"SELECT removed_at IS NOT NULL FROM segment_members WHERE profile_id = '{profile}' "
                       f"AND segment_id = '{group.id}'") == [(True,)]
    sb.control.set_clock(advance_seconds=60)
    sb.control.add_members("segment", group.id, [profile])
    runner.run(["segment_members"])
    assert runner.rows(f"SELECT removed_at IS NULL FROM segment_members WHERE profile_id = '{profile}' "
                       f"AND segment_id = '{group.id}'") == [(True,)]


def test_hard_delete_option_removes_vanished_rows(runner):
    sb = runner.sb
    runner.run(["lists", "tags"], deletions="hard")
    gone_list, gone_tag = truth(sb, "list")[0], truth(sb, "tag")[0]
    sb.control.delete("list", gone_list.id)
    sb.control.delete("tag", gone_tag.id)
    runner.run(["lists", "tags"], deletions="hard")
    assert {r[0] for r in runner.rows("SELECT id FROM lists")} == {r.id for r in truth(sb, "list")}
    assert {r[0] for r in runner.rows("SELECT id FROM tags")} == {r.id for r in truth(sb, "tag")}


def test_list_deleted_mid_run_with_404_members_does_not_fail_the_run(runner):
    sb = runner.sb
    lists = truth(sb, "list")
    vanishing = lists[1].id
    # the list is still listed, but reading its members answers 404 (deleted in between)
    sb.control.set_faults({"rules": [{"match": f"/api/lists/{vanishing}/profiles", "kind": "error", "status": 404}]})
    runner.run(["list_members"])
    loaded = {r[0] for r in runner.rows("SELECT DISTINCT list_id FROM list_members")}
    expected = {r.id for r in lists if sb.store.members(sb.account.id, "list", r.id)} - {vanishing}
    assert loaded == expected and expected


def _members(sb, group: str, group_id: str) -> set[str]:
    return {p for p, _ in sb.store.members(sb.account.id, group, group_id)}


def test_members_of_a_deleted_list_or_segment_get_removed_at(runner):
    sb = runner.sb
    resources = ["lists", "segments", "list_members", "segment_members"]
    runner.run(resources)
    doomed = {group: next(r for r in truth(sb, group) if len(_members(sb, group, r.id)) >= 2)
              for group in ("list", "segment")}
    members = {group: _members(sb, group, record.id) for group, record in doomed.items()}
    for group, record in doomed.items():
        assert sb.control.delete(group, record.id)

    runner.run(resources)
    for group, record in doomed.items():
        table, key = f"{group}_members", f"{group}_id"
        assert runner.rows(f"SELECT deleted_at IS NOT NULL FROM {group}s WHERE id = '{record.id}'") == [(True,)]
        removed = {r[0] for r in runner.rows(f"SELECT profile_id FROM {table} WHERE {key} = '{record.id}' "
                                             "AND removed_at IS NOT NULL")}
        assert removed == members[group], table
        # members of the other groups are untouched, and no row is dropped
        assert runner.count(table, "removed_at IS NOT NULL") == len(members[group]), table
        assert runner.count(table, f"{key} = '{record.id}'") == len(members[group]), table

    # a later run leaves the marks as they were
    stamps = set(runner.rows("SELECT profile_id, removed_at FROM list_members WHERE removed_at IS NOT NULL"))
    runner.run(resources)
    assert set(runner.rows("SELECT profile_id, removed_at FROM list_members WHERE removed_at IS NOT NULL")) == stamps


def test_members_of_a_list_answering_404_get_removed_at_and_return_if_it_comes_back(runner):
    sb = runner.sb
    runner.run(["list_members"])
    record = next(r for r in truth(sb, "list") if len(_members(sb, "list", r.id)) >= 2)
    members = _members(sb, "list", record.id)
    # listed, but its member endpoints answer 404: deleted between the listing and the member reads
    sb.control.set_faults({"rules": [{"match": f"/api/lists/{record.id}/profiles", "kind": "error", "status": 404}]})
    runner.run(["list_members"])
    removed = {r[0] for r in runner.rows(f"SELECT profile_id FROM list_members WHERE list_id = '{record.id}' "
                                         "AND removed_at IS NOT NULL")}
    assert removed == members
    assert runner.count("list_members", "removed_at IS NOT NULL") == len(members)

    sb.control.set_faults(None)
    runner.run(["list_members"])
    assert runner.count("list_members", f"list_id = '{record.id}' AND removed_at IS NULL") == len(members)
