"""One module per ``hdp`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
