"""Sub-commands of the ``zsq`` CLI: each module has ``add_parser(subparsers)`` and ``run(args)``;
``zsq_engine.cli._MODULES`` lists them."""
