""""Where is Bella?": a box around a recognised concept, from a VLM that answers referring expressions (MiniGPT-v2).

The concept must be recognised in the photo (its head fired) and trained for this VLM: its captioning embedding is
appended as for captions (the paper's REC uses the same embedding), and the model is asked "[refer] <identifier> in
the image". Its answer is parsed by `minigpt_v2.parse_box`; anything else is a clear "no box", never a guess.
The box is in pixels of the photo as shown (EXIF orientation and the user's rotation applied).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.models.vlm.specs import CAPTION, VlmError

if TYPE_CHECKING:
    from engine.domain.personalize.service import Personalizer


class CannotLocate(VlmError):
    """The library's captioner cannot point at things in a photo; the message says which one can."""


@dataclass
class Location:
    photo: str
    concept: str
    box: list[int] | None       # [x1, y1, x2, y2] in pixels of the photo as shown, or None
    raw: str                    # the model's own text ("" when it was not asked)
    reason: str = ""            # why there is no box
    size: tuple[int, int] = (0, 0)   # the photo's (width, height) the box is in

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"photo": self.photo, "concept": self.concept, "box": self.box, "raw": self.raw}
        if self.reason:
            out["reason"] = self.reason
        return out


def can_locate(pers: Personalizer) -> bool:
    """Whether the library's VLM answers with boxes (without loading it)."""
    from engine.models.vlm.specs import resolve_spec

    return resolve_spec(pers.vlm_name)[0].family == "minigpt-v2"


def locate(pers: Personalizer, photo_id: int, concept: int | str, cancel=None) -> Location:
    """Ask the VLM where `concept` is in the photo. Raises CannotLocate for a VLM without boxes; `cancel` (an
    Event) stops the model at its next token (minigpt_v2.LocateCancelled)."""
    from engine.models.vlm.specs import resolve_spec

    spec = resolve_spec(pers.vlm_name)[0]
    if spec.family != "minigpt-v2":
        raise CannotLocate(f"{spec.title} writes captions but cannot point at things in a photo; only MiniGPT-v2 "
                           f"can (choose it with --vlm minigpt-v2, or in Settings ▸ Models)")
    c = pers.registry.get(concept)
    photo = pers.catalog.photo(photo_id)
    if photo is None:
        raise VlmError(f"no photo {photo_id}")
    w, h = photo.width or 0, photo.height or 0
    if photo.user_rotation % 180 == 90:
        w, h = h, w
    where = Location(photo.path, c.name, None, "", size=(w, h))
    if c.id not in pers.fired([photo_id])[photo_id]:
        where.reason = f"{c.name} was not recognised in this photo"
        return where
    wrapper = pers.wrapper
    with wrapper.lock:
        known = pers._use_embeddings(CAPTION)
        if c.id not in known:
            where.reason = (f"{c.name} is not taught to {spec.title} yet (teach it: myvlm train {c.name} "
                            f"--vlm {pers.vlm_name})")
            return where
        fired = [cid for cid in pers.fired([photo_id])[photo_id] if cid in known]
        image = pers.photo_image(photo_id)
        if not w or not h:
            w, h = image.size
            where.size = (w, h)
        found = wrapper.locate(image, known[c.id].identifier, fired, size=(w, h), cancel=cancel)
    where.box = list(found.box) if found.box else None
    where.raw, where.reason = found.raw, found.reason
    return where
