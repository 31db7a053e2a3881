"""The inference port: where a batch of decoded frames is scored, chosen by URL.

- ``local://`` — detector threads in this process (``?detectors=2&threads=1``)
- ``process://`` — detector worker processes, each with its own copy of the models (``?detectors=2``)

Every adapter runs :func:`services.steps.detect.detect_batch` where the model lives and hands back
the same :class:`~services.steps.detect.Detected`, so the records do not depend on where a frame
was scored. See :mod:`services.inference.ports` for the contract.
"""
