"""Captions and answers: placeholders that follow renames, the user's text winning, and `to_template`."""

from __future__ import annotations

import pytest

from engine.domain.captions import CaptionStore, placeholder, to_template
from engine.errors import NotFound
from engine.storage.catalog import now


@pytest.fixture
def album(library):
    """Three photos, a named person with a person concept (Alex), and a dog (Bella, an object concept)."""
    cat = library.catalog
    ts = now()
    with cat.write():
        folder = cat.conn.execute("INSERT INTO folders(path, path_bytes, status, added_at) VALUES ('/a', ?, 'online', ?)",
                                  [b"/a", ts]).lastrowid
        photos = [int(cat.conn.execute(
            "INSERT INTO photos(folder_id, path, path_bytes, name, status, added_at, updated_at) "
            "VALUES (?, ?, ?, ?, 'ok', ?, ?)", [folder, f"/a/{i}.jpg", f"/a/{i}.jpg".encode(), f"{i}.jpg", ts, ts]
        ).lastrowid) for i in range(3)]
        face = cat.conn.execute(
            "INSERT INTO faces(photo_id, backend, x, y, w, h, score, state, created_at, updated_at) "
            "VALUES (?, 't', 0, 0, 50, 50, 0.9, 'unknown', ?, ?)", [photos[0], ts, ts]).lastrowid
    alex = library.people().create("Alex", [face])
    reg = library.concepts()
    return {"photos": photos, "alex": alex, "alex_c": reg.add_person(alex).id,
            "bella_c": reg.create("object", "Bella").id, "store": library.captions()}


def test_render_uses_todays_names(library, album):
    store: CaptionStore = album["store"]
    a, b = album["alex_c"], album["bella_c"]
    template = f"{placeholder(a)} throwing a ball to {placeholder(b)}; {placeholder(a)}'s shoes are red"
    assert store.render(template) == "Alex throwing a ball to Bella; Alex's shoes are red"
    library.people().rename(album["alex"], "Alexander")  # a person concept shows its person's name
    library.concepts().rename(b, "Bella the dog")
    assert store.render(template) == "Alexander throwing a ball to Bella the dog; Alexander's shoes are red"
    assert store.render("{{concept:999}} waves") == "someone waves"  # never raises
    assert store.render("no placeholders {here}") == "no placeholders {here}"


def test_generated_captions_replace_their_kind_and_never_the_users(album):
    store: CaptionStore = album["store"]
    p = album["photos"][0]
    a = album["alex_c"]
    assert store.caption(p) is None
    store.put_caption(p, "original", "a man on a beach", model="blip", prompt="Describe")
    assert store.caption(p) == "a man on a beach"
    store.put_caption(p, "personalised", f"{placeholder(a)} on a beach", model="myvlm", concept_ids=[a])
    assert store.caption(p) == "Alex on a beach"
    store.put_user_caption(p, "Alex at Skagen, summer 2005")
    store.put_caption(p, "personalised", f"{placeholder(a)} standing in the sand", model="myvlm", concept_ids=[a])
    store.put_caption(p, "original", "a person standing in sand", model="blip")
    assert store.caption(p) == "Alex at Skagen, summer 2005"  # the user's text wins and survives generation
    rows = store.captions(p)
    assert [r["kind"] for r in rows] == ["user", "personalised", "original"]
    assert rows[1]["text"] == "Alex standing in the sand" and rows[1]["model"] == "myvlm"
    assert rows[1]["concepts"] == [a] and rows[2]["prompt"] is None and rows[0]["edited"] is True
    assert {"created", "updated", "template", "typed"} <= set(rows[0])
    assert rows[0]["typed"] == "Alex at Skagen, summer 2005"
    store.put_user_caption(p, "  ")  # empty: the user's caption goes, the generated one shows again
    assert store.caption(p) == "Alex standing in the sand"


def test_user_caption_names_become_placeholders(library, album):
    store: CaptionStore = album["store"]
    p = album["photos"][1]
    store.put_user_caption(p, "Alex and Bella at the beach; alex is lower case; Bellamy is another word")
    row = store.captions(p)[0]
    a, b = album["alex_c"], album["bella_c"]
    assert row["template"] == (f"{placeholder(a)} and {placeholder(b)} at the beach; alex is lower case; "
                               "Bellamy is another word")
    library.people().rename(album["alex"], "Sasha")
    assert store.caption(p) == "Sasha and Bella at the beach; alex is lower case; Bellamy is another word"
    assert store.captions(p)[0]["typed"].startswith("Alex and Bella")  # what the user typed is kept


