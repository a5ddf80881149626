"""The engine's front door: what the CLI and the GUI call. One `Library` object per thread."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from engine.domain.people import People
from engine.errors import InvalidInput, NotFound
from engine.ingest.image_cache import THUMB_SIZE, ImageCache
from engine.ingest.scanner import Scanner, ScanReport
from engine.models.downloads import DownloadCancelled, ModelError, ModelManager, TokenRequired
from engine.models.downloads import _human as human_size
from engine.models.vlm.estimates import HERE_LABEL, minutes_text, seconds_text
from engine.pipeline.faces import crop_path
from engine.pipeline.runner import MISSING, Pipeline, PipelineReport, ProgressCallback, ProgressEvent
from engine.pipeline.stages import REGISTRY
from engine.progress import ProgressFn
from engine.storage import paths as P

# the engine types and helpers the GUI pages need, re-exported so the views import only this module
from engine.storage.catalog import FOLDER_OFFLINE, OK, Catalog, Changes, DiskFull, Folder, Photo, SchemaTooNew
from engine.storage.library_folder import (
    APP_NAME,
    APP_SLUG,
    ENV_LIBRARY,
    LibraryPaths,
    default_library_path,
    default_pictures_path,
    follow_moves,
    setup_logging,
)

log = logging.getLogger(__name__)


class FolderNotFound(NotFound, FileNotFoundError):
    """A folder the user named is not there (still a FileNotFoundError for existing callers)."""


class Library:
    """A library folder opened for use: its catalog, scanner and pipeline."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.paths = LibraryPaths(Path(root).expanduser().absolute() if root else default_library_path())
        self.paths.ensure()
        setup_logging(self.paths)
        self.catalog = Catalog(self.paths)
        self._mend_interrupted_training()
        self._pipeline: Pipeline | None = None
        self._paused = False
        self._captioner = None   # the Personalizer load_captioner() made, reused by teach_captioner
        self._scan_cancel = threading.Event()
        self.options: dict[str, Any] = {}  # per-run choices from the front door, e.g. {"face_backend": "dlib"}

    def _mend_interrupted_training(self) -> None:
        """A concept left 'training' by a process that died gets its real state back (engine/domain/personalize/lease.py)."""
        from engine.domain.personalize.lease import recover_interrupted_training

        try:
            recover_interrupted_training(self.catalog)
        except Exception:   # never keep a library from opening; `myvlm check` still reports the mark
            log.exception("could not check for interrupted trainings")

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- folders ----------------------------------------------------------------------------------------------------

    def add_folder(self, path: P.PathLike) -> Folder:
        """Watch a folder (a library kept inside it is skipped by scans and the watcher)."""
        pb = P.normalize(path)
        if not os.path.isdir(P.to_fs(pb)):
            raise FolderNotFound(f"not a folder: {P.display(pb)}")
        if P.is_within(pb, P.normalize(self.paths.root)):
            raise InvalidInput(f"{P.display(pb)} is this library's own folder (thumbnails, database), not a photo folder")
        folder = self.catalog.add_folder(pb)
        log.info("watching folder %s", folder.path)
        return folder

    def folders(self) -> list[Folder]:
        return self.catalog.folders()

    # -- work -------------------------------------------------------------------------------------------------------

    def scan(self, targets: Iterable[P.PathLike] | None = None,
             progress: ProgressFn | None = None,
             cancel: threading.Event | None = None) -> ScanReport:
        """Reconcile the catalog with the disk: every watched folder, or just `targets` (sub-folders); `progress`
        gets Progress("scan", files done, files found, current file)."""
        self._scan_cancel = cancel or threading.Event()
        scanner = Scanner(self.catalog, progress=progress, cancel=self._scan_cancel)
        return scanner.scan_all() if targets is None else scanner.scan_paths(targets)

    def pipeline(self, stages: Iterable[str] | None = None, cancel: threading.Event | None = None) -> Pipeline:
        created = REGISTRY.create(stages)
        for stage in created:
            stage.configure(**self.options)
        return Pipeline(self.catalog, created, cancel)

    def process(self, mode: str = MISSING, stages: Iterable[str] | None = None,
                progress: ProgressCallback | None = None, pipeline: Pipeline | None = None,
                cancel: threading.Event | None = None) -> PipelineReport:
        """Run the stages on the photos that need them. `progress` gets ProgressEvents (Progress of each stage);
        setting `cancel` (or Library.cancel()) stops after the photos in flight. `pipeline`: one made with
        Library.pipeline() to pause or cancel from another thread (then it carries its own cancel event)."""
        pipe = pipeline or self.pipeline(stages, cancel)
        if progress:
            pipe.subscribe(progress)
        self._pipeline = pipe
        if self._paused:   # paused before this run began (set_paused reads _pipeline after setting the flag)
            pipe.pause()
        try:
            return pipe.run(mode)
        finally:
            self._pipeline = None

    def set_paused(self, paused: bool) -> None:
        """Hold the running pipeline between photos, or let it go on (thread-safe); a run that starts while paused
        starts held. cancel() also ends a held run."""
        self._paused = paused
        pipe = self._pipeline
        if pipe is not None:
            pipe.pause() if paused else pipe.resume()

    def cancel(self) -> None:
        """Stop a running scan, and the running pipeline after the photos in flight (thread-safe)."""
        self._scan_cancel.set()
        if self._pipeline is not None:
            self._pipeline.cancel()

    # -- reading ----------------------------------------------------------------------------------------------------

    def stage_versions(self) -> list[tuple[str, int]]:
        return [(name, version) for name, version, _, _ in self._stage_info()]

    def _stage_info(self) -> list[tuple[str, int, str | None, tuple[str, ...]]]:
        """(name, version, why it cannot run here or None, the stages it needs) of every stage."""
        out = []
        for stage in self.pipeline().stages:
            try:
                stage.setup(self.catalog)
                reason = stage.unavailable(self.catalog)
            except Exception as exc:  # noqa: BLE001 - e.g. a broken model pack: the status still shows the rest
                reason = str(exc)
            out.append((stage.name, stage.version, reason, tuple(stage.requires)))
        return out

    def rotate(self, photo_id: int, degrees: int) -> None:
        """Show a photo turned (clockwise, on top of EXIF); stages that look at pixels see it anew."""
        photo = self.catalog.photo(photo_id)
        if photo is None:
            raise NotFound(f"no photo with id {photo_id}")
        from engine.pipeline.faces import turn_faces

        with self.catalog.write():
            turn_faces(self.catalog, photo, degrees)  # boxes follow the picture: faces keep their place and identity
            self.catalog.set_user_rotation(photo_id, photo.user_rotation + degrees)
            self.catalog.reset_stages([photo_id], [n for n in REGISTRY.names() if n != "thumbnail"])

    def people(self) -> People:
        return People(self.catalog)

    def concepts(self):
        from engine.domain.concepts.registry import ConceptRegistry

        return ConceptRegistry(self.catalog)

    def clip_encoder(self):
        from engine.models.clip import resolve_encoder

        return resolve_encoder(self.catalog, self.options.get("clip_model"), self.options.get("clip_weights"))

    def train_concept_head(self, concept_id: int, progress: ProgressFn | None = None,
                           cancel: threading.Event | None = None, negatives_folder=None):
        """(Re)train a concept's recognition head, store it, and redo that concept's signals over the album."""
        from engine.domain.concepts.detect import ConceptDetector
        from engine.domain.concepts.registry import PERSON

        registry = self.concepts()
        concept = registry.get(concept_id)
        try:
            if concept.kind == PERSON:
                from engine.domain.concepts.face_head import build_person_head

                head, metrics = build_person_head(self.catalog, concept.person_id, self.face_backend())
            else:
                from engine.domain.concepts.object_head import ObjectHeadTrainer

                trainer = ObjectHeadTrainer(self.catalog, self.clip_encoder())
                head, metrics = trainer.train(concept_id, negatives_folder=negatives_folder, progress=progress,
                                              cancel=cancel)
        except Exception as exc:
            from engine.domain.concepts.object_head import TrainingCancelled

            if not isinstance(exc, TrainingCancelled):  # a cancel is the user's choice, not an error
                registry.set_error(concept_id, str(exc))
            raise
        concept = registry.save_head(concept_id, head, metrics)
        ConceptDetector(self.catalog).run([concept_id])
        from engine.domain.personalize import instant

        instant.recaption(self.catalog, registry.photos_with(concept_id))   # named from recognition next run
        return concept

    def personalizer(self, vlm: str | None = None):
        """Concept embeddings, personalised captions and answers on the library's VLM (`vlm` option/setting)."""
        from engine.domain.personalize.service import Personalizer

        return Personalizer(self.catalog, vlm or self.options.get("vlm"), device=self.options.get("device"))

    def load_captioner(self) -> tuple[Any, str]:
        """Load the library's captioner now (slow: the VLM's weights) and keep it for this Library's next
        teach_captioner; returns (the device it runs on, its name), for a view to say where teaching will run."""
        self._captioner = self.personalizer()
        return self._captioner.wrapper.device, self._captioner.vlm_name

    def can_locate(self) -> bool:
        """Whether the library's captioner answers "where is …?" with a box (MiniGPT-v2), without loading it."""
        from engine.models.hardware import resolve_vlm_name
        from engine.models.vlm.specs import VlmError, resolve_spec

        try:
            return resolve_spec(resolve_vlm_name(self.catalog, self.options.get("vlm")))[0].family == "minigpt-v2"
        except VlmError:
            return False

    def face_backend(self):
        """The face backend this library uses now (see engine.pipeline.faces.resolve_backend)."""
        from engine.pipeline.faces import resolve_backend

        return resolve_backend(self.catalog, self.options.get("face_backend"))

    def status(self) -> dict[str, Any]:
        info = self._stage_info()
        st = self.catalog.status_summary([(n, v, r) for n, v, _, r in info])
        for name, _, reason, _ in info:
            st["stages"][name]["unavailable"] = reason
        q = self.catalog.query(
            "SELECT SUM(name IS NOT NULL) AS named, SUM(name IS NULL AND hidden = 0) AS unnamed, SUM(hidden) AS hidden "
            "FROM people")[0]
        st["people"] = {"named": q["named"] or 0, "unnamed": q["unnamed"] or 0, "hidden": q["hidden"] or 0,
                        "faces": self.catalog.scalar("SELECT COUNT(*) FROM faces WHERE state != 'ignored'")}
        st["concepts"] = {r["kind"]: r["n"] for r in self.catalog.query(
            "SELECT kind, COUNT(*) AS n FROM concepts GROUP BY kind")}
        return st

    def photos(self, **filters: Any) -> list[Photo]:
        return self.catalog.photos(**filters)

    def catalog_version(self) -> int:
        """A number that changes when another connection commits to the catalog (a `myvlm index` in a terminal,
        the app's indexing process, another thread's Library). SQLite's `PRAGMA data_version`: it reads no table,
        so a view can ask every second whether to read the catalog again. Only this Library's own writes leave it
        unchanged."""
        return int(self.catalog.scalar("PRAGMA data_version"))

    # -- change feed (verbs) ------------------------------------------------------------------------------------

    def changes_since(self, token: int | None) -> Changes:
        """The photos whose row or derived data (faces, captions, concept signals, stage state, rotation, status)
        changed since `token`, in any process, so a view refreshes those rows instead of every photo. Pass the
        returned token next time; `photo_ids` None means read everything again (first call, or too much changed).
        Cheap to call every second: it reads only the feed's new rows."""
        return self.catalog.changes_since(token)

    # -- settings (verbs) ---------------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """Every library setting's value: the stored one, else its declared default (engine.settings)."""
        from engine import settings

        return {key: settings.read(self.catalog, key) for key in settings.SETTINGS}

    def set_setting(self, key: str, value: Any) -> dict[str, Any]:
        """Check and store one setting, and apply what changing it implies, once for both front doors: concept
        embeddings belong to one VLM, so switching the `vlm` makes those trained on another stale.
        Returns {"key", "value" (as stored), "stale_concepts" (concepts to retrain; 0 unless the vlm changed)}."""
        from engine import settings

        value = settings.write(self.catalog, key, value)
        stale = 0
        if key == "vlm":
            states = self.personalizer(value).refresh_states()   # the library's new VLM, whatever this run's option
            stale = sum(state == "stale" for state in states.values())
        return {"key": key, "value": value, "stale_concepts": stale}

    # -- captions and search (issue 7) --------------------------------------------------------------------------

    def captions(self):
        """Captions and answers, stored with concept placeholders (engine.domain.captions.CaptionStore)."""
        from engine.domain.captions import CaptionStore

        return CaptionStore(self.catalog)

    def searcher(self, encoder: Any = None):
        """The library's searcher. `encoder`: a CLIP text encoder to use instead of the library's own (tests,
        benchmarks); the library's own counts only when its weights are on this machine."""
        from engine.domain.search import Searcher

        if encoder is not None:
            return Searcher(self.catalog, encoder)
        try:
            own = self.clip_encoder()  # the settings may have changed, or the weights arrived, since last time
            missing = own.missing_reason()
        except Exception as exc:  # noqa: BLE001 - e.g. an unknown model in the settings: words still work
            own, missing = None, str(exc)
        own = None if missing else own
        cached = self.__dict__.get("_searcher")  # kept: it caches the name index between queries
        if cached is None or cached.encoder is not own:
            cached = self.__dict__["_searcher"] = Searcher(self.catalog, own)
        cached.encoder_missing = missing
        return cached

    def warm_up_search(self) -> None:
        """Build the search documents and the name index now (in the background), so the first query is quick."""
        self.searcher().refresh()

    def search(self, query: str, *, limit: int = 50, encoder: Any = None):
        """Photos for a free-text query ("Alex at the beach"), best first, each with why it matched."""
        return self.searcher(encoder).search(query, limit=limit)

    # -- desktop app (issue 8): calls the views need, so that the rules stay here and the views stay thin --------

    def reject_suggestion(self, group_id: int, person_id: int) -> int:
        """"Is this Alex?" — "No": every face of the group is "not this person" for Alex, forever (so the
        suggestion never comes back for these faces). Returns the number of faces."""
        people = self.people()
        people.person(person_id)
        face_ids = [f["id"] for f in people.faces_of(group_id)]
        with self.catalog.write():
            for fid in face_ids:
                people.reject(fid, person_id)
        return len(face_ids)

    def person_concept(self, person_id: int, max_examples: int = 4):
        """A named person as a concept ready to personalise: the concept (made if missing), its face head trained
        when it is not ready, and training photos — the photos of their confirmed faces, biggest faces first, one
        per photo, up to `max_examples` — added when it has none."""
        from engine.domain.concepts.registry import ConceptError

        registry = self.concepts()
        concept = registry.add_person(person_id)
        if not registry.examples(concept.id):
            photos: list[int] = []
            for r in self.catalog.query(
                    "SELECT f.photo_id FROM faces f JOIN photos p ON p.id = f.photo_id WHERE f.person_id = ? "
                    "AND f.state = 'confirmed' AND p.status = 'ok' ORDER BY f.w * f.h DESC", [person_id]):
                if r["photo_id"] not in photos:
                    photos.append(r["photo_id"])
            if not photos:
                raise ConceptError(f"{concept.name} has no confirmed faces yet: name or confirm some faces first")
            registry.add_examples(concept.id, photos[:max_examples])
        if registry.get(concept.id).head_state != "ready":
            concept = self.train_concept_head(concept.id)
        return registry.get(concept.id)

    # -- command line (verbs) -----------------------------------------------------------------------------------

    def find_photo(self, ref: int | str) -> Photo:
        """A photo the user named by its id or by its path (the command line takes either)."""
        from engine.errors import NotFound

        text = str(ref)
        photo = self.catalog.photo(int(text)) if text.isdigit() else self.catalog.photo_by_path(text)
        if photo is None:
            raise NotFound(f"no photo {text!r} in the catalog (give a photo id or the path of an indexed photo)")
        return photo

    def purge_gone(self) -> int:
        """Forget the photos whose files are gone (the files of offline folders are not gone). Returns how many."""
        return self.catalog.purge_gone()

    def recluster(self) -> Any:
        """Group every face again from scratch, keeping confirmed faces, names and rejections (ReclusterReport)."""
        from engine.domain.face_clustering import FaceClusterer

        backend = self.face_backend()
        return FaceClusterer(self.catalog, backend.key, backend.embedding_dim, backend.thresholds).recluster()

    def check(self, *, files: bool = True, clean: bool = False) -> Any:
        """Is the library whole: SQLite's checks and the catalog's invariants (engine.admin.integrity's report);
        `clean` removes what interrupted writes left and repairs what older versions left."""
        from engine.admin.integrity import check_library

        return check_library(self.catalog, files=files, clean=clean)

    def name_person(self, person_id: int, name: str, face_ids: Iterable[int] | None = None) -> int:
        """Name a person or an unnamed group; a name already used merges into that person. `face_ids`: the faces
        the user saw (naming confirms those; None: the group as it stands). Returns the person's id."""
        return self.people().name(person_id, name, None if face_ids is None else list(face_ids))

    def merge_people(self, target_id: int, source_ids: Iterable[int]) -> int:
        return self.people().merge(target_id, list(source_ids))

    def move_faces(self, face_ids: Iterable[int], person_id: int) -> None:
        """These faces are that person (confirmed, so no clustering undoes it)."""
        self.people().move_faces(list(face_ids), person_id)

    def split_person(self, person_id: int, face_ids: Iterable[int]) -> int:
        """Some faces of a person are someone else: a new group of them. Returns its id."""
        return self.people().split(person_id, list(face_ids))

    def confirm_face(self, face_id: int) -> None:
        self.people().confirm(face_id)

    def hide_person(self, person_id: int, hidden: bool = True) -> None:
        self.people().hide(person_id, hidden)

    def hide_small_groups(self, max_faces: int) -> list[int]:
        """Hide every unnamed group of at most `max_faces` faces (strangers in the background). Returns their ids."""
        return self.people().hide_small(max_faces)

    def forget_person(self, person_id: int) -> int:
        """Delete a person's name and face data (privacy). Returns the number of faces forgotten."""
        return self.people().forget(person_id)

    def concept(self, ref: int | str) -> Any:
        """A concept by id or name (engine.domain.concepts.registry.Concept)."""
        return self.concepts().get(ref)

    def add_person_concept(self, person_id: int, identifier: str | None = None) -> Any:
        """A named person as a concept (the one they have, else a new one); train its head with
        train_concept_head."""
        return self.concepts().add_person(person_id, identifier=identifier)

    def remove_concept(self, ref: int | str) -> None:
        """Delete a concept, its head and embeddings (the photos are untouched)."""
        reg = self.concepts()
        reg.remove(reg.get(ref).id)

    def import_concept(self, folder: str | os.PathLike, name: str | None = None) -> Any:
        """A concept from a folder in the MyVLM research layout (images + captions.json)."""
        from engine.domain.concepts.research import import_research_concept

        return import_research_concept(self.concepts(), Path(folder), name=name)

    def detect_concepts(self, photo_id: int) -> list[dict[str, Any]]:
        """Which concepts a photo shows, worked out now: best score first, each {"concept_id", "name", "kind",
        "score", "fired", "face_id"}."""
        from engine.domain.concepts.detect import ConceptDetector

        concepts, signals, _ = ConceptDetector(self.catalog).compute(photo_ids=[photo_id])
        by_id = {c.id: c for c in concepts}
        return [{"concept_id": s.concept_id, "name": by_id[s.concept_id].name, "kind": by_id[s.concept_id].kind,
                 "score": s.score, "fired": s.fired, "face_id": s.face_id}
                for s in sorted(signals, key=lambda s: -s.score)]

    def clip_unavailable(self) -> str | None:
        """Why the library's CLIP model cannot run here (its weights are missing), or None. Thing suggestions and
        picture search need it: without it "no suggestions" means "cannot look", not "nothing recurring"."""
        return self.clip_encoder().missing_reason()

    def prepare_teaching(self, names: Iterable[int | str]) -> list[dict[str, Any]]:
        """Make each name teachable, as the app's "Teach the captioner" does (person_concept): a named person
        without a concept gets one from their confirmed faces, a person concept without training photos gets their
        faces' photos. Returns {"name", "person_id"} of each concept made; a name that is neither a concept nor a
        named person raises NotFound."""
        from engine.domain.concepts.registry import ConceptError
        from engine.errors import NotFound

        reg, made = self.concepts(), []
        for name in names:
            try:
                c = reg.get(name)
            except ConceptError:
                person = None if str(name).isdigit() else self.people().find(str(name))
                if person is None:
                    raise NotFound(f"no concept or named person {name!r}") from None
                made.append({"name": self.person_concept(person["id"]).name, "person_id": person["id"]})
                continue
            if c.kind == "person" and c.person_id is not None and not reg.examples(c.id):
                self.person_concept(c.person_id)
        return made

    def targets(self, concept: int | str, task: str = "caption") -> list[Any]:
        """The captions (or questions and answers) a concept's embedding is trained on, per training photo."""
        return self.personalizer().targets(concept, task)

    def set_targets(self, example_id: int, captions: Iterable[str]) -> None:
        """The user's own targets for one training photo (they replace the generated ones)."""
        self.personalizer().set_targets(example_id, list(captions))

    def generate_targets(self, concept: int | str, task: str = "caption", regenerate: bool = False) -> list[Any]:
        """Caption the concept's training photos that have no targets yet (`regenerate`: every one again)."""
        return self.personalizer().prepare_targets(concept, task, regenerate=regenerate)

    def caption(self, photo_id: int, *, personalized: bool = True, store: bool = True) -> dict[str, Any]:
        """Caption a photo with the library's VLM, by name where trained or recognised concepts appear (`store`:
        kept as the photo's caption). Returns {"caption" (with today's names), "text", "concepts", "model",
        "prompt", "personalised", "instant"}."""
        g = self.personalizer().caption(photo_id, personalized=personalized)
        captions = self.captions()
        if store:
            captions.put_generated(photo_id, g)
        return {"caption": captions.render(g.template), **g.to_json()}

    def export_embedding(self, concept: int | str, task: str, out_dir: str | os.PathLike) -> Path:
        """Write a concept's embedding for the library's VLM in the research format
        (concept_embeddings_<vlm>_<task>.pt). Returns the file."""
        from engine.models.vlm.specs import resolve_spec

        pers = self.personalizer()
        spec, checkpoint = resolve_spec(pers.vlm_name)
        return pers.store.export_research(self.concept(concept).id, checkpoint, task, Path(out_dir), spec.family)

    def close_and_restore(self, backup: str | os.PathLike, *, force: bool = False,
                          progress: ProgressFn | None = None) -> Any:
        """Restore a backup into this library's folder (engine.admin.backup.restore_library). A restore replaces the
        folder, so this Library lets go of its catalog and log file first and is closed afterwards."""
        from engine.admin.backup import restore_library
        from engine.storage.library_folder import close_logging

        self.close()
        close_logging(self.paths)
        return restore_library(backup, self.paths.root, force=force, progress=progress)

    def close_and_move(self, new: str | os.PathLike, *, delete_old: bool = False,
                       progress: ProgressFn | None = None) -> Any:
        """Move this library's folder to `new` (copy, check every file, switch; engine.admin.backup.move_library), this
        Library closed first (the app's move_to keeps it open). Returns the MoveReport."""
        from engine.admin.backup import move_library
        from engine.storage.library_folder import close_logging

        self.close()
        close_logging(self.paths)
        return move_library(self.paths.root, new, delete_old=delete_old, progress=progress)


    # -- main window (verbs) -----------------------------------------------------------------------------------

    def reject_faces(self, face_ids: Iterable[int], person_id: int) -> int:
        """"Not them" for some faces: each is "not this person" for `person_id`, forever, in one transaction.
        Returns the number of faces."""
        people, face_ids = self.people(), list(face_ids)
        with self.catalog.write():
            for fid in face_ids:
                people.reject(fid, person_id)
        return len(face_ids)

    def teach_thing(self, name: str, photo_ids: Iterable[int], *, identifier: str | None = None,
                    progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                    negatives_folder: str | None = None) -> int:
        """Name a thing from photos that show it. A name already used for a thing (any case) ADDS these photos to
        its examples and retrains it; a new thing is made together with its trained head, or not at all (no
        half-made thing in the list). `identifier`, `progress`, `cancel`, `negatives_folder`: as for
        train_concept_head (the identifier only for a new thing). Returns the thing's concept id."""
        reg, ids = self.concepts(), list(photo_ids)

        def train(concept_id: int) -> Any:
            return self.train_concept_head(concept_id, progress=progress, cancel=cancel,
                                           negatives_folder=negatives_folder)

        existing = next((c for c in reg.list("object") if c.name.casefold() == name.casefold()), None)
        if existing is None:
            return reg.add_object_trained(name, ids, train, identifier=identifier).id
        reg.add_examples(existing.id, ids)
        train(existing.id)
        return existing.id

    def name_face(self, face_id: int, name: str) -> int:
        """"Who is this?" on a face of no group: a new person of that one face, confirmed (a name already used adds
        it to that person). Returns the person's id."""
        return self.people().create(name, [face_id])

    def ignore_face(self, face_id: int) -> None:
        """Not a face worth tracking (a poster, a crowd): never clustered again."""
        self.people().ignore_face(face_id)

    def rename_concept(self, concept_id: int, name: str) -> Any:
        """A thing's new name (a name another concept has is refused)."""
        return self.concepts().rename(concept_id, name)

    def save_caption(self, photo_id: int, text: str) -> None:
        """The user's own caption for a photo (it wins over the model's)."""
        self.captions().put_user_caption(photo_id, text)

    def ask(self, photo_id: int, question: str, *, store: bool = True) -> dict[str, Any]:
        """Ask the captioner a question about a photo, by the names it knows; the answer is stored with the photo
        (unless `store` is False). Returns {"answer" (rendered with today's names), "text", "concepts", "model",
        "prompt", "personalised", "instant"}."""
        g = self.personalizer().ask(photo_id, question)
        captions = self.captions()
        if store:
            captions.put_answer(photo_id, question, g.template, model=g.model, concept_ids=g.concepts,
                                instant=g.instant)
        return {"answer": captions.render(g.template), **g.to_json()}

    def locate(self, photo_id: int, concept_id: int, cancel: threading.Event | None = None) -> dict[str, Any]:
        """ "Where is Bella?": the captioner's box (Location.as_dict()). A captioner that cannot point answers
        {"cannot": why} (not an error: the user asked something this model does not do); `cancel` set stops the
        model at its next token and raises engine.errors.Cancelled."""
        from engine.domain.personalize.locate import CannotLocate, locate
        from engine.errors import Cancelled
        from engine.models.vlm.minigpt_v2 import LocateCancelled

        try:
            return locate(self.personalizer(), photo_id, concept_id, cancel=cancel).as_dict()
        except CannotLocate as exc:
            return {"cannot": str(exc)}
        except LocateCancelled as exc:
            raise Cancelled(str(exc)) from exc

    def watch_folders(self, on_update: Callable[[Any], None], *, run_pipeline: bool = False,
                      poll_interval: float = 2.0) -> Any:
        """Start watching the library's folders (engine.ingest.watch.FolderWatcher; without `run_pipeline` the caller
        decides when to index, with it each update is indexed as `myvlm watch` does); `on_update(WatchUpdate)`
        comes from the watcher's threads; `.error` says what stopped it. Stop it with `.stop(timeout)`."""
        from engine.ingest.watch import FolderWatcher

        return FolderWatcher(self.paths.root, open_library=type(self), run_pipeline=run_pipeline,
                             poll_interval=poll_interval, on_update=on_update).start(wait_ready=False)

    # -- GUI pages (verbs) ------------------------------------------------------------------------------------------

    def photo(self, photo_id: int) -> Photo | None:
        """One photo's row as it is now (None: not in the library, e.g. removed since the view read it)."""
        return self.catalog.photo(photo_id)

    def remove_folder(self, folder_id: int) -> int:
        """Stop watching a folder and forget its photos and all that was learned from them (the files stay
        untouched). Returns the number of photos forgotten."""
        return self.catalog.remove_folder(folder_id)

    def thing_suggestions(self, limit: int = 20) -> list[Any]:
        """Recurring things worth naming ("23 photos of this over 5 days"), best first, by the library's CLIP
        model (engine.domain.concepts.suggest.ThingSuggestion rows)."""
        from engine.domain.concepts.suggest import suggest_things

        enc = self.clip_encoder()
        return suggest_things(self.catalog, enc.key, enc.dim, limit=limit)

    def teach_captioner(self, concepts: Iterable[int | str], task: str = "caption",
                        config: dict[str, Any] | None = None, *,
                        edits: dict[int, list[str]] | None = None, progress: ProgressFn | None = None,
                        cancel: threading.Event | None = None, resume: bool = True) -> dict[int, Any]:
        """Train the concepts' embeddings into the library's VLM (engine.domain.personalize.service.Personalizer.train),
        with the user's reviewed `edits` ({example id: target captions}) stored first, and this computer's time per
        concept remembered for the next estimate. `config`: TrainingConfig fields to change ({"steps": 200}). The
        captioner load_captioner() loaded is reused. Returns {concept id: embedding}."""
        from engine.domain.personalize.training import TrainingConfig
        from engine.models.vlm.estimates import TrainingClock

        pers = self._captioner or self.personalizer()
        for example_id, captions in (edits or {}).items():
            pers.set_targets(example_id, captions)
        clock = TrainingClock()

        def report(p: Any) -> None:
            clock(p)
            if progress is not None:
                progress(p)

        result = pers.train(list(concepts), task, TrainingConfig(**(config or {})), progress=report, cancel=cancel,
                            resume=resume)
        if getattr(pers.wrapper, "record_timings", False):   # tiny test models would spoil the estimates
            clock.finish(pers.vlm_name, pers.wrapper.device)
        return result

    def backup(self, dest: str | os.PathLike, *, with_thumbnails: bool = False,
               progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> Any:
        """Back the library up into `dest` (engine.admin.backup.backup_library: safe while the app indexes). Returns
        its BackupReport."""
        from engine.admin.backup import backup_library

        return backup_library(self.paths.root, dest, with_thumbnails=with_thumbnails, progress=progress,
                              cancel=cancel)

    def move_to(self, new: str | os.PathLike, *, progress: ProgressFn | None = None) -> Any:
        """Move this library's folder to `new` while it is open here (engine.admin.backup.move_library; the old folder
        is kept). Returns its MoveReport; reopen the library at `report.new`."""
        from engine.admin.backup import move_library

        return move_library(self.paths.root, new, allow_open=True, progress=progress)


__all__ = ["Library", "FolderNotFound", "ProgressEvent", "ScanReport", "PipelineReport", "Changes",
           "OK", "Photo", "APP_NAME", "default_library_path", "default_pictures_path"]


# -- GUI pages (re-exports) -------------------------------------------------------------------------------------------
__all__ += ["LibraryPaths", "FOLDER_OFFLINE", "DiskFull", "SchemaTooNew", "APP_SLUG", "ENV_LIBRARY", "follow_moves",
            "DownloadCancelled", "ModelError", "ModelManager", "TokenRequired", "human_size", "HERE_LABEL",
            "minutes_text", "seconds_text", "crop_path", "THUMB_SIZE", "ImageCache"]


# -- command line (re-exports) ----------------------------------------------------------------------------------------

def doctor_report(paths: LibraryPaths | None = None) -> dict[str, Any]:
    """Versions, device, captioner estimates and which models are here (engine.admin.doctor), also for a library that
    does not open (`paths` None)."""
    from engine.admin.doctor import report

    return report(paths)


def research_train(folder: str | os.PathLike, out: str | os.PathLike, *, vlm: str, task: str,
                   config: dict[str, Any] | None, models_dir: Path, eval_images: str | os.PathLike | None = None,
                   progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train from a MyVLM research-layout concept folder (no library involved); `config`: TrainingConfig fields to
    change. Returns the report (the files written)."""
    from engine.domain.personalize.research_run import run_research_training
    from engine.domain.personalize.training import TrainingConfig

    return run_research_training(Path(folder), Path(out), vlm=vlm, task=task, config=TrainingConfig(**(config or {})),
                                 models_dir=models_dir, eval_images=Path(eval_images) if eval_images else None,
                                 progress=progress)


_LAZY = {"TrainingOutOfMemory": "engine.domain.personalize.training"}   # imports torch: only when a front door asks for it


def __getattr__(name: str) -> Any:
    """Re-exports whose modules are heavy, imported when first asked for (`from engine.library import X`)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ += ["doctor_report", "research_train", *_LAZY]
