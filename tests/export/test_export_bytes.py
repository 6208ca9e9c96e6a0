"""`serving_bytes`: encoded image files (JPEG, PNG, GIF, BMP; any size) decoded and preprocessed
in the graph; the REST body's `{"b64": ...}` form; clear errors for truncated or foreign files.

References are the decoded pixels, not the images the files were made from: JPEG is lossy, and
the signature promises the answer `serving_default` gives for the pixels of the file.
"""

import base64
import json
import struct
import types

import numpy as np
import pytest
import tensorflow as tf

import serving_stand_ins as stand_ins
from export_helpers import CLIENT, PREP, WAYS, make_task, run_client_cli
from keras_meta.export import client as serving_client
from keras_meta.export import freeze_batch_norm, predict_local
from keras_meta.export.image_bytes import as_bytes_array, image_format, read_image_files

BYTES = "serving_bytes"


def _bmp(pixels):
    """A 24-bit BMP file of `[h, w, 3]` uint8 pixels (rows bottom-up, BGR, 4-byte aligned)."""
    height, width, _ = pixels.shape
    row_size = (3 * width + 3) // 4 * 4
    rows = b"".join(pixels[y, :, ::-1].tobytes().ljust(row_size, b"\0")
                    for y in range(height - 1, -1, -1))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(rows), 2835, 2835, 0, 0)
    header = struct.pack("<2sIHHI", b"BM", 14 + len(info) + len(rows), 0, 0, 14 + len(info))
    return header + info + rows


def _gif(pixels):
    image = pytest.importorskip("PIL.Image")  # Pillow comes with matplotlib (the test extra)
    import io

    buffer = io.BytesIO()
    image.fromarray(pixels).save(buffer, format="GIF")
    return buffer.getvalue()


def _encode(pixels, fmt):
    if fmt == "JPEG":
        return tf.io.encode_jpeg(pixels, quality=90).numpy()
    if fmt == "PNG":
        return tf.io.encode_png(pixels).numpy()
    return _bmp(pixels) if fmt == "BMP" else _gif(pixels)


def _files(images, formats):
    return [_encode(image, formats[i % len(formats)]) for i, image in enumerate(images)]


def _decoded(files):
    """What the graph decodes from each file: its RGB pixels, by TensorFlow's decoders."""
    return [tf.io.decode_image(f, channels=3, expand_animations=False).numpy() for f in files]


def _resized(images, seed):
    """The same images at other sizes, one per image, so that no two files agree in size."""
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        size = (int(rng.integers(7, 30)), int(rng.integers(7, 30)))
        out.append(tf.cast(tf.image.resize(image, size, method="nearest"), tf.uint8).numpy())
    return out


def _prepared(pixels):
    """The model inputs the library makes of decoded images, one image at a time."""
    return tf.stack([PREP(p) for p in pixels])


def _adapted_reference(maml, prepared):
    """The adapted export's answer for preprocessed images, computed eagerly by the library."""
    support, labels, _, _ = make_task()  # the support set the adapted export was adapted on
    support_x = PREP(support)
    adapted = maml.adapt(support_x, tf.constant(labels), maml.eval_inner_steps)
    served = freeze_batch_norm(adapted, support_x, slot=maml.eval_inner_steps)
    return served(prepared, training=False).numpy()


def _bytes_request(support_files, labels, query_files):
    return {"support_images": support_files, "support_labels": labels,
            "query_images": query_files}


# -- The answers ---------------------------------------------------------------------------------

