"""The InsightFace face backend: an InsightFace model pack (buffalo_l, buffalo_s, antelopev2 or any folder with a
detection and a recognition ONNX): SCRFD detection with 5 keypoints, ArcFace alignment and a 512-d ArcFace embedding.
Much better than dlib, but the packs are downloaded on request and their licence is non-commercial research only.
The shared interface and conventions, and where packs are found, are in backends.py.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.models.faces.backends import (
    DetectedFace,
    FaceBackend,
    FaceBackendError,
    FaceThresholds,
    check_image,
    l2_normalise,
    thresholds_dict,
)

INSIGHTFACE_LICENCE = "InsightFace model licence: non-commercial research use only"

# buffalo_l (ArcFace R50 trained on WebFace600K). NOT MEASURED: InsightFace's recognition packs cannot be obtained
# on the machines this project is developed and tested on, so none of these comes from our own measurement (see
# docs/face-thresholds.md; scripts/calibrate_faces.py --backend insightface measures them where a pack is
# installed). concept_distance is the MyVLM paper's value; cluster = Immich's default maximum cosine distance for
# face clustering (0.5), suggest a little looser, min/found scores after Immich's minimum detection score (0.7).
# Used for every pack until calibrated per pack.
INSIGHTFACE_THRESHOLDS = FaceThresholds(
    cluster_distance=0.5,  # PROVISIONAL: Immich's default, not measured here
    suggest_distance=0.6,  # PROVISIONAL: not measured here
    concept_distance=0.675,  # MyVLM paper, ArcFace buffalo_l (recall 96.4%, false positives 2.3% there)
    min_face_px=20,  # PROVISIONAL: SCRFD finds smaller faces, but their 112 px crops embed poorly
    found_min_px=48,  # PROVISIONAL
    min_score=0.5,  # = SCRFD's default det_thresh
    found_min_score=0.7,  # PROVISIONAL (Immich's minimum detection score)
)


def _onnx_providers() -> list[str]:
    """CUDA when this onnxruntime build has it (onnxruntime-gpu), with CPU as the fallback; else CPU only."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _onnx_role(path: Path) -> str:
    """What an ONNX file in a pack is for, from its signature, the way insightface's model_zoo routes models:

    >= 5 outputs -> "detection" (SCRFD: scores, boxes[, keypoints] per stride); one square image input of 112 px or
    more (a multiple of 16, not 192 = 2d106 landmarks, not 96 = gender/age), one output -> "recognition" (ArcFace);
    anything else (3-D landmarks, attributes, swapper) -> "other". Reading the graph is much cheaper than opening an
    inference session for each of buffalo_l's five models.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a usable model"
        raise FaceBackendError(f"cannot read ONNX model {path}: {exc}") from exc
    graph = model.graph
    initialisers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]  # old exports list weights as inputs too
    if len(graph.output) >= 5:
        return "detection"
    if len(inputs) == 1 and len(graph.output) == 1:
        dims = [d.dim_value if d.dim_value > 0 else None for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) == 4 and dims[2] is not None and dims[2] == dims[3]:
            side = dims[2]
            if side >= 112 and side % 16 == 0 and side != 192:
                return "recognition"
    return "other"


@dataclass(frozen=True)
class InsightFaceConfig:
    pack_dir: Path | None  # the pack folder (None when both model files are given)
    detection_model: Path | None = None  # overrides the pack's detection ONNX
    recognition_model: Path | None = None  # overrides the pack's recognition ONNX
    det_size: tuple[int, int] = (640, 640)  # (width, height) SCRFD input; photos are letterboxed into it
    det_thresh: float = 0.5  # SCRFD score gate
    # A second, coarse pass with the photo shrunk to this many pixels (long side) finds faces that fill the frame,
    # which SCRFD misses at det_size (insightface's FaceAnalysis also runs a 128 px pass by default); None = off.
    coarse_side: int | None = 128
    providers: tuple[str, ...] | None = None  # onnxruntime providers; None = CUDA when available, else CPU


class InsightFaceBackend(FaceBackend):
    """An InsightFace pack: SCRFD detection (5 keypoints), ArcFace alignment (norm_crop, 112 px), ArcFace embedding.

    pack_dir: a folder with a detection ONNX and a recognition ONNX (buffalo_l, buffalo_s, antelopev2, a user's own
    folder), or an insightface "manifest v2" package. Each file's role is read from its signature and confirmed by
    insightface's `model_zoo.get_model` (its `taskname`); other models in the pack (landmarks, gender/age) are not
    opened. detection_model / recognition_model name the files directly (e.g. SCRFD from one place, an ArcFace
    model from another); given both, pack_dir may be None.

    Scores are SCRFD's own (sigmoid outputs, 0..1). Threads: onnxruntime sessions allow concurrent `run` calls and
    insightface's SCRFD guards its own per-resolution sessions, so no lock is needed after loading.
    """

    name = "insightface"
    embedding_dim = 512

    def __init__(
        self,
        pack_dir: Path | str | None = None,
        *,
        det_size: tuple[int, int] = (640, 640),
        det_thresh: float = 0.5,
        coarse_side: int | None = 128,
        providers: Sequence[str] | None = None,
        detection_model: Path | str | None = None,
        recognition_model: Path | str | None = None,
        key: str | None = None,
        thresholds: FaceThresholds | None = None,
    ) -> None:
        self.config = InsightFaceConfig(
            pack_dir=Path(pack_dir).expanduser() if pack_dir is not None else None,
            detection_model=Path(detection_model).expanduser() if detection_model is not None else None,
            recognition_model=Path(recognition_model).expanduser() if recognition_model is not None else None,
            det_size=(int(det_size[0]), int(det_size[1])),
            det_thresh=float(det_thresh),
            coarse_side=int(coarse_side) if coarse_side else None,
            providers=tuple(providers) if providers is not None else None,
        )
        cfg = self.config
        if cfg.pack_dir is None and (cfg.detection_model is None or cfg.recognition_model is None):
            raise FaceBackendError("InsightFaceBackend needs a pack folder, or both a detection and a recognition file")
        if cfg.pack_dir is not None and not cfg.pack_dir.is_dir():
            raise FaceBackendError(f"InsightFace pack folder {cfg.pack_dir} does not exist")
        for path in (cfg.detection_model, cfg.recognition_model):
            if path is not None and not path.is_file():
                raise FaceBackendError(f"InsightFace model file {path} does not exist")
        # The embedding space is the recognition model's: the pack's name, or the recognition file's name.
        if key is None:
            if cfg.recognition_model is not None:
                key = f"insightface:{cfg.recognition_model.stem}"
            else:
                key = f"insightface:{cfg.pack_dir.name}"
        self.key = key
        self.thresholds = thresholds or INSIGHTFACE_THRESHOLDS
        self._load_lock = threading.Lock()
        self._detector = None  # insightface.model_zoo.SCRFD
        self._recogniser = None  # insightface.model_zoo.ArcFaceONNX
        self._files: dict[str, Path] = {}

    # -- loading -----------------------------------------------------------------------------------------------------

    def _pack_files(self) -> dict[str, Path]:
        """{"detection": path, "recognition": path} for this backend, or a FaceBackendError saying what is missing."""
        cfg = self.config
        files: dict[str, Path] = {}
        if cfg.detection_model is not None:
            files["detection"] = cfg.detection_model
        if cfg.recognition_model is not None:
            files["recognition"] = cfg.recognition_model
        if len(files) == 2:
            return files
        assert cfg.pack_dir is not None
        found: dict[str, list[Path]] = {"detection": [], "recognition": [], "other": []}
        onnx_files = sorted(cfg.pack_dir.glob("*.onnx"))
        for path in onnx_files:
            role = _onnx_role(path)
            if role in files:  # this role was given explicitly
                role = "other"
            found[role].append(path)
        for role in ("detection", "recognition"):
            if role in files:
                continue
            candidates = found[role]
            if len(candidates) > 1:
                names = ", ".join(p.name for p in candidates)
                raise FaceBackendError(
                    f"InsightFace pack {cfg.pack_dir} has several {role} models ({names}); keep one, or name the "
                    f"file to use"
                )
            if not candidates:
                present = ", ".join(p.name for p in onnx_files) or "no .onnx files"
                need = (
                    "a detection model (SCRFD with 5 keypoints, e.g. det_10g.onnx)"
                    if role == "detection"
                    else "a recognition model (ArcFace: input N x 3 x 112 x 112, output N x 512, e.g. w600k_r50.onnx)"
                )
                raise FaceBackendError(
                    f"InsightFace pack {cfg.pack_dir} is incomplete: it has no {role} model ({present}). "
                    f"A pack needs {need}. Download the pack again, or use the 'dlib' face backend, which needs no "
                    f"downloads."
                )
            files[role] = candidates[0]
        return files

    def load(self) -> None:
        if self._recogniser is not None:
            return
        with self._load_lock:
            if self._recogniser is not None:
                return
            from insightface.model_zoo import model_zoo

            providers = list(self.config.providers) if self.config.providers is not None else _onnx_providers()
            manifest = self._manifest_package()
            if manifest is not None:
                detector, recogniser, files = self._load_manifest(model_zoo, manifest, providers)
            else:
                files = self._pack_files()
                detector = model_zoo.get_model(str(files["detection"]), providers=providers)
                recogniser = model_zoo.get_model(str(files["recognition"]), providers=providers)
            for role, model in (("detection", detector), ("recognition", recogniser)):
                if model is None or getattr(model, "taskname", None) != role:
                    raise FaceBackendError(
                        f"insightface does not load {files[role]} as a {role} model "
                        f"(it reports {getattr(model, 'taskname', None)!r})"
                    )
            if not getattr(detector, "use_kps", True):
                raise FaceBackendError(
                    f"detection model {files['detection']} gives no keypoints; ArcFace alignment needs an SCRFD "
                    f"model with 5 keypoints (the *_kps / *_bnkps variants)"
                )
            # ctx_id 0 keeps the providers chosen above (a negative id would force CPU).
            detector.prepare(0, input_size=self.config.det_size, det_thresh=self.config.det_thresh)
            recogniser.prepare(0)
            width = recogniser.output_shape[-1] if recogniser.output_shape else None
            if isinstance(width, int) and width > 0:
                self.embedding_dim = width  # 512 for every known pack
            self._detector = detector
            self._files = files
            self._recogniser = recogniser  # set last: marks "loaded"

    def _manifest_package(self):
        """insightface's "manifest v2" package description of pack_dir, or None for a plain folder of ONNX files."""
        cfg = self.config
        if cfg.pack_dir is None or cfg.detection_model is not None or cfg.recognition_model is not None:
            return None
        try:
            from insightface.model_zoo.package_manifest import has_model_package_manifest, load_model_package
        except ImportError:  # insightface < 2: no manifests
            return None
        if not has_model_package_manifest(cfg.pack_dir):
            return None
        try:
            return load_model_package(cfg.pack_dir)
        except (OSError, TypeError, ValueError) as exc:
            raise FaceBackendError(f"InsightFace pack {cfg.pack_dir} has an invalid manifest.json: {exc}") from exc

    def _load_manifest(self, model_zoo, package, providers):
        missing = [task for task in ("detection", "recognition") if task not in package.tasks]
        if missing:
            raise FaceBackendError(
                f"InsightFace pack {self.config.pack_dir} is incomplete: its manifest.json lists no "
                f"{' and no '.join(missing)} model. Use the 'dlib' face backend, which needs no downloads."
            )
        models, files = {}, {}
        for task in ("detection", "recognition"):
            descriptor = package.task(task)
            files[task] = Path(descriptor.path)
            models[task] = model_zoo.get_model(
                str(self.config.pack_dir), model_task=task, model_descriptor=descriptor, providers=providers
            )
        return models["detection"], models["recognition"], files

    # -- inference ---------------------------------------------------------------------------------------------------

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        image = check_image(image)  # (H, W, 3) uint8 RGB
        self.load()
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # insightface works on OpenCV's BGR
        # boxes: (n, 5) x1, y1, x2, y2, score in the input's pixels; kps: (n, 5, 2). SCRFD letterboxes the photo
        # into det_size itself.
        boxes, kps = self._detector.detect(bgr, max_num=0)
        if self.config.coarse_side:
            coarse_boxes, coarse_kps = self._detect_coarse(bgr, self.config.coarse_side)
            boxes, kps = _merge_detections(
                np.concatenate([boxes, coarse_boxes]),
                np.concatenate([kps, coarse_kps]),
                iou_threshold=float(getattr(self._detector, "nms_thresh", 0.4)),
            )
        faces = []
        for i in range(boxes.shape[0]):
            x1, y1, x2, y2, score = (float(v) for v in boxes[i])
            faces.append(DetectedFace(bbox=(x1, y1, x2 - x1, y2 - y1), landmarks=kps[i], score=score))
        faces.sort(key=lambda f: -f.score)
        return faces

    def _detect_coarse(self, bgr: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
        """SCRFD on the photo shrunk to `side` px (long side), pasted into the top-left of a black det_size canvas.

        The canvas keeps the detector's input size, so this works for fixed-size exports (like the SCRFD of the
        tests) and dynamic ones alike. Returns (n, 5) boxes and (n, 5, 2) keypoints in the photo's pixels.
        """
        import cv2

        height, width = bgr.shape[:2]
        canvas_w, canvas_h = self._canvas_size()
        scale = min(side / max(height, width), canvas_w / width, canvas_h / height)
        small = cv2.resize(
            bgr, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
        )
        canvas = np.zeros((canvas_h, canvas_w, 3), dtype=np.uint8)  # (H, W, 3) BGR
        canvas[: small.shape[0], : small.shape[1]] = small
        boxes, kps = self._detector.detect(canvas, max_num=0)  # canvas == input size: SCRFD does not rescale it
        boxes = boxes.astype(np.float32).copy()
        boxes[:, :4] /= scale
        kps = np.asarray(kps, dtype=np.float32).reshape(-1, 5, 2) / scale
        return boxes.reshape(-1, 5), kps

    def _canvas_size(self) -> tuple[int, int]:
        """(width, height) the detector runs at: its fixed input size, or det_size for dynamic models."""
        fixed = getattr(self._detector, "static_input_size", None)  # insightface >= 2
        if fixed is None:
            shape = getattr(self._detector, "input_shape", None) or []  # (1, 3, H, W), str/None where dynamic
            if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
                fixed = (shape[3], shape[2])
        return tuple(int(v) for v in (fixed or self.config.det_size))  # type: ignore[return-value]

    def embed(self, image: np.ndarray, faces: Sequence[DetectedFace]) -> np.ndarray:
        image = check_image(image)
        if not faces:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        self.load()
        from insightface.utils import face_align

        bgr = np.ascontiguousarray(image[:, :, ::-1])
        side = int(self._recogniser.input_size[0])  # 112 for every ArcFace pack
        # ArcFace alignment: a similarity transform of the 5 landmarks onto ArcFace's template -> (side, side, 3) BGR
        crops = [face_align.norm_crop(bgr, landmark=f.landmarks, image_size=side) for f in faces]
        batch_dim = self._recogniser.input_shape[0]
        if isinstance(batch_dim, int) and batch_dim == 1:  # a model exported with a fixed batch of one
            rows = [self._recogniser.get_feat(crop) for crop in crops]
            embeddings = np.concatenate(rows, axis=0)
        else:
            embeddings = self._recogniser.get_feat(crops)  # (n, 512); get_feat swaps BGR->RGB and normalises
        embeddings = np.asarray(embeddings, dtype=np.float32).reshape(len(faces), -1)  # (n, embedding_dim)
        return l2_normalise(embeddings)

    def describe(self) -> dict[str, Any]:
        self.load()
        session = self._recogniser.session
        provider = session.get_providers()[0] if session.get_providers() else "CPUExecutionProvider"
        device = {"CUDAExecutionProvider": "cuda", "CPUExecutionProvider": "cpu"}.get(provider, provider)
        pack = self.config.pack_dir
        return {
            "name": f"InsightFace ({pack.name if pack is not None else self.key.split(':', 1)[1]})",
            "backend": self.name,
            "key": self.key,
            "embedding_dim": self.embedding_dim,
            "pack_dir": str(pack) if pack is not None else None,
            "model_files": {role: str(path) for role, path in self._files.items()},
            "licence": INSIGHTFACE_LICENCE,
            "device": device,
            "providers": list(session.get_providers()),
            "config": {
                "det_size": list(self.config.det_size),
                "det_thresh": self.config.det_thresh,
                "coarse_side": self.config.coarse_side,
            },
            "thresholds": thresholds_dict(self.thresholds),
        }


def _merge_detections(boxes: np.ndarray, kps: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Non-maximum suppression over detections of several passes: (n, 5) boxes x1, y1, x2, y2, score and (n, 5, 2)
    keypoints -> the kept ones, best score first (a face found by both passes keeps its better detection)."""
    order = np.argsort(-boxes[:, 4], kind="stable")
    boxes, kps = boxes[order], kps[order]
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep: list[int] = []
    for i in range(boxes.shape[0]):
        if keep:
            k = np.array(keep)
            w = np.clip(np.minimum(boxes[k, 2], boxes[i, 2]) - np.maximum(boxes[k, 0], boxes[i, 0]), 0, None)
            h = np.clip(np.minimum(boxes[k, 3], boxes[i, 3]) - np.maximum(boxes[k, 1], boxes[i, 1]), 0, None)
            iou = w * h / np.maximum(areas[k] + areas[i] - w * h, 1e-9)
            if np.any(iou > iou_threshold):
                continue
        keep.append(i)
    return boxes[keep], kps[keep]
