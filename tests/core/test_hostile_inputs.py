"""Hostile inputs to predict and serve: image bombs refused from the header, non-finite
numbers refused with 422 (server) or file:line (CLI), unknown request keys refused."""

from __future__ import annotations

import base64
import importlib
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ValidationError

from e2ekit.core.verbs import ModulePredictor

from ..conftest import ROOT


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: a few KB of zlib that
    expands to width*height*3 bytes as RGB. Written row by row, so building it is cheap."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    rows = (b"\0" * (1 + (width + 7) // 8)) * 1000  # filter byte + packed bits, 1000 rows
    z = zlib.compressobj(9)
    body = b"".join(z.compress(rows) for _ in range(height // 1000))
    body += z.compress(rows[: (height % 1000) * (len(rows) // 1000)]) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = png_bomb(16000, 16000)
    assert len(data) < 64_000  # 256 MP (768 MB as RGB) in a few tens of KB
    return data


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any pixel decoding (torchvision or Pillow) fails the test."""
    from PIL import ImageFile

    import e2ekit.core.imageio as imageio

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(imageio, "decode_image", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_image_bomb_is_refused_from_its_header(bomb: bytes, tmp_path: Path, no_decoding) -> None:
    from e2ekit.core.imageio import ImageTooLarge, check_image_files, decode_image_field, read_image
    from e2ekit.core.serve import BadRequest

    value = base64.b64encode(bomb).decode()
    with pytest.raises(BadRequest) as info:  # no_decoding: refused from the header alone
        decode_image_field(value)
    assert info.value.status_code == 413
    assert "16000x16000" in info.value.message and "serve.max_image_pixels" in info.value.message

    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(ImageTooLarge, match=r"16000x16000 .* \(test\.max_image_pixels\)"):
        read_image(path, 10_000_000, "test.max_image_pixels")
    with pytest.raises(ImageTooLarge, match=r"bomb\.png is 16000x16000 .*predict\.max_image"):
        check_image_files([path], 64_000_000, "predict.max_image_pixels")


def test_server_image_limit_is_the_serve_setting() -> None:
    """``serve.max_image_pixels`` reaches the kits' image decoding in every request."""
    from fastapi.testclient import TestClient

    from e2ekit.core.imageio import decode_image_field, encode_png
    from e2ekit.core.serve import Endpoint, ServeSettings, create_app

    class ImageRequest(BaseModel):
        image: str

    endpoint = Endpoint(
        "/predict",
        ImageRequest,
        lambda req: [decode_image_field(req.image)],
        lambda items: [list(x.shape) for x in items],
        lambda req, results: {"shape": results[0]},
    )
    image = base64.b64encode(encode_png(np.zeros((6, 5, 3), np.uint8))).decode()
    for limit, status in ((29, 413), (30, 200)):
        app = create_app([endpoint], ServeSettings(max_image_pixels=limit))
        with TestClient(app) as client:
            r = client.post("/predict", json={"image": image})
        assert r.status_code == status, r.text
        if status == 413:
            assert "serve.max_image_pixels" in r.json()["detail"]


# -- non-finite numbers: the toy kit ------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from e2ekit.core.cli import main

    run = tmp_path_factory.mktemp("toy") / "run"
    tiny = str(ROOT / "configs" / "toy" / "tiny.yaml")
    overrides = ["-o", "train.max_steps=2", "-o", "train.tensorboard=false"]
    assert main(["toy", "train", "-c", tiny, "--out", str(run), *overrides]) == 0
    return run


@pytest.fixture(scope="module")
def toy_predictor(toy_run: Path) -> ModulePredictor:
    from e2ekit.core.config import load_config
    from e2ekit.core.engine.checkpoint import load_checkpoint, model_state
    from e2ekit.toy.task import ToyConfig, ToyTask

    task = ToyTask(load_config(toy_run / "config.yaml", ToyConfig, []))
    model = task.build_model()
    model.load_state_dict(model_state(load_checkpoint(toy_run / "last.pt")))
    return ModulePredictor(task.export_spec(model.eval()), torch.device("cpu"))


def test_toy_server_refuses_non_finite_rows(toy_predictor: ModulePredictor) -> None:
    from fastapi.testclient import TestClient

    from e2ekit.core.serve import create_app
    from e2ekit.toy.kit import KIT

    width = int(toy_predictor.deploy["num_features"])
    row = [0.5] * width

    def body(value: str) -> str:  # JSON text as a client may send it (NaN, 1e400)
        return '{"inputs": [[' + ", ".join(["0.5", value] + ["0.5"] * (width - 2)) + "]]}"

    with TestClient(create_app(KIT.endpoints(toy_predictor))) as client:
        assert client.post("/predict", json={"inputs": [row]}).status_code == 200
        for value in ("NaN", "Infinity", "1e400", "-1e39"):
            r = client.post("/predict", content=body(value))
            assert r.status_code == 422, (value, r.text)
            assert "inputs.0.1" in r.json()["detail"], r.text
        # finite but so large the float32 model overflows to NaN scores: 422, not 500
        r = client.post("/predict", json={"inputs": [row, [3e38] * width]})
        assert r.status_code == 422 and "inputs.1:" in r.json()["detail"], r.text
        r = client.post("/predict", json={"inputs": [row], "format": "gif"})
        assert r.status_code == 422 and "format" in r.json()["detail"], r.text
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("value", "message"),
    [("nan", r"bad\.csv:2: column 2 is 'nan'"), ("1e39", r"bad\.csv:2: column 2 is '1e39'"),
     ("3e38", r"bad\.csv: data row 2 drives the model to non-finite scores")],
)  # fmt: skip
def test_toy_predict_refuses_non_finite_rows(
    cli, toy_run: Path, toy_predictor: ModulePredictor, tmp_path: Path, value: str, message: str
) -> None:
    width = int(toy_predictor.deploy["num_features"])
    good = ",".join(["0.5"] * width)
    bad = ",".join([value] * width if value == "3e38" else ["0.5", value] + ["0.5"] * (width - 2))
    path = tmp_path / "bad.csv"
    path.write_text(f"{good}\n{bad}\n{good}\n")
    out = tmp_path / "pred"
    code, _, err = cli("toy", "predict", "--weights", toy_run, "--input", path, "--out", out)
    assert code == 1 and re.search(message, err), err
    assert not (out / "predictions.jsonl").exists()


# -- request schemas are strict --------------------------------------------------------------
@pytest.mark.parametrize(
    ("kit", "body"),
    [
        ("seg", {"image": "aGk=", "format": "rle"}),
        ("det", {"image": "aGk="}),
        ("ctr", {"rows": ["1"]}),
        ("toy", {"inputs": [[1.0]]}),
        ("text", {"texts": ["hi"]}),
        ("text", {"questions": [{"question": "q", "context": "c"}]}),
    ],
)
def test_request_schemas_refuse_unknown_keys(kit: str, body: dict) -> None:
    request = importlib.import_module(f"e2ekit.{kit}.kit").PredictRequest
    request.model_validate(body)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        request.model_validate({**body, "fromat": "gif"})
    if "questions" in body:
        item = {**body["questions"][0], "answer": "a"}
        with pytest.raises(ValidationError, match=r"questions\.0\.answer"):
            request.model_validate({"questions": [item]})


CORRUPT_PNG_SCRIPT = """
import io, sys
import numpy as np
from PIL import Image
from e2ekit.core.errors import DataError
from e2ekit.core.imageio import decode_image_bytes
buf = io.BytesIO()
Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), np.uint8)).save(buf, "PNG")
raw = bytearray(buf.getvalue())
raw[raw.index(b"IDAT") + 9] ^= 0xFF  # a broken deflate block, the chunk CRC left alone
try:
    decode_image_bytes(bytes(raw))
except DataError as exc:
    print("refused:", exc)
"""


def test_a_corrupt_png_stream_is_an_error_not_a_crash() -> None:
    """libpng inside torchvision ends the process on this file (SIGSEGV): a server would die
    on one upload. It runs in a child so a regression fails this test, not the test run."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", CORRUPT_PNG_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-500:]
    assert "refused: cannot decode image" in proc.stdout


def test_sixteen_bit_png_keeps_the_high_byte() -> None:
    import io

    from PIL import Image

    from e2ekit.core.imageio import decode_image_bytes

    deep = np.array([[0, 256], [65535, 0x1234]], np.uint16)
    buf = io.BytesIO()
    Image.fromarray(deep).save(buf, "PNG")
    got = decode_image_bytes(buf.getvalue())
    assert got.dtype == torch.uint8 and got.shape == (3, 2, 2)
    assert got[0].tolist() == [[0, 1], [255, 0x12]] and (got[0] == got[2]).all()


def test_label_bomb_and_bad_list_files_are_errors(tmp_path: Path) -> None:
    from e2ekit.core.errors import DataError
    from e2ekit.core.imageio import ImageTooLarge, list_inputs, read_label

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)  # 3.6 G pixels declared
    (tmp_path / "label.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageTooLarge, match=r"label\.png"):
        read_label(tmp_path / "label.png")
    listing = tmp_path / "list.txt"
    listing.write_bytes("caf\xe9.png\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"list\.txt.*line 1|list\.txt:1"):
        list_inputs(listing)
    listing.write_text("x" * 300 + ".png\n")
    with pytest.raises(DataError, match=r"list\.txt:1: image not found"):
        list_inputs(listing)


def test_image_list_entries_resolve_beside_the_list_then_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`predict --input out/val.txt` whose lines say `out/images/a.png` (paths from the
    working directory, as a script writes them) finds the images; so do lines relative to
    the list's own folder; a missing one names both places."""
    from PIL import Image

    from e2ekit.core.errors import DataError
    from e2ekit.core.imageio import list_inputs

    images = tmp_path / "out" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(images / "a.png")
    monkeypatch.chdir(tmp_path)
    listing = Path("out") / "val.txt"
    listing.write_text("out/images/a.png\nimages/a.png\n")
    found = list_inputs(listing)
    assert [p.resolve() for p in found] == [(images / "a.png").resolve()] * 2
    listing.write_text("images/b.png\n")
    with pytest.raises(DataError, match=r"val\.txt:1: image not found: out/images/b\.png or"):
        list_inputs(listing)
