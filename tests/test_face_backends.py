"""Face backends with real models on real photos (engine/models/faces/backends.py, dlib_backend.py, insightface_backend.py).

dlib: its CC0 models from `face-recognition-models` on the face_recognition test photos (Obama x3, Biden) and on
InsightFace's group photo t1.jpg. InsightFace: the real SCRFD-2.5G detector (from the `scrfd` source distribution) on
t1.jpg, with a TINY RANDOM recogniser exported here: InsightFace's recognition packs cannot be downloaded on the
development machines, so that model has ArcFace's signature (input "input.1" N x 3 x 112 x 112 -> N x 512) and
nothing else: ITS EMBEDDINGS ARE MEANINGLESS; it only exercises the loading, alignment and embedding code path.

Missing test data is a failure, never a skip: `python scripts/fetch_test_data.py` fetches it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.models.faces import (
    DetectedFace,
    DlibBackend,
    FaceBackendError,
    InsightFaceBackend,
    cosine_distance,
    create_backend,
    find_insightface_packs,
)

ROOT = Path(__file__).resolve().parent.parent
PORTRAITS = ("obama", "obama2", "obama3", "biden")
T1_FACES = 6  # InsightFace's t1.jpg: a group photo of six people


# -- data ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def face_data(test_data: Path) -> Path:
    """The face test data (fetched if missing; conftest only checks the KPhotoAlbum album)."""
    needed = [
        test_data / "face_recognition" / "obama.jpg",
        test_data / "scrfd" / "scrfd.onnx",
        test_data / "insightface" / "t1.jpg",
    ]
    if not all(p.is_file() for p in needed):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_test_data.py")], check=True)
    missing = [str(p) for p in needed if not p.is_file()]
    assert not missing, f"face test data missing after running scripts/fetch_test_data.py: {missing}"
    return test_data


def load_rgb(path: Path) -> np.ndarray:
    assert path.is_file(), f"test photo missing: {path} (run scripts/fetch_test_data.py)"
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))  # (H, W, 3) uint8


@pytest.fixture(scope="module")
def portraits(face_data: Path) -> dict[str, np.ndarray]:
    return {name: load_rgb(face_data / "face_recognition" / f"{name}.jpg") for name in PORTRAITS}


@pytest.fixture(scope="module")
def t1(face_data: Path) -> np.ndarray:
    return load_rgb(face_data / "insightface" / "t1.jpg")


@pytest.fixture(scope="module")
def dlib_backend() -> DlibBackend:
    backend = DlibBackend()  # HOG, upsample 1
    backend.load()
    return backend


def assert_landmarks_near_boxes(faces: list[DetectedFace], margin: float = 0.1) -> None:
    for face in faces:
        x, y, w, h = face.bbox
        assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
        lx, ly = face.landmarks[:, 0], face.landmarks[:, 1]
        assert np.all(lx >= x - margin * w) and np.all(lx <= x + w + margin * w), (face.bbox, face.landmarks)
        assert np.all(ly >= y - margin * h) and np.all(ly <= y + h + margin * h), (face.bbox, face.landmarks)
        # InsightFace's order: left (image) before right; in the face's own frame (heads tilt) the nose is below
        # the eyes and the mouth below the nose
        left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks.astype(np.float64)
        across = (right_eye - left_eye) / np.linalg.norm(right_eye - left_eye)
        down = np.array([-across[1], across[0]])
        assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
        assert (mouth_right - mouth_left) @ across > 0
        eyes, mouth = (left_eye + right_eye) / 2, (mouth_left + mouth_right) / 2
        assert eyes @ down < nose @ down < mouth @ down, face.landmarks


# -- dlib ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def portrait_faces(dlib_backend: DlibBackend, portraits) -> dict[str, tuple[list[DetectedFace], np.ndarray]]:
    return {name: dlib_backend.detect_and_embed(img) for name, img in portraits.items()}


def test_dlib_finds_the_one_face_of_each_portrait(portrait_faces) -> None:
    for name, (faces, embeddings) in portrait_faces.items():
        assert len(faces) == 1, f"{name}: {[f.bbox for f in faces]}"
        face = faces[0]
        assert face.min_side > 200  # the portraits' faces are ~270-320 px
        assert 0.5 < face.score <= 1.0  # above dlib's own threshold (0.5 after the mapping)
        assert embeddings.shape == (1, 128) and embeddings.dtype == np.float32
    assert_landmarks_near_boxes([portrait_faces[n][0][0] for n in PORTRAITS])


def test_dlib_embeddings_tell_obama_from_biden(dlib_backend: DlibBackend, portrait_faces) -> None:
    emb = {name: portrait_faces[name][1][0] for name in PORTRAITS}
    for vec in emb.values():
        assert vec.shape == (128,)
        assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5
    obamas = ("obama", "obama2", "obama3")
    same = [float(cosine_distance(emb[a], emb[b])[0, 0]) for i, a in enumerate(obamas) for b in obamas[i + 1 :]]
    different = [float(cosine_distance(emb[a], emb["biden"])[0, 0]) for a in obamas]
    # measured: Obama-Obama 0.029-0.049, Obama-Biden 0.175-0.198
    assert max(same) < min(different), (same, different)
    # the calibrated thresholds (converted from dlib's Euclidean 0.6 rule) put these on the right sides
    assert max(same) < dlib_backend.thresholds.suggest_distance < min(different), (same, different)


def test_dlib_embed_is_deterministic_and_batched(dlib_backend: DlibBackend, t1: np.ndarray) -> None:
    faces = dlib_backend.detect(t1)
    all_at_once = dlib_backend.embed(t1, faces)  # (n, 128)
    one_by_one = np.concatenate([dlib_backend.embed(t1, [f]) for f in faces])
    assert all_at_once.shape == (len(faces), 128)
    np.testing.assert_allclose(all_at_once, one_by_one, atol=1e-5)
    assert dlib_backend.embed(t1, []).shape == (0, 128)


def test_dlib_hog_on_the_group_photo(dlib_backend: DlibBackend, t1: np.ndarray) -> None:
    faces = dlib_backend.detect(t1)
    # measured: HOG with upsample 1 finds all 6 faces (raw scores 0.37-2.77 -> 0.67-1.00)
    assert 5 <= len(faces) <= T1_FACES, [(f.bbox, f.score) for f in faces]
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    assert_landmarks_near_boxes(faces)


def test_dlib_from_two_threads_matches_one_thread(dlib_backend: DlibBackend, portraits) -> None:
    images = [portraits["obama2"], portraits["obama"]]
    expected = [dlib_backend.detect_and_embed(img) for img in images]
    results: list = [None, None]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = dlib_backend.detect_and_embed(images[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (faces, emb), (exp_faces, exp_emb) in zip(results, expected):
        assert [f.bbox for f in faces] == [f.bbox for f in exp_faces]
        np.testing.assert_allclose(emb, exp_emb, atol=1e-5)


def test_dlib_missing_model_files(tmp_path: Path) -> None:
    with pytest.raises(FaceBackendError, match="shape_predictor_5_face_landmarks.dat is missing"):
        DlibBackend(models_dir=tmp_path).load()


def test_dlib_describe_and_bad_input(dlib_backend: DlibBackend) -> None:
    info = dlib_backend.describe()
    assert info["key"] == "dlib-resnet-v1" and info["device"] == "cpu" and "CC0" in info["licence"]
    assert set(info["model_files"]) == {"shape_predictor", "recogniser"}
    assert all(Path(p).is_file() for p in info["model_files"].values())
    with pytest.raises(ValueError, match="uint8 RGB"):
        dlib_backend.detect(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        dlib_backend.detect(np.zeros((10, 10, 3), dtype=np.float32))


# -- InsightFace: real SCRFD detector + a tiny random recogniser ------------------------------------------------------


def write_tiny_arcface(path: Path) -> Path:
    """An ONNX model with ArcFace's signature, RANDOM weights: its embeddings are MEANINGLESS (code path only).

    input "input.1": (N, 3, 112, 112) float32 -> Conv 8x8/8 -> (N, 8, 14, 14) -> Flatten -> Gemm -> (N, 512).
    insightface's model_zoo routes a single-output model with a square 112 px input to ArcFaceONNX ("recognition").
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    conv_w = numpy_helper.from_array(rng.standard_normal((8, 3, 8, 8)).astype(np.float32) * 0.05, "conv_w")
    fc_w = numpy_helper.from_array(rng.standard_normal((8 * 14 * 14, 512)).astype(np.float32) * 0.02, "fc_w")
    fc_b = numpy_helper.from_array(np.zeros(512, dtype=np.float32), "fc_b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input.1", "conv_w"], ["features"], name="conv", kernel_shape=[8, 8],
                             strides=[8, 8]),
            helper.make_node("Flatten", ["features"], ["flat"], name="flatten", axis=1),
            helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["embedding"], name="fc"),
        ],
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 512])],
        initializer=[conv_w, fc_w, fc_b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="myvlm-tests")
    model.ir_version = 8  # onnxruntime >= 1.10 reads it
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_pack(face_data: Path, tmp_path_factory) -> Path:
    """A pack folder: the real SCRFD detector + the tiny random recogniser."""
    pack = tmp_path_factory.mktemp("packs") / "tinypack"
    pack.mkdir()
    shutil.copy(face_data / "scrfd" / "scrfd.onnx", pack / "det_2.5g.onnx")
    write_tiny_arcface(pack / "tiny_arcface.onnx")
    return pack


