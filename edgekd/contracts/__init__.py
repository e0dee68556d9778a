"""The artifact contracts every stage reads: run-dir files, the export manifest, bench rows, the
preprocessing spec and the JSON value checks they share.

The bottom layer of edgekd: torch-free and import-light, so that the device side (bench, serve, report) and the
training side read one definition of each file. Nothing here imports another edgekd layer.
"""
