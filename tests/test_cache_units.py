"""The cache plugin's parts alone: keys, controls, stream capture, guards, store."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from benchmarks.mock_upstream import render_stream
from plugins.cache.capture import StreamCapture
from plugins.cache.controls import parse_controls
from plugins.cache.guards import check, features
from plugins.cache.keys import normalise_text, request_forms
from plugins.cache.store import CacheStore, Entry
from proxy import ProxyError
from proxy.sse import DONE_EVENT, data_event


def body(*messages, **params) -> dict:
    msgs = [{"role": "user", "content": m} if isinstance(m, str) else m for m in messages]
    return {"model": "m", "messages": msgs, **params}


# -- keys --------------------------------------------------------------------------------

def test_exact_key_ignores_key_order_whitespace_and_transport_fields():
    a = request_forms(body("What is  the capital?\r\n", temperature=0), "m")
    b = request_forms({"temperature": 0, "stream": True, "stream_options": {"include_usage": True},
                       "user": "u1", "messages": [{"content": "What is the capital?", "role": "user"}],
                       "model": "m"}, "m")
    assert a.exact == b.exact and a.bucket == b.bucket


def test_indentation_is_meaning():
    assert normalise_text("def f():\n    return 1  \n") == "def f():\n    return 1"
    a = request_forms(body("if x:\n    y()\nz()"), "m")
    b = request_forms(body("if x:\n    y()\n    z()"), "m")
    assert a.exact != b.exact


@pytest.mark.parametrize("change", [{"temperature": 0.3}, {"seed": 1}, {"n": 2}, {"stop": "."},
                                    {"tool_choice": "none"}, {"response_format": {"type": "json_object"}},
                                    {"top_p": 0.1}, {"max_tokens": 9}, {"logit_bias": {"1": 2}}])
def test_answer_changing_parameters_change_key_and_bucket(change):
    a = request_forms(body("hi", temperature=0), "m")
    b = request_forms(body("hi", **{"temperature": 0, **change}), "m")
    assert a.exact != b.exact and a.bucket != b.bucket


def test_bucket_keeps_everything_but_the_text():
    a = request_forms(body("Why is the sky blue?"), "m")
    b = request_forms(body("What makes the sky blue?"), "m")
    assert a.exact != b.exact and a.bucket == b.bucket
    sys_a = request_forms(body({"role": "system", "content": "Be brief."}, "Why?"), "m")
    sys_b = request_forms(body({"role": "system", "content": "Be long."}, "Why?"), "m")
    assert sys_a.bucket != sys_b.bucket
    assert request_forms(body("Why?"), "m").bucket != request_forms(body("Why?"), "other").bucket


def test_multi_turn_forms():
    f = request_forms(body("Who is Messi?", {"role": "assistant", "content": "A footballer."}, "how old is he?"), "m")
    assert f.query == "how old is he?"
    assert f.context == "user: Who is Messi?\nassistant: A footballer."
    tool_last = request_forms(body("x", {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                                   {"role": "tool", "tool_call_id": "1", "content": "42"}), "m")
    assert not tool_last.semantic_ok


# -- controls ----------------------------------------------------------------------------

def test_controls_are_read_and_stripped():
    c, stripped = parse_controls({"model": "m", "cache": {"no_store": True, "ttl": 30}, "no_cache": True}, None, 100)
    assert (c.no_cache, c.no_store, c.ttl) == (True, True, 30.0)
    assert stripped == {"model": "m"}
    c, stripped = parse_controls({"model": "m"}, {"Cache-Control": "No-Store, max-age=0"}, 100)
    assert (c.no_cache, c.no_store, stripped) == (False, True, None)


def test_bad_control_names_the_field():
    with pytest.raises(ProxyError) as exc:
        parse_controls({"cache": {"ttl": True}}, None, 100)
    assert exc.value.status == 400 and exc.value.param == "cache.ttl"


# -- stream capture ------------------------------------------------------------------------

def test_capture_rebuilds_a_stream_cut_anywhere():
    events = b"".join(render_stream("m", 5, 4, 10, usage=True))
    cap = StreamCapture(1 << 20)
    for i in range(0, len(events), 7):
        assert cap(events[i:i + 7]) == events[i:i + 7]
    done = cap.completion()
    assert done["choices"][0]["finish_reason"] == "stop"
    assert done["choices"][0]["message"]["content"] == "tok0tok1tok2tok3tok4"


def test_capture_joins_tool_call_fragments():
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def ev(delta, finish=None):
        return data_event(orjson.dumps({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))

    cap = StreamCapture(1 << 20)
    cap(ev({"role": "assistant", "content": None}))
    cap(ev({"tool_calls": [{"index": 0, "id": "t1", "type": "function",
                            "function": {"name": "get", "arguments": ""}}]}))
    cap(ev({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}))
    cap(ev({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}))
    cap(ev({}, "tool_calls") + DONE_EVENT)
    msg = cap.completion()["choices"][0]["message"]
    assert msg["tool_calls"] == [{"id": "t1", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}}]
    assert msg["content"] is None


@pytest.mark.parametrize("cut", ["no_done", "no_finish", "error", "too_big"])
def test_capture_refuses_unclean_streams(cut):
    events = render_stream("m", 3, 4, 10, usage=False)
    if cut == "no_done":
        events = events[:-1]
    elif cut == "no_finish":
        events = events[:-2] + events[-1:]
    elif cut == "error":
        events = events[:-1] + [data_event(b'{"error": {"message": "boom"}}'), DONE_EVENT]
    cap = StreamCapture(10 if cut == "too_big" else 1 << 20)
    for e in events:
        cap(e)
    assert cap.completion() is None


# -- guards --------------------------------------------------------------------------------

@pytest.mark.parametrize(("a", "b", "guard"), [
    ("Which fruits can dogs eat?", "Which fruits can dogs not eat?", "negation"),
    ("How do I turn the lights on?", "How do I switch the lights off?", "polarity"),
    ("How do I enable dark mode?", "How do I disable dark mode?", "polarity"),
    ("Set a timer for five minutes.", "Set a timer for 10 minutes.", "numbers"),
    ("What's new in Python 3.10?", "What's new in Python 3.1?", "numbers"),
    ("What is the capital of France?", "What is the capital of Germany?", "entities"),
    ("translate hello to french", "translate hello to german", "entities"),
    ('What does "ephemeral" mean?', 'What does "ethereal" mean?', "entities"),
    ("Fix `x = 1`", "Fix `x = 2`", "code"),
    ("How do I convert JSON to XML?", "How do I convert XML to JSON?", "order"),
    ("How long is a flight from London to New York?", "How long is a flight from New York to London?", "order"),
    ("How do I grow tomatoes indoors?", "How do I grow tomatoes outdoors?", "substitution"),
    ("What are some vegetarian dinner ideas?", "What are some vegan dinner ideas?", "substitution"),
    ("How do I follow someone on Instagram?", "How do I unfollow someone on Instagram?", "substitution"),
])
def test_each_guard_vetoes_its_near_miss(a, b, guard):
    assert check(features(a), features(b)) == guard


@pytest.mark.parametrize(("a", "b"), [
    ("How do I enable dark mode in Chrome?", "How can I turn on dark mode in Chrome?"),
    ("Set a timer for five minutes.", "Set a 5 minute timer."),
    ("what's the capital of australia", "What is the capital of Australia?"),
    ("Who is the CEO of Apple?", "Who's Apple's CEO?"),
    ("Please explain recursion.", "Explain recursion, please."),
    ("How do I remove a stain from a carpet?", "How can I get a stain out of a carpet?"),
    ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?"),
    ("How do airplanes stay in the air?", "How do planes stay in the air?"),
    ("Write a haiku about autumn.", "Compose a haiku about autumn."),
])
def test_guards_let_paraphrases_through(a, b):
    assert check(features(a), features(b)) is None


# -- store ---------------------------------------------------------------------------------

def _entry(exact: str, vec, scope="s", bucket="b", expires=float("inf")) -> Entry:
    v = np.asarray(vec, dtype=np.float32)
    return Entry(scope, exact, bucket, {"id": exact}, None, 0.0, expires, query_vec=v / np.linalg.norm(v))


def test_store_nearest_respects_threshold_scope_and_bucket():
    store = CacheStore()
    store.put(_entry("a", [1, 0, 0]))
    store.put(_entry("b", [0, 1, 0]))
    q = np.asarray([0.9, 0.1, 0], dtype=np.float32)
    q /= np.linalg.norm(q)
    found, best = store.candidates("s", "b", q, None, 0.9)
    assert [e.exact for e, _ in found] == ["a"] and found[0][1] > 0.99 and best > 0.99
    assert store.candidates("s", "b", q, None, 0.999)[0] == []
    assert store.candidates("other-scope", "b", q, None, 0.5)[0] == []
    assert store.candidates("s", "other-bucket", q, None, 0.5)[0] == []


def test_store_removal_keeps_the_matrix_consistent():
    store = CacheStore(max_entries=50)
    rng = np.random.default_rng(1)
    vecs = {f"e{i}": rng.normal(size=8) for i in range(80)}
    for k, v in vecs.items():
        store.put(_entry(k, v))
    assert len(store) == 50
    for k in list(store.entries)[::3]:
        store.remove(k)
    for k in list(store.entries):
        v = vecs[store.entries[k].exact]
        found, _ = store.candidates("s", "b", (v / np.linalg.norm(v)).astype(np.float32), None, 0.999)
        assert found[0][0] is store.entries[k]


def test_an_entry_stored_again_once_embedded_joins_its_bucket():
    # The plugin stores a miss at once for exact hits, then again, the same Entry, once embedded.
    store = CacheStore()
    store.put(_entry("other", [0, 1, 0]))  # the bucket exists already
    late = Entry("s", "late", "b", {"id": "late"}, None, 0.0, float("inf"))
    store.put(late)
    assert store.get_exact("s", "late") is late
    late.query_vec = np.asarray([1, 0, 0], dtype=np.float32)
    store.put(late)
    q = np.asarray([1, 0, 0], dtype=np.float32)
    found, _ = store.candidates("s", "b", q, None, 0.9)
    assert [e.exact for e, _ in found] == ["late"]
    assert store.get_exact("s", "late") is late and len(store) == 2
    store.remove(late.key)
    assert store.candidates("s", "b", q, None, 0.9)[0] == [] and len(store) == 1


def test_bucket_remove_tolerates_a_key_it_does_not_hold():
    from plugins.cache.store import Bucket

    bucket = Bucket()
    bucket.add("a", np.asarray([1, 0], dtype=np.float32), None)
    bucket.remove("missing")
    assert bucket.keys == ["a"]


def test_store_expiry_with_a_clock():
    now = [0.0]
    store = CacheStore(clock=lambda: now[0])
    store.put(_entry("a", [1, 0], expires=10.0))
    assert store.get_exact("s", "a") is not None
    now[0] = 10.0
    assert store.get_exact("s", "a") is None and len(store) == 0


# -- persistence on PostgreSQL (every machine of this project runs one) ---------------------

async def test_persistence_round_trip_on_postgres():
    from plugins.cache.persist import TABLE, Persistence
    from proxy.store.postgres import PostgresStore

    db = PostgresStore("postgresql://postgres@127.0.0.1:5432/test")
    try:
        await db.connect()
    except Exception as exc:  # say it loudly: a silent skip would hide a broken persistence path
        pytest.fail(f"this test needs PostgreSQL at 127.0.0.1:5432 (database 'test', trust auth): {exc}")
    scope = "test-cache-pg"
    try:
        store = CacheStore()
        saver = Persistence(db, store, "local:")
        await saver.start()
        entry = _entry("pg", [1, 2, 3], scope=scope, expires=store.clock() + 100)
        for _ in range(2):  # the second write is an upsert
            store.put(entry)
            saver.saved(entry)
            await saver.flush()
        await saver.close()
        again = CacheStore()
        loader = Persistence(db, again, "local:")
        await loader.start()
        got = again.get_exact(scope, "pg")
        assert got is not None and np.allclose(got.query_vec, entry.query_vec)
        again.remove(got.key)
        await loader.close()
        assert await db.fetchone(f"select count(*) from {TABLE} where scope = ?", (scope,)) == (0,)
    finally:
        await db.execute(f"delete from {TABLE} where scope = ?", (scope,))
        await db.close()


def test_long_prompts_are_matched_exactly_only():
    long_question = "Summarise this report: " + "The quarterly numbers were flat. " * 40
    assert not request_forms(body(long_question), "m").semantic_ok
    assert request_forms(body("A short question?"), "m").semantic_ok
    huge_history = [m for i in range(400) for m in ("question " * 10, {"role": "assistant", "content": "answer " * 10})]
    assert not request_forms(body(*huge_history, "and then?"), "m").semantic_ok


# -- the lexical retrieval ----------------------------------------------------------------

def test_lexical_vectors_find_what_the_verifier_can_explain():
    from plugins.cache.embedders import LexicalEmbedder

    emb = LexicalEmbedder()
    texts = ["What is the capital of France?", "hey whats the captial of france please",
             "What is the capital of Spain?", "How do I bake sourdough bread?", ""]
    v = emb.embed_sync(texts)
    assert v.shape == (5, emb.dim) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v[:4], axis=1), 1.0, atol=1e-5) and not v[4].any()
    sims = v[1] @ v[:4].T
    assert sims[0] > sims[2] > sims[3]  # the typo'd paraphrase is nearest its original
    assert np.array_equal(v, LexicalEmbedder().embed_sync(texts))  # stable (crc32): persisted vectors stay valid