def test_answers(library, album):
    store: CaptionStore = album["store"]
    p, a = album["photos"][0], album["alex_c"]
    store.put_answer(p, f"What is {placeholder(a)} wearing?", f"{placeholder(a)} is wearing a red coat",
                     model="myvlm", concept_ids=[a])
    store.put_answer(p, "Where is this?", "on a beach", model="myvlm")
    store.put_answer(p, f"What is {placeholder(a)} wearing?", f"{placeholder(a)} is wearing a blue coat",
                     model="myvlm-2", concept_ids=[a])  # the same question again: the new answer replaces the old
    store.put_answer(p, "What is Alex wearing?", f"{placeholder(a)} is wearing a green coat", model="myvlm-3")
    answers = store.answers(p)  # typed with the name, the question is the same one: replaced again
    assert [(x["question"], x["answer"], x["model"]) for x in answers] == [
        ("What is Alex wearing?", "Alex is wearing a green coat", "myvlm-3"), ("Where is this?", "on a beach", "myvlm")]
    assert answers[0]["concepts"] == [a]
    library.people().rename(album["alex"], "Sasha")
    assert store.answers(p)[0]["question"] == "What is Sasha wearing?"


def test_a_deleted_concept_reads_someone_or_something(library, album):
    store: CaptionStore = album["store"]
    p, a, b = album["photos"][2], album["alex_c"], album["bella_c"]
    store.put_caption(p, "personalised", f"{placeholder(a)} walking {placeholder(b)}", model="m", concept_ids=[a, b])
    store.put_answer(p, f"Who is with {placeholder(b)}?", placeholder(a), model="m")
    library.concepts().remove(b)
    library.concepts().remove(a)
    assert store.caption(p) == "someone walking something"
    assert store.answers(p)[0]["question"] == "Who is with something?" and store.answers(p)[0]["answer"] == "someone"
    # the ids may be handed out again: a new concept must not take over the old captions
    reg = library.concepts()
    assert store.captions(p)[0]["template"] == "someone walking something"
    reg.create("object", "Kite")
    assert store.caption(p) == "someone walking something"


def test_bad_input(album):
    store: CaptionStore = album["store"]
    with pytest.raises(ValueError):
        store.put_caption(album["photos"][0], "user", "x", model="m")  # the user's text goes through put_user_caption
    with pytest.raises(NotFound, match="no photo with id 123456"):
        store.put_caption(123456, "original", "x", model="m")
    with pytest.raises(NotFound, match="no photo with id 123456"):
        store.put_user_caption(123456, "x")


@pytest.mark.parametrize("text, expected", [
    ("sks throwing a ball", "{{concept:3}} throwing a ball"),
    ("SKS's ball and sks.", "{{concept:3}}'s ball and {{concept:3}}."),
    ("sksy and asks and sks_2 stay", "sksy and asks and sks_2 stay"),
    ("Anne Helene and Anne", "{{concept:7}} and {{concept:8}}"),
    ("anne  helene waves", "{{concept:7}} waves"),
    ("{{concept:3}} with sks", "{{concept:3}} with {{concept:3}}"),
    ("Zoë’s hat, zoë", "{{concept:9}}’s hat, {{concept:9}}"),
    ("", ""),
])
def test_to_template(text, expected):
    assert to_template(text, {"sks": 3, "Anne Helene": 7, "Anne": 8, "Zoë": 9}) == expected


def test_to_template_case_sensitive_and_empty_map():
    assert to_template("Rose by a rose", {"Rose": 1}, case_sensitive=True) == "{{concept:1}} by a rose"
    assert to_template("anything (at all) [x]", {}) == "anything (at all) [x]"
    assert to_template("a+b (c) aab", {"a+b": 2}) == "{{concept:2}} (c) aab"  # regex characters are literal


def test_a_generated_caption_that_no_longer_holds_can_be_dropped_but_the_users_stays(library, tmp_path):
    from engine.domain.captions import CaptionStore

    from .helpers import write_jpeg

    album = tmp_path / "a"
    album.mkdir()
    write_jpeg(album / "x.jpg", seed=1)
    library.add_folder(album)
    library.scan()
    pid = library.photos()[0].id
    store = CaptionStore(library.catalog)
    store.put_caption(pid, "personalised", "someone on a beach", model="m")
    store.put_user_caption(pid, "my own words")
    store.drop_generated(pid, "personalised")
    kinds = {c["kind"] for c in store.captions(pid)}
    assert kinds == {"user"}
