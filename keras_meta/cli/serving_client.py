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

The .npz holds one array per signature input (support_images, support_labels, query_images;
images for an adapted model).
"""

import json

from absl import app, flags

from keras_meta.export.client import PROTOCOLS, load_npz, request

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
    flags.DEFINE_string("signature", "serving_default", "Signature name.", **fv)
    flags.DEFINE_string("npz", None, "Request arrays (.npz, one array per signature input).",
                        **fv)
    flags.DEFINE_string("saved_model_dir", None, "Answer locally from this SavedModel version "
                        "directory instead of a server.", **fv)
    flags.DEFINE_float("timeout", 30.0, "Request timeout in seconds.", **fv)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.npz:
        raise app.UsageError("--npz is required: a .npz with one array per signature input.")
    if FLAGS.protocol not in PROTOCOLS:
        raise app.UsageError(f"--protocol={FLAGS.protocol!r}: expected one of {PROTOCOLS}.")
    outputs = request(load_npz(FLAGS.npz), server=FLAGS.server, protocol=FLAGS.protocol,
                      model_name=FLAGS.model_name, signature=FLAGS.signature,
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
