"""The local cluster: nats-server processes on loopback for tests and ``flashgate dev up``.

* :mod:`flashgate.devcluster.nats_server`: find a nats-server >= 2.10 and run it (one
  server or a loopback cluster); every process it starts is killed at interpreter exit.

Nothing on a service's import path (``flashgate backend``, ``flashgate bridge``) imports
this package (tests/test_architecture.py checks): a service connects to a NATS it is
given and never starts one.
"""