def test_model_zoo_routes_scrfd_and_the_tiny_recogniser(tiny_pack: Path) -> None:
    from insightface.model_zoo import model_zoo

    det = model_zoo.get_model(str(tiny_pack / "det_2.5g.onnx"), providers=["CPUExecutionProvider"])
    rec = model_zoo.get_model(str(tiny_pack / "tiny_arcface.onnx"), providers=["CPUExecutionProvider"])
    assert det.taskname == "detection" and det.use_kps
    assert rec.taskname == "recognition" and tuple(rec.input_size) == (112, 112)


@pytest.fixture(scope="module")
def insightface_backend(tiny_pack: Path) -> InsightFaceBackend:
    backend = create_backend(f"insightface:{tiny_pack}", tiny_pack.parent / "no-models")
    assert isinstance(backend, InsightFaceBackend)
    backend.load()
    return backend


def test_scrfd_finds_the_six_faces_of_t1(insightface_backend: InsightFaceBackend, t1: np.ndarray) -> None:
    faces = insightface_backend.detect(t1)
    assert len(faces) == T1_FACES, [(f.bbox, f.score) for f in faces]
    for face in faces:
        assert 0.0 < face.score <= 1.0
        assert 80 < face.min_side < 200  # t1's faces are ~100-150 px
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    assert_landmarks_near_boxes(faces, margin=0.0)
    # the six faces are six different places
    centres = np.array([[x + w / 2, y + h / 2] for x, y, w, h in (f.bbox for f in faces)])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(faces)) * 1e9
    assert gaps.min() > 100


