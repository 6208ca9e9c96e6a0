"""Encoded image files (JPEG, PNG, GIF, BMP) as serving inputs: the `serving_bytes` signatures.

A client that has image files need not decode them: it sends each file's bytes as one element
of a `[n]` string tensor (over REST, `{"b64": "<base64>"}` per file), and the graph decodes each
image at its own size, converts it to the client's channels and applies the export's
`ImagePreprocessing`, which resizes it to the model's input size.

* In the graph: `decode_images` (checks, decoding and preprocessing, with errors that name the
  input and the index of a bad file).
* On the client: `image_format`, `read_image_files`, `as_bytes_array`.
"""

import numpy as np
import tensorflow as tf

from keras_meta.export import validation

# Leading bytes of each format decode_image reads everywhere TF Serving runs (newer TensorFlow
# also reads WebP and JPEG XL; older model servers do not, so those are refused up front).
IMAGE_FORMATS = (("JPEG", b"\xff\xd8\xff"), ("PNG", b"\x89PNG\r\n\x1a\n"), ("GIF", b"GIF8"),
                 ("BMP", b"BM"))
FORMATS_TEXT = "JPEG, PNG, GIF or BMP"


def image_format(data):
    """The format name (`"JPEG"`, `"PNG"`, `"GIF"`, `"BMP"`) of encoded image bytes, or `None`.

    Only the leading bytes are read: a truncated file still has its format's signature.

    Example:

    >>> image_format(open("cat.jpg", "rb").read())
    'JPEG'
    """
    data = bytes(data[:8])
    return next((name for name, magic in IMAGE_FORMATS if data.startswith(magic)), None)


def as_bytes_array(values, name="images"):
    """A numpy object array of `bytes` (what a `tf.string` input takes), checked element-wise.

    Kept as Python `bytes` objects: `np.asarray` would make a fixed-width `S` array, which drops
    each element's trailing zero bytes (a BMP's row padding, for one) and corrupts the file.

    Args:
        values: a list (possibly nested) or array of `bytes`, e.g. `read_image_files(paths)`.
        name: the signature input, for error messages.

    Returns:
        An object array of the same shape whose elements are `bytes`.

    Example:

    >>> as_bytes_array([open("a.png", "rb").read(), open("b.jpg", "rb").read()]).shape
    (2,)
    """
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "OS":
            raise TypeError(f"{name}: expected the bytes of encoded {FORMATS_TEXT} files; "
                            f"received an array of dtype {values.dtype}.")
        shape, items = values.shape, list(values.flat)
    else:
        shape, items = _nested_shape(values), list(_leaves(values))
        if len(items) != int(np.prod(shape)):
            raise ValueError(f"{name}: expected a list of encoded files (or a rectangular "
                             f"nested list); received a ragged nested list.")
    for item in items:
        if isinstance(item, str):
            raise TypeError(
                f"{name}: expected the bytes of encoded {FORMATS_TEXT} files; received a str "
                f"({item[:60]!r}). To send files by path, read them with "
                "keras_meta.export.client.read_image_files(paths).")
        if not isinstance(item, (bytes, bytearray, memoryview)):
            raise TypeError(f"{name}: expected the bytes of encoded {FORMATS_TEXT} files; "
                            f"received an element of type {type(item).__name__}.")
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = bytes(item)
    return array.reshape(shape)


def _nested_shape(values):
    shape = []
    while isinstance(values, (list, tuple)):
        shape.append(len(values))
        if not values:
            break
        values = values[0]
    return tuple(shape)


def _leaves(values):
    if isinstance(values, (list, tuple)):
        for value in values:
            yield from _leaves(value)
    else:
        yield values


