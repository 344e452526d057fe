"""The ``flashgate`` command-line tool (admin tooling)."""