def test_scrfd_coarse_pass_finds_a_face_filling_the_frame(tiny_pack: Path, face_data: Path) -> None:
    # KPhotoAlbum's jesper.jpg: a close-up whose face is ~460 of the photo's 533 px. SCRFD misses it at 640 x 640;
    # the coarse pass (the photo shrunk to 128 px, as insightface's FaceAnalysis does by default) finds it.
    img = load_rgb(face_data / "kphotoalbum" / "jesper.jpg")
    assert InsightFaceBackend(tiny_pack, coarse_side=None).detect(img) == []
    faces = InsightFaceBackend(tiny_pack).detect(img)
    assert len(faces) == 1 and faces[0].min_side > 300 and faces[0].score >= 0.5
    assert_landmarks_near_boxes(faces, margin=0.0)


def test_insightface_embeddings_code_path(insightface_backend: InsightFaceBackend, t1: np.ndarray) -> None:
    # The recogniser is the tiny RANDOM model: these embeddings are meaningless; only shapes and norms are checked.
    faces, embeddings = insightface_backend.detect_and_embed(t1)
    assert embeddings.shape == (T1_FACES, 512) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert insightface_backend.embedding_dim == 512
    one = insightface_backend.embed(t1, faces[:1])
    np.testing.assert_allclose(one[0], embeddings[0], atol=1e-5)  # batching does not change a face's embedding
    assert insightface_backend.embed(t1, []).shape == (0, 512)
    info = insightface_backend.describe()
    assert info["key"] == "insightface:tinypack" and info["device"] == "cpu" and "non-commercial" in info["licence"]
    assert Path(info["model_files"]["detection"]).name == "det_2.5g.onnx"
    assert Path(info["model_files"]["recognition"]).name == "tiny_arcface.onnx"


