"""Fleet material: the ceremony, the signed descriptor, sealed bundles, offline recovery.

Pure logic except :mod:`flashgate.fleet.files`, which reads and writes the fleet directory.
"""
