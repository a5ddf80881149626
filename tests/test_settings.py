"""Library settings are declared once (engine/settings.py): each engine reader falls back to the declared default,
and `Library.set_setting` checks a value and applies its side effect in one place for both front doors."""

from __future__ import annotations

import numpy as np
import pytest

from engine import settings
from engine.errors import InvalidInput, UserError


def _backend(cat):
    from engine.pipeline.faces import resolve_backend

    b = resolve_backend(cat)
    return type(b).__name__, getattr(getattr(b, "config", None), "detector", None)


def _clip_model(cat):
    from engine.models.clip import resolve_encoder

    return resolve_encoder(cat).spec.name


def _clip_weights(cat):
    from engine.models.clip import resolve_encoder

    return resolve_encoder(cat).weights


def _vlm(cat):
    from engine.models.hardware import resolve_vlm_name

    return resolve_vlm_name(cat)


def _polling(cat):
    from engine.ingest.watch import polling_wanted

    return polling_wanted(cat)


def _preview_cap(cat):
    """The cap the thumbnail stage enforces at the end of a run."""
    from engine.pipeline.thumbnails import ThumbnailStage

    caps: list[int] = []

    class Cache:
        def enforce_preview_cap(self, cap: int) -> None:
            caps.append(cap)

    stage = ThumbnailStage()
    stage.cache = Cache()
    stage.finish(cat)
    return caps[0]


def _instant(cat):
    from engine.domain.personalize import instant

    return instant.enabled(cat)


def _floor(cat):
    from engine.domain.search.visual import floor_for

    return floor_for(cat, "ViT-B-32/laion2b_s34b_b79k")


# each setting: the engine's reader of it, and a value other than the default that changes what the reader returns
READERS = {
    "face_backend": (_backend, "dlib-cnn"),
    "clip_model": (_clip_model, "DFN5B-CLIP-ViT-H-14-378"),
    "clip_weights": (_clip_weights, "random"),
    "vlm": (_vlm, "tiny-blip2-opt"),
    "watch_polling": (_polling, True),
    "preview_cache_bytes": (_preview_cap, 12_345),
    "instant_names": (_instant, False),
    "search_clip_floor": (_floor, 0.5),
}


def test_every_declared_setting_has_a_reader_here():
    assert set(READERS) == set(settings.SETTINGS)


@pytest.mark.parametrize("key", sorted(READERS))
def test_reader_falls_back_to_the_declared_default(library, key):
    """Unset and set to the declared default read the same; another value is seen (the reader reads the setting)."""
    reader, other = READERS[key]
    cat = library.catalog
    unset = reader(cat)
    library.set_setting(key, settings.SETTINGS[key].default)
    assert reader(cat) == unset
    library.set_setting(key, other)
    assert reader(cat) != unset
    library.set_setting(key, None)   # back to unset
    assert reader(cat) == unset


def test_declared_defaults_are_the_ones_the_engine_uses(library):
    from engine.models.clip import DEFAULT_MODEL

    cat = library.catalog
    assert _clip_model(cat) == settings.SETTINGS["clip_model"].default == DEFAULT_MODEL
    assert _preview_cap(cat) == settings.SETTINGS["preview_cache_bytes"].default
    assert _instant(cat) is settings.SETTINGS["instant_names"].default is True
    assert _polling(cat) is settings.SETTINGS["watch_polling"].default is False
    assert _backend(cat) == _backend_named(library, settings.SETTINGS["face_backend"].default)
    assert _clip_weights(cat) is None
    assert library.settings() == {k: s.default for k, s in settings.SETTINGS.items()}


def _backend_named(library, name):
    library.set_setting("face_backend", name)
    try:
        return _backend(library.catalog)
    finally:
        library.set_setting("face_backend", None)


def test_set_setting_checks_the_value_and_stores_it(library):
    assert library.set_setting("preview_cache_bytes", 1000) == {"key": "preview_cache_bytes", "value": 1000,
                                                                "stale_concepts": 0}
    assert library.settings()["preview_cache_bytes"] == 1000
    for key, bad in [("preview_cache_bytes", "lots"), ("preview_cache_bytes", True), ("watch_polling", "yes"),
                     ("vlm", "gpt-17"), ("clip_model", 3)]:
        with pytest.raises(InvalidInput) as err:
            library.set_setting(key, bad)
        assert key in str(err.value) or "gpt-17" in str(err.value)
    with pytest.raises(InvalidInput, match="unknown setting 'colour'"):
        library.set_setting("colour", "blue")
    assert library.settings()["preview_cache_bytes"] == 1000          # nothing refused was stored
    assert library.catalog.get_setting("vlm") is None
    assert settings.parse("watch_polling", "true") is True and settings.parse("vlm", "tiny-blip2") == "tiny-blip2"
    assert issubclass(InvalidInput, UserError)


def test_switching_the_vlm_makes_embeddings_of_the_other_vlm_stale(library):
    """The rule `myvlm settings vlm X` and the Settings dialog share: concepts trained on another VLM are stale,
    and switching back makes them ready again."""
    from engine.domain.personalize.embeddings import ConceptEmbedding, EmbeddingStore
    from engine.models.vlm.specs import resolve_spec

    assert library.set_setting("vlm", "tiny-blip2")["stale_concepts"] == 0
    concept = library.concepts().create("object", "Spiff")
    checkpoint = resolve_spec("tiny-blip2")[1]
    EmbeddingStore(library.paths.concepts).save(ConceptEmbedding(
        concept.id, checkpoint, "blip2", "caption", concept.identifier, np.ones((1, 8), np.float32),
        np.ones((1, 4), np.float32), step=5, steps_total=5))

    assert library.set_setting("vlm", "tiny-blip2-opt") == {"key": "vlm", "value": "tiny-blip2-opt",
                                                            "stale_concepts": 1}
    assert library.concepts().get(concept.id).embedding_state == "stale"
    assert library.set_setting("vlm", "tiny-blip2")["stale_concepts"] == 0
    assert library.concepts().get(concept.id).embedding_state == "ready"