def test_dlib_landmarks_follow_insightface_order(
    dlib_backend: DlibBackend, insightface_backend: InsightFaceBackend, t1: np.ndarray
) -> None:
    """dlib's 5 points mapped to InsightFace's order land near SCRFD's keypoints for the same faces."""
    dlib_faces, scrfd_faces = dlib_backend.detect(t1), insightface_backend.detect(t1)
    errors = []  # per face: (5,) distances / eye distance
    for face in dlib_faces:
        x, y, w, h = face.bbox
        match = min(scrfd_faces, key=lambda f: np.hypot(f.bbox[0] + f.bbox[2] / 2 - x - w / 2,
                                                        f.bbox[1] + f.bbox[3] / 2 - y - h / 2))
        eye_distance = np.linalg.norm(match.landmarks[1] - match.landmarks[0])
        errors.append(np.linalg.norm(face.landmarks - match.landmarks, axis=1) / eye_distance)
    mean = np.mean(errors, axis=0)
    # measured on t1: eyes 0.07 / 0.06, nose 0.11, mouth corners 0.21 / 0.19 (the nose and mouth are estimates)
    assert len(errors) >= 5 and np.all(mean[:2] < 0.15) and mean[2] < 0.2 and np.all(mean[3:] < 0.3), mean


def test_insightface_separate_detection_and_recognition_files(face_data: Path, tiny_pack: Path, t1) -> None:
    backend = InsightFaceBackend(
        detection_model=face_data / "scrfd" / "scrfd.onnx", recognition_model=tiny_pack / "tiny_arcface.onnx"
    )
    assert backend.key == "insightface:tiny_arcface"
    faces, embeddings = backend.detect_and_embed(t1)
    assert len(faces) == T1_FACES and embeddings.shape == (T1_FACES, 512)


def test_insightface_manifest_pack(face_data: Path, tiny_pack: Path, tmp_path: Path, t1) -> None:
    """insightface 2's "manifest v2" packages: the manifest names each task's file."""
    pack = tmp_path / "manifest_pack"
    pack.mkdir()
    shutil.copy(tiny_pack / "det_2.5g.onnx", pack / "detector.onnx")
    shutil.copy(tiny_pack / "tiny_arcface.onnx", pack / "recogniser.onnx")
    (pack / "MODEL.LICENSE").write_text("test models\n")
    manifest = {
        "manifest_version": 2,
        "model_id": "tiny_manifest",
        "license": "MODEL.LICENSE",
        "tasks": {"detection": {"file": "detector.onnx"}, "recognition": {"file": "recogniser.onnx"}},
    }
    (pack / "manifest.json").write_text(json.dumps(manifest))
    backend = InsightFaceBackend(pack)
    faces, embeddings = backend.detect_and_embed(t1)
    assert len(faces) == T1_FACES and embeddings.shape == (T1_FACES, 512)
    assert Path(backend.describe()["model_files"]["recognition"]).name == "recogniser.onnx"


