"""Fleet material: the ceremony, the signed descriptor, sealed bundles, offline recovery.

Pure logic except :mod:`flashgate.fleet.files`, which reads and writes the fleet directory,
and :mod:`flashgate.fleet.prime_search`, which runs a dealing's two safe-prime searches in
two processes.
"""
