"""The command line: run configs in files, one vocabulary across commands."""