def read_image_files(paths, name="images"):
    """The bytes of image files, checked to be JPEG, PNG, GIF or BMP, for `serving_bytes`.

    The check reads each file's leading bytes, so a wrong file (a path to a .npz, a text file)
    is refused before anything is sent; a truncated image is found by the server's decoder.

    Args:
        paths: image file paths.
        name: the signature input they fill (`support_images`, `query_images`, `images`), for
            error messages.

    Returns:
        A `[len(paths)]` numpy object array of `bytes`.

    Example:

    >>> inputs = {"images": read_image_files(["a.jpg", "b.png"])}
    >>> predict_local("serving/omniglot_adapted/1", inputs=inputs,
    ...               signature_name="serving_bytes")["classes"]
    """
    if isinstance(paths, (str, bytes)):
        raise TypeError(f"{name}: expected a list of image file paths; received a single "
                        f"{type(paths).__name__} ({paths!r}).")
    files = np.empty(len(paths), dtype=object)
    for i, path in enumerate(paths):
        with open(path, "rb") as f:
            data = f.read()
        if image_format(data) is None:
            raise ValueError(
                f"{name}[{i}]: expected a {FORMATS_TEXT} file; {path} is not one (it starts "
                f"with {data[:8]!r}).")
        files[i] = data
    return files


def _bad_indices(ok):
    return tf.where(tf.logical_not(ok))[:, 0]


def decode_images(chain, encoded, name, channels, prep, min_size=1):
    """In the graph: `[n]` encoded image files -> `[n, h, w, c]` float32 model inputs.

    Checks, in order, each naming `name`: a rank-1 string tensor; at least `min_size` files;
    every file starts like a JPEG, PNG, GIF or BMP (the message lists the indices that do not);
    every file decodes (the message lists the indices that do not: truncated or corrupt data).
    Each image is decoded at its own size as RGB, reduced to greyscale when the client's images
    have `channels == 1` (as `serving_default` would receive them), and preprocessed by `prep`
    on its own, so the files may differ in size and format.

    Args:
        chain: the signature's `validation.Chain`.
        encoded: the `tf.string` input.
        name: the input's name, for error messages.
        channels: the client's image channels (1 or 3).
        prep: the export's `ImagePreprocessing`.
        min_size: the fewest files a request may carry.

    Returns:
        The preprocessed images, once every check has passed.

    Example:

    >>> chain = validation.Chain()
    >>> query = decode_images(chain, query_images, "query_images", 3, prep)
    """
    shape = validation.runtime_shape(encoded)
    chain.check(lambda: tf.equal(tf.size(shape), 1),
                f"{name}: expected a string tensor of rank 1, shape [n] (one encoded "
                f"{FORMATS_TEXT} file per image); received rank", tf.size(shape),
                "with shape", shape)
    chain.check(lambda: validation.padded(shape, 1)[0] >= min_size,
                f"{name}: expected at least {min_size} image file(s); received shape", shape)
    files = tf.reshape(chain.guard(encoded), [-1])
    known = tf.reduce_any(tf.stack([tf.equal(tf.strings.substr(files, 0, len(magic)), magic)
                                    for _, magic in IMAGE_FORMATS]), axis=0)
    chain.check(lambda: tf.reduce_all(known),
                f"{name}: expected encoded {FORMATS_TEXT} files; the file(s) at these indices "
                "are none of these formats (by their first bytes):", lambda: _bad_indices(known))
    files = chain.guard(files)
    model_shape = tuple(prep.image_size) + (prep.channels,)

    def decode(index, data):
        # RGB for every format (GIF and BMP decode to 3 channels only), then the client's
        # channels: the pixels serving_default would be sent for the same file.
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        if channels == 1:
            image = tf.image.rgb_to_grayscale(image)
        return index, tf.reshape(prep(image), model_shape)

    count = tf.size(files)
    # A decoding error cannot be caught in a graph, except by tf.data, which can drop the
    # elements that fail: the indices that went missing name the bad files.
    decoded = tf.data.Dataset.from_tensor_slices((tf.range(count), files)).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    # One batch of all survivors; the empty batch stands in when none survived.
    empty = tf.data.Dataset.from_tensors((tf.zeros([0], tf.int32),
                                          tf.zeros((0,) + model_shape, tf.float32)))
    indices, images = decoded.batch(tf.cast(tf.maximum(count, 1), tf.int64)).concatenate(
        empty).take(1).get_single_element()
    ok = tf.scatter_nd(indices[:, None], tf.ones_like(indices), tf.reshape(count, [1])) > 0
    chain.check(lambda: tf.reduce_all(ok),
                f"{name}: expected complete {FORMATS_TEXT} files; the file(s) at these indices "
                "could not be decoded (truncated or corrupt data):", lambda: _bad_indices(ok))
    return chain.guard(images)
