"""Sub-commands of the ``zsq`` CLI: each module has ``add_parser(subparsers)`` and ``run(args)``."""
COMMANDS = ("info", "eval", "demo")