def test_few_shot_bytes_match_serving_default_on_the_decoded_pixels(exports):
    _, path = exports("few_shot", "transductive")
    support, labels, query, _ = make_task(seed=21)
    support_files = _files(support, ["JPEG", "PNG"])
    query_files = _files(query, ["PNG", "JPEG"])
    out = predict_local(path, inputs=_bytes_request(support_files, labels, query_files),
                        signature_name=BYTES)
    support_pixels, query_pixels = np.stack(_decoded(support_files)), np.stack(
        _decoded(query_files))
    # JPEG changed the pixels (PNG did not): the reference is what the files hold.
    assert np.abs(support_pixels[0].astype(int) - support[0]).max() > 0
    np.testing.assert_array_equal(support_pixels[1], support[1])
    expected = predict_local(path, support_pixels, labels, query_pixels)
    np.testing.assert_allclose(out["logits"], expected["logits"], atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(out["classes"], expected["classes"])
    np.testing.assert_allclose(out["probabilities"], expected["probabilities"], atol=1e-5)


def test_adapted_bytes_match_serving_default_on_the_decoded_pixels(exports):
    _, path = exports("adapted", "transductive")
    _, _, query, _ = make_task(seed=22, queries=6)
    files = _files(query, ["JPEG", "PNG", "BMP"])
    out = predict_local(path, inputs={"images": files}, signature_name=BYTES)
    expected = predict_local(path, inputs={"images": np.stack(_decoded(files))})
    np.testing.assert_allclose(out["logits"], expected["logits"], atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(out["classes"], expected["classes"])


def test_files_of_any_size_and_format_are_preprocessed_one_by_one(exports):
    maml, path = exports("few_shot", "transductive")
    support, labels, query, _ = make_task(seed=23)
    formats = ["JPEG", "PNG", "BMP", "GIF"]
    support_files = _files(_resized(support, seed=1), formats)
    query_files = _files(_resized(query, seed=2), formats[::-1])
    assert len({f[:3] for f in support_files}) == 4  # four formats really sent
    out = predict_local(path, inputs=_bytes_request(support_files, labels, query_files),
                        signature_name=BYTES)
    expected = maml.adapt_and_predict(_prepared(_decoded(support_files)), tf.constant(labels),
                                      _prepared(_decoded(query_files))).numpy()
    np.testing.assert_allclose(out["logits"], expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(out["classes"], expected.argmax(-1))

    maml, adapted_path = exports("adapted", "transductive")
    out = predict_local(adapted_path, inputs={"images": query_files}, signature_name=BYTES)
    expected = _adapted_reference(maml, _prepared(_decoded(query_files)))
    np.testing.assert_allclose(out["logits"], expected, atol=1e-4, rtol=1e-4)


# -- Bad files -----------------------------------------------------------------------------------

def _bad_files():
    """name -> (input, index, the file at that index, message)."""
    _, _, query, _ = make_task(seed=24)
    jpeg = _encode(query[0], "JPEG")
    png = _encode(query[0], "PNG")
    undecodable = (r"{name}: expected complete JPEG, PNG, GIF or BMP files; the file\(s\) at "
                   r"these indices could not be decoded \(truncated or corrupt data\):\] \[{i}\]")
    foreign = (r"{name}: expected encoded JPEG, PNG, GIF or BMP files; the file\(s\) at these "
               r"indices are none of these formats \(by their first bytes\):\] \[{i}\]")
    return {
        "truncated JPEG": ("query_images", 2, jpeg[:len(jpeg) // 2], undecodable),
        "truncated PNG": ("support_images", 4, png[:len(png) - 20], undecodable),
        "not an image": ("query_images", 1, b"hello, world", foreign),
        "empty string": ("support_images", 0, b"", foreign),
        "npz file": ("query_images", 0, b"PK\x03\x04" + bytes(40), foreign),
    }


@pytest.mark.parametrize("case", sorted(_bad_files()))
def test_bad_files_are_named_with_their_index(exports, case):
    _, path = exports("few_shot", "transductive")
    support, labels, query, _ = make_task(seed=25)
    request = _bytes_request(_files(support, ["PNG"]), labels, _files(query, ["JPEG"]))
    name, index, data, message = _bad_files()[case]
    request[name][index] = data
    message = message.format(name=name, i=index)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        predict_local(path, inputs=request, signature_name=BYTES)
    # The same in a model server's session.
    arrays = {k: as_bytes_array(v) if k != "support_labels" else v for k, v in request.items()}
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        stand_ins.session_run(path, BYTES, arrays)


def test_bad_shapes_and_counts_of_files(exports):
    _, path = exports("adapted", "transductive")
    files = as_bytes_array(_files(make_task(seed=26)[2], ["PNG"]))
    # A server feeds any shape; the graph checks it (TF Serving does not).
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"images: expected a string tensor of rank 1, shape \[n\] \(one "
                             r"encoded JPEG, PNG, GIF or BMP file per image\); received rank\] "
                             r"\[2\] \[with shape\] \[1 5\]"):
        stand_ins.session_run(path, BYTES, {"images": files[None]})
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"images: expected at least 1 image file\(s\); received "
                             r"shape\] \[0\]"):
        predict_local(path, inputs={"images": files[:0]}, signature_name=BYTES)
    # In Python the helper names the input first.
    with pytest.raises(ValueError, match=r"images: expected shape \[n\] \(one encoded file per "
                                         r"image\); received shape \[1, 5\]\."):
        predict_local(path, inputs={"images": files[None]}, signature_name=BYTES)
    with pytest.raises(TypeError, match=r"images: expected the bytes of encoded JPEG, PNG, GIF "
                                        r"or BMP files; received a str \('q.jpg'\)\. To send "
                                        r"files by path, read them with"):
        predict_local(path, inputs={"images": ["q.jpg"]}, signature_name=BYTES)
    with pytest.raises(TypeError, match=r"images: expected dtype uint8; received object"):
        predict_local(path, inputs={"images": files})


# -- Client side: files, the REST body, gRPC -----------------------------------------------------

def test_rest_body_carries_files_as_b64_objects():
    rng = np.random.default_rng(0)
    png = _encode(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), "PNG")
    # Width 5: 15 bytes per row, padded with a zero byte, so the file ends in b"\0", which a
    # fixed-width numpy string array would drop.
    bmp = _encode(rng.integers(0, 256, (3, 5, 3), dtype=np.uint8), "BMP")
    jpeg = _encode(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8), "JPEG")
    assert bmp.endswith(b"\0")
    b64 = {f: base64.b64encode(f).decode("ascii") for f in (png, bmp, jpeg)}
    inputs = {"support_images": [png, bmp], "support_labels": np.array([1, 0], np.int64),
              "query_images": as_bytes_array([jpeg])}
    body = serving_client.rest_request_body(inputs, BYTES)
    assert body == {"signature_name": "serving_bytes",
                    "inputs": {"support_images": [{"b64": b64[png]}, {"b64": b64[bmp]}],
                               "support_labels": [1, 0],
                               "query_images": [{"b64": b64[jpeg]}]}}
    decoded = json.loads(json.dumps(body))
    assert [base64.b64decode(v["b64"]) for v in decoded["inputs"]["support_images"]] == \
        [png, bmp]
    # Rows (an adapted model): one {"images": {"b64": ...}} object per file.
    rows = serving_client.rest_request_body({"images": [bmp, jpeg]}, BYTES, request_format="row")
    assert rows == {"signature_name": "serving_bytes",
                    "instances": [{"images": {"b64": b64[bmp]}}, {"images": {"b64": b64[jpeg]}}]}
    # gRPC: a DT_STRING tensor holding the files byte for byte.
    proto = serving_client.predict_request("m", {"images": [bmp, jpeg]}, BYTES).inputs["images"]
    assert proto.dtype == tf.string.as_datatype_enum
    assert [d.size for d in proto.tensor_shape.dim] == [2]
    assert list(proto.string_val) == [bmp, jpeg]


def test_files_are_read_and_checked_before_sending(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for fmt in ("JPEG", "PNG", "GIF", "BMP"):
        path = tmp_path / f"image.{fmt.lower()}"
        path.write_bytes(_encode(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8), fmt))
        paths.append(str(path))
    files = read_image_files(paths, "query_images")
    assert files.dtype == object and files.shape == (4,)
    assert [image_format(f) for f in files] == ["JPEG", "PNG", "GIF", "BMP"]
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"query_images\[1\]: expected a JPEG, PNG, GIF or BMP "
                                         rf"file; {text} is not one \(it starts with "
                                         r"b'not an i'\)"):
        read_image_files([paths[0], str(text)], "query_images")
    with pytest.raises(TypeError, match="expected a list of image file paths"):
        read_image_files(paths[0])
    inputs = serving_client.file_inputs(support_files=paths[:2], support_labels=[1, 0],
                                        query_files=paths[2:])
    assert sorted(inputs) == ["query_images", "support_images", "support_labels"]
    assert inputs["support_labels"].dtype == np.int32
    assert list(serving_client.file_inputs(image_files=paths)) == ["images"]
    with pytest.raises(ValueError, match="one integer class index per support file"):
        serving_client.file_inputs(support_files=paths[:2], support_labels=[0],
                                   query_files=paths[2:])
    with pytest.raises(ValueError, match="needs support_files, support_labels and query_files"):
        serving_client.file_inputs(support_files=paths[:2])
    with pytest.raises(ValueError, match="not both"):
        serving_client.file_inputs(image_files=paths, query_files=paths)


