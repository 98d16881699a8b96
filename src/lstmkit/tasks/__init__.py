"""Applications of the LSTM. Each module here that defines ``register(subparsers)`` is a subcommand
of the ``lstmkit`` command (``lstmkit <module> ...``)."""
