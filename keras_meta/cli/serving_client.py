r"""`keras-meta-client`: sends one request to TF Serving (REST or gRPC), or answers it locally.

The request formats (REST columnar, gRPC `PredictRequest`) are described in
`keras_meta.export.client`.

Examples:

    keras-meta-client --server=localhost:8501 --protocol=rest \
        --model_name=omniglot_few_shot --npz=request.npz
    keras-meta-client --server=localhost:8500 --protocol=grpc \
        --model_name=omniglot_few_shot --npz=request.npz
    keras-meta-client --saved_model_dir=serving/omniglot_few_shot/1 \
        --npz=request.npz                                       # no server needed
    keras-meta-client --server=localhost:8501 --model_name=omniglot_few_shot \
        --support_files=a.png,b.jpg --support_labels=0,1 --query_files=q1.jpg,q2.png
    keras-meta-client --server=localhost:8501 --model_name=omniglot_adapted \
        --image_files=q1.jpg,q2.png

The .npz holds one array per signature input (support_images, support_labels, query_images;
images for an adapted model). Image files (JPEG, PNG, GIF, BMP; any size) go to the
`serving_bytes` signature instead, which decodes and preprocesses them in the graph; over REST
each file travels as `{"b64": "<base64>"}`.
"""

import json

from absl import app, flags

from keras_meta.export.client import PROTOCOLS, file_inputs, load_npz, request

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines the client's flags; all optional."""
    if "saved_model_dir" in flag_values:
        return
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("server", "localhost:8501", "host:port of TF Serving (REST: 8501, "
                        "gRPC: 8500).", **fv)
    flags.DEFINE_string("protocol", "rest", f"One of {PROTOCOLS}.", **fv)
    flags.DEFINE_string("model_name", "omniglot_few_shot", "Served model name.", **fv)
    flags.DEFINE_integer("version", None, "Model version (default: the server's latest).", **fv)
    flags.DEFINE_string("signature", None, "Signature name (default: serving_bytes with image "
                        "files, else serving_default).", **fv)
    flags.DEFINE_string("npz", None, "Request arrays (.npz, one array per signature input).",
                        **fv)
    flags.DEFINE_list("support_files", None, "Few-shot request from image files: the support "
                      "images (JPEG, PNG, GIF or BMP paths, comma-separated).", **fv)
    flags.DEFINE_list("support_labels", None, "Class index of each --support_files image "
                      "(comma-separated).", **fv)
    flags.DEFINE_list("query_files", None, "Few-shot request from image files: the query "
                      "images (paths, comma-separated).", **fv)
    flags.DEFINE_list("image_files", None, "Adapted-model request from image files (paths, "
                      "comma-separated).", **fv)
    flags.DEFINE_string("saved_model_dir", None, "Answer locally from this SavedModel version "
                        "directory instead of a server.", **fv)
    flags.DEFINE_float("timeout", 30.0, "Request timeout in seconds.", **fv)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    files = {name: FLAGS[name].value for name in ("support_files", "support_labels",
                                                  "query_files", "image_files")
             if FLAGS[name].value is not None}
    if bool(FLAGS.npz) == bool(files):
        raise app.UsageError(
            "Give the request either as --npz (a .npz with one array per signature input) or as "
            "image files (--support_files, --support_labels and --query_files for a few-shot "
            f"model, --image_files for an adapted one); got --npz={FLAGS.npz!r} and "
            f"{sorted('--' + name for name in files)}.")
    if FLAGS.protocol not in PROTOCOLS:
        raise app.UsageError(f"--protocol={FLAGS.protocol!r}: expected one of {PROTOCOLS}.")
    if files:
        labels = files.get("support_labels")
        try:
            labels = None if labels is None else [int(label) for label in labels]
        except ValueError:
            raise app.UsageError(f"--support_labels={','.join(labels)}: expected "
                                 "comma-separated integer class indices.") from None
        try:
            inputs = file_inputs(support_files=files.get("support_files"),
                                 support_labels=labels, query_files=files.get("query_files"),
                                 image_files=files.get("image_files"))
        except (OSError, ValueError) as error:
            raise app.UsageError(str(error)) from None
    else:
        inputs = load_npz(FLAGS.npz)
    signature = FLAGS.signature or ("serving_bytes" if files else "serving_default")
    outputs = request(inputs, server=FLAGS.server, protocol=FLAGS.protocol,
                      model_name=FLAGS.model_name, signature=signature,
                      version=FLAGS.version, saved_model_dir=FLAGS.saved_model_dir,
                      timeout=FLAGS.timeout)
    print(json.dumps({name: value.tolist() for name, value in outputs.items()}))


def console_main():
    """The console script `keras-meta-client`."""
    from keras_meta.cli import run as cli_run

    define_flags()
    cli_run(main, __name__)


if __name__ == "__main__":
    console_main()
