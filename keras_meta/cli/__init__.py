"""The command-line programs (absl mains), installed as console scripts:

    keras-meta-train            keras_meta.cli.train_maml
    keras-meta-train-optimizer  keras_meta.cli.train_learned_optimizer
    keras-meta-export           keras_meta.cli.export
    keras-meta-client           keras_meta.cli.serving_client
    keras-meta-demo             keras_meta.cli.demo
    keras-meta-launch-local     keras_meta.cli.launch_local

Each module's flags live in its `define_flags()`, all optional; `main()` parses them into a
config and calls the importable function that does the work.
"""

import sys

# absl's help flags (also with one dash); absl exits 1 after printing the help.
_HELP_ARGS = frozenset(f"{dash}{name}" for dash in ("-", "--")
                       for name in ("help", "helpshort", "helpfull", "helpxml", "?"))


def run(main, module):
    """`absl.app.run(main)` for a console script whose flags `module` (a module name) defines.

    absl's `--help` lists the flags of the module `sys.argv[0]` names and prints `__main__`'s
    docstring; an installed console script (or a `python -m trainers...` wrapper) is neither
    the module that defines the flags nor, for the script, documented. So the module's flags
    are made key flags of the main one, its docstring stands in for a missing one, and
    `--help` exits 0 like other commands' (absl: 1).
    """
    from absl import app, flags

    for flag in flags.FLAGS.get_flags_for_module(module):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    main_module = sys.modules["__main__"]
    if not getattr(main_module, "__doc__", None):
        main_module.__doc__ = sys.modules[module].__doc__
    help_asked = bool(_HELP_ARGS.intersection(sys.argv[1:sys.argv.index("--")]
                                             if "--" in sys.argv else sys.argv[1:]))
    try:
        app.run(main)
    except SystemExit as e:
        if help_asked and e.code == 1:
            raise SystemExit(0) from None
        raise
