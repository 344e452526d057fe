"""Shared test support: helpers and fixtures that more than one test package uses.

* :mod:`~tests.support.material` - INSECURE 1024-bit test keys, fast KDF parameters, the
  test passphrase, the canary, frozen vectors;
* :mod:`~tests.support.nats_servers` - pytest plugin: real nats-server processes (tier ``nats``);
* :mod:`~tests.support.databases` - SQLite URLs and fresh PostgreSQL databases;
* :mod:`~tests.support.fleets` - a fleet directory dealt from the fixed test primes;
* :mod:`~tests.support.admin_client` - commands signed as the fleet admin, and a client that
  publishes them and waits for their outcome events;
* :mod:`~tests.support.bridge_cluster` - Bridge Nodes as real processes around an in-process
  backend;
* :mod:`~tests.support.bridge_units` - in-memory peers and stores for the bridge unit tests;
* :mod:`~tests.support.cli` - ``flashgate`` run in-process (click's CliRunner) or as a real
  subprocess, and CLI fleets;
* :mod:`~tests.support.tiers` - pytest plugin: the test tiers (markers) and the check that a
  test starting a process says so.

Fixtures stay in the ``conftest.py`` of the package that uses them; what several packages
share lives here and is imported by name.
"""