@pytest.fixture(scope="module")
def served_files(exports, tmp_path_factory):
    """Stand-in servers holding the few-shot and adapted exports, and a task as image files
    of several sizes and formats, with the library's own answers to their decoded pixels."""
    few_shot_maml, few_shot = exports("few_shot", "transductive")
    adapted_maml, adapted = exports("adapted", "transductive")
    folder = tmp_path_factory.mktemp("image_files")
    support, labels, query, _ = make_task(seed=27)

    def write(images, prefix, formats):
        paths = []
        for i, data in enumerate(_files(images, formats)):
            path = folder / f"{prefix}{i}.{image_format(data).lower()}"
            path.write_bytes(data)
            paths.append(str(path))
        return paths

    support_paths = write(_resized(support, seed=3), "support", ["JPEG", "PNG"])
    query_paths = write(_resized(query, seed=4), "query", ["PNG", "JPEG"])
    support_x = _prepared(_decoded(read_image_files(support_paths)))
    query_x = _prepared(_decoded(read_image_files(query_paths)))
    return types.SimpleNamespace(
        models={"omniglot": {1: few_shot}, "adapted": {1: adapted}}, labels=labels,
        support_paths=support_paths, query_paths=query_paths,
        few_shot_logits=few_shot_maml.adapt_and_predict(support_x, tf.constant(labels),
                                                        query_x).numpy(),
        adapted_logits=_adapted_reference(adapted_maml, query_x))


