"""The command-line programs (absl mains), installed as console scripts:

    keras-meta-train            keras_meta.cli.train_maml
    keras-meta-train-optimizer  keras_meta.cli.train_learned_optimizer
    keras-meta-export           keras_meta.cli.export
    keras-meta-client           keras_meta.cli.serving_client
    keras-meta-demo             keras_meta.cli.demo

Each module's flags live in its `define_flags()`, all optional; `main()` parses them into a
config and calls the importable function that does the work.
"""