def test_pack_without_recogniser_says_what_is_missing(face_data: Path, tmp_path: Path) -> None:
    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    shutil.copy(face_data / "scrfd" / "scrfd.onnx", pack / "det_10g.onnx")
    backend = InsightFaceBackend(pack)  # loading is lazy ...
    with pytest.raises(FaceBackendError) as err:
        backend.load()  # ... so the error comes here
    message = str(err.value)
    assert str(pack) in message and "no recognition model" in message and "det_10g.onnx" in message
    assert "dlib" in message


# -- discovery and automatic choice ----------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    """An empty HOME, so ~/.insightface/models is empty."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert Path.home() == home
    return home


def test_auto_without_packs_is_dlib(home: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    assert find_insightface_packs(models) == {}
    assert isinstance(create_backend(None, models), DlibBackend)
    backend = create_backend("auto", models)
    assert isinstance(backend, DlibBackend) and backend.key == "dlib-resnet-v1"
    cnn = create_backend("dlib-cnn", models)
    assert isinstance(cnn, DlibBackend) and cnn.config.detector == "cnn" and cnn.key == backend.key
    options = {"dlib_options": {"upsample": 0}, "insightface_options": {"det_thresh": 0.6}}
    assert create_backend("auto", models, **options).config.upsample == 0  # each backend gets its own options
    with pytest.raises(FaceBackendError, match="No InsightFace pack") as err:
        create_backend("insightface", models)
    assert str(models / "insightface") in str(err.value) and ".insightface" in str(err.value)


def test_auto_prefers_an_installed_pack(home: Path, tmp_path: Path, tiny_pack: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_pack, models / "insightface" / "buffalo_s")
    shutil.copytree(tiny_pack, models / "insightface" / "buffalo_l")
    (models / "insightface" / "not_a_pack").mkdir()  # no .onnx: ignored
    # antelopev2.zip unpacks into antelopev2/antelopev2/: found one level down
    shutil.copytree(tiny_pack, home / ".insightface" / "models" / "antelopev2" / "antelopev2")
    packs = find_insightface_packs(models)
    assert list(packs) == ["buffalo_l", "antelopev2", "buffalo_s"]
    assert packs["antelopev2"] == home / ".insightface" / "models" / "antelopev2" / "antelopev2"
    auto = create_backend("auto", models)
    assert isinstance(auto, InsightFaceBackend) and auto.key == "insightface:buffalo_l"
    assert create_backend("insightface", models).key == "insightface:buffalo_l"
    options = {"dlib_options": {"upsample": 0}, "insightface_options": {"det_thresh": 0.6}}
    assert create_backend("auto", models, **options).config.det_thresh == 0.6
    assert create_backend("insightface:antelopev2", models).key == "insightface:antelopev2"
    assert isinstance(create_backend("dlib", models), DlibBackend)  # an explicit choice still wins
    assert create_backend(str(models / "insightface" / "buffalo_s"), models).key == "insightface:buffalo_s"


def test_unknown_names_fail_helpfully(home: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    with pytest.raises(ValueError) as err:
        create_backend("facenet", models)
    message = str(err.value)
    assert "'facenet'" in message and "dlib" in message and "insightface:<pack>" in message
    assert str(models / "insightface") in message
    with pytest.raises(ValueError, match="'buffalo_l' is not installed"):
        create_backend("insightface:buffalo_l", models)
    with pytest.raises(ValueError, match="'hog' or 'cnn'"):
        DlibBackend(detector="sift")
