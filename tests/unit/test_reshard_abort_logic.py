"""The pure part of plugins/module_utils/reshard_abort.py: which plan is unfinished, the point of no return,
and what is left to undo."""
from ansible_collections.manta.ops.plugins.module_utils import reshard_abort as ra


def doc(plan="p1", state="active", phases=(), props=None, shard="1.moray.x", new_shard="3.moray.x"):
    return {"plan": plan, "state": state, "shard": shard, "new_shard": new_shard, "phase": None,
            "phases": {p: {"status": "done"} for p in phases}, "props": props or {}}


def test_unfinished_plans():
    assert ra.is_unfinished(doc())
    assert not ra.is_unfinished(doc(state="completed"))
    assert not ra.is_unfinished(doc(state="aborted"))                     # aborted by hand, no roll back record
    assert ra.is_unfinished(doc(state="aborted", props={"abort": {"started": "t"}}))
    assert not ra.is_unfinished(doc(state="aborted", props={"abort": {"started": "t", "done": "t2"}}))


def test_select():
    a, b = doc("a"), doc("b", shard="2.moray.x", new_shard="4.moray.x")
    done = doc("c", state="completed")
    assert ra.select([a, done], None) == (a, None)
    assert ra.select([done], None) == (None, None)
    assert ra.select([a, b], None, shard="2.moray.x") == (b, None)
    assert ra.select([a, b], None, new_shard="3.moray.x") == (a, None)
    got, err = ra.select([a, b], None)
    assert got is None and "several unfinished reshard plans" in err and "a (" in err and "b (" in err
    assert ra.select([a, done], "c") == (None, None)                      # finished: nothing to abort
    got, err = ra.select([a], "zz")
    assert got is None and "no reshard plan zz" in err


def test_point_of_no_return():
    props = {"old_image": "o", "transitional_image": "t", "final_image": "f"}
    before = doc(phases=["validate", "block_writes", "detach_peers"], props=props)
    assert ra.point_of_no_return(before, "t", [{"host": "em1", "image": "t"}]) == (False, [])
    assert ra.point_of_no_return(before, "o", [{"host": "em1", "image": "o"}]) == (False, [])
    passed, why = ra.point_of_no_return(before, "f", [{"host": "em1", "image": "t"}])
    assert passed and "SAPI HASH_RING_IMAGE is the final ring f" in why[0]
    passed, why = ra.point_of_no_return(before, "t", [{"host": "em1", "image": "f"}])
    assert passed and "electric-moray em1 serves the final ring f" in why[0]
    passed, why = ra.point_of_no_return(doc(phases=["install_ring"], props=props), "o", [])
    assert passed and "install_ring done" in why[0]
    later = doc(props=props)
    later["phases"]["verify_canaries"] = {"status": "running"}
    assert ra.point_of_no_return(later, "o", [])[0]
    # no final ring built yet: nothing can be past it
    assert ra.point_of_no_return(doc(phases=["validate"]), None, [{"host": "em1", "image": None}]) == (False, [])


def test_refusal_names_the_plan_and_the_way_forward():
    msg = ra.refusal(doc(), ["SAPI HASH_RING_IMAGE is the final ring f"])
    assert "reshard plan p1 (1.moray.x -> 3.moray.x) is past the point of no return" in msg
    assert "nothing was changed" in msg and "reshard the vnodes back" in msg and "-e shard=3.moray.x" in msg


def test_todo_in_order():
    a = {"plan": "p1", "state": "active", "shard": "1.moray.x", "new_shard": "3.moray.x",
         "old_image": "o", "transitional_image": "t", "final_image": "f", "hash_ring_image": "t",
         "electric_morays": [{"host": "em1", "image": "t"}, {"host": "em2", "image": "o"}],
         "index_has_new_shard": True,
         "instances": [{"service": "moray", "uuid": "m1", "alias": "3.moray-m1"}],
         "new_shard_znodes": 4, "old_shard_frozen_by_plan": True, "pg_dump_lock_ours": True,
         "reshard_lock_ours": True, "ring_images": [{"role": "final", "uuid": "f"}]}
    t = ra.todo(a)
    assert t[0].startswith("SAPI HASH_RING_IMAGE t -> o")
    assert t[1] == "electric-moray em1: ring t -> o"
    assert [x for x in t if "em2" in x] == []
    assert t[-1] == "mark the plan aborted in the journal"
    done = dict(a, state="aborted", hash_ring_image="o", electric_morays=[{"host": "em1", "image": "o"}],
                index_has_new_shard=False, instances=[], new_shard_znodes=0, old_shard_frozen_by_plan=False,
                pg_dump_lock_ours=False, reshard_lock_ours=False, ring_images=[])
    assert ra.todo(done) == []