def test_rest_and_grpc_round_trips_with_image_files(served_files):
    s = served_files
    few_shot = serving_client.file_inputs(support_files=s.support_paths, support_labels=s.labels,
                                          query_files=s.query_paths)
    adapted = serving_client.file_inputs(image_files=s.query_paths)
    with stand_ins.RestServer(s.models) as server:
        out = serving_client.request(few_shot, server=server.address, model_name="omniglot",
                                     signature=BYTES)
        np.testing.assert_allclose(out["logits"], s.few_shot_logits, atol=1e-4, rtol=1e-4)
        np.testing.assert_array_equal(out["classes"], s.few_shot_logits.argmax(-1))
        for request_format in ("row", "columnar"):
            out = serving_client.rest_predict(server.address, "adapted", adapted,
                                              signature_name=BYTES,
                                              request_format=request_format)
            np.testing.assert_allclose(out["logits"], s.adapted_logits, atol=1e-4, rtol=1e-4)
    pytest.importorskip("grpc")
    with stand_ins.GrpcServer(s.models) as server:
        out = serving_client.request(few_shot, server=server.address, protocol="grpc",
                                     model_name="omniglot", signature=BYTES)
        np.testing.assert_allclose(out["logits"], s.few_shot_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["truncated JPEG", "not an image", "bad base64"])
def test_rest_errors_for_bad_files_name_the_input_and_index(served_files, case):
    s = served_files
    inputs = serving_client.file_inputs(support_files=s.support_paths, support_labels=s.labels,
                                        query_files=s.query_paths)
    query = list(inputs["query_images"])
    jpeg = next(f for f in query if image_format(f) == "JPEG")
    index = query.index(jpeg)
    with stand_ins.RestServer(s.models) as server:
        if case == "bad base64":  # a hand-made body: TF Serving's own message
            body = serving_client.rest_request_body(inputs, BYTES)
            body["inputs"]["query_images"][index] = {"b64": "not base64!"}
            status, reply = _post(server.address, "/v1/models/omniglot:predict", body)
            assert (status, reply) == (400, {"error": "Unable to base64 decode"})
            return
        # The client sends bytes as given (read_image_files would refuse a foreign file).
        query[index] = jpeg[:len(jpeg) // 2] if case == "truncated JPEG" else b"plain text"
        inputs["query_images"] = query
        with pytest.raises(serving_client.ServingError) as error:
            serving_client.rest_predict(server.address, "omniglot", inputs, signature_name=BYTES)
    assert error.value.status == 400
    text = str(error.value)
    what = "could not be decoded" if case == "truncated JPEG" else "are none of these formats"
    assert "assertion failed: [query_images: expected " in text, text
    assert "JPEG, PNG, GIF or BMP files" in text and what in text
    assert f"] [{index}]" in text, text


def _post(address, path, body):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://{address}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_command_line_sends_image_files(served_files, tmp_path, capsys):
    from absl import app

    s = served_files

    def run(*argv):
        return run_client_cli(argv, capsys)

    few_shot_dir = s.models["omniglot"][1]
    printed = run(f"--saved_model_dir={few_shot_dir}",
                  f"--support_files={','.join(s.support_paths)}",
                  f"--support_labels={','.join(map(str, s.labels))}",
                  f"--query_files={','.join(s.query_paths)}")
    np.testing.assert_allclose(printed["logits"], s.few_shot_logits, atol=1e-4, rtol=1e-4)
    with stand_ins.RestServer(s.models) as server:
        printed = run(f"--server={server.address}", "--model_name=adapted",
                      f"--image_files={','.join(s.query_paths)}")
    np.testing.assert_allclose(printed["logits"], s.adapted_logits, atol=1e-4, rtol=1e-4)
    text = tmp_path / "labels.txt"
    text.write_text("0,1,2")
    with pytest.raises(app.UsageError, match=r"images\[1\]: expected a JPEG, PNG, GIF or BMP "
                                             r"file; .*labels.txt is not one"):
        run(f"--saved_model_dir={few_shot_dir}",
            f"--image_files={s.query_paths[0]},{text}")
    with pytest.raises(app.UsageError, match="either as --npz .* or as image files"):
        run(f"--saved_model_dir={few_shot_dir}", "--npz=request.npz",
            f"--image_files={s.query_paths[0]}")
    with pytest.raises(app.UsageError, match="--support_labels=a,b: expected comma-separated"):
        run(f"--saved_model_dir={few_shot_dir}", f"--support_files={s.support_paths[0]}",
            "--support_labels=a,b", f"--query_files={s.query_paths[0]}")


def test_warmup_covers_serving_bytes(exports):
    from keras_meta.export.warmup import WARMUP_FILE, read_warmup

    _, path = exports("few_shot", "transductive")
    requests = [log.predict_log.request for log in read_warmup(f"{path}/{WARMUP_FILE}")]
    (request,) = [r for r in requests if r.model_spec.signature_name == BYTES]
    files = tf.make_ndarray(request.inputs["query_images"])
    assert len(files) == WAYS and all(image_format(f) == "PNG" for f in files)
    assert tf.io.decode_png(files[0]).shape == CLIENT
